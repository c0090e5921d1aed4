package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/ptytest"
)

// Destructive commands ask on a terminal and go on only on "y"; --yes
// and a standard input that is not a terminal (a script) are not asked.
// No daemon listens: a command that goes on exits 4 (unreachable), one
// that stops at the question exits 1 before it tries.
func TestDestructiveCommandsAsk(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "lab-ops")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building lab-ops: %v\n%s", err, out)
	}
	socket := filepath.Join(dir, "none.sock")
	lab := func(typed *string, args ...string) (string, int) {
		cmd := exec.Command(bin, append([]string{"natmap", "--socket", socket}, args...)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if typed == nil { // a script: standard input is not a terminal
			err := cmd.Run()
			code := 0
			if exit, ok := err.(*exec.ExitError); ok {
				code = exit.ExitCode()
			}
			return out.String(), code
		}
		code := ptytest.Typed(t, cmd, *typed)
		return out.String(), code
	}
	yes, no, enter := "y\n", "n\n", "\n"
	for _, c := range []struct {
		typed  *string
		args   []string
		code   int
		asked  bool
		reason string
		says   string
	}{
		{&no, []string{"clear"}, 1, true, "n declines", "error: not confirmed: nothing was changed"},
		{&enter, []string{"clear"}, 1, true, "no answer declines", "not confirmed"},
		{&yes, []string{"clear"}, 4, true, "y goes on", ""},
		{&no, []string{"clear", "--yes"}, 4, false, "--yes does not ask", "cannot reach"},
		{nil, []string{"clear"}, 4, false, "a script is not asked", "cannot reach"},
		{&no, []string{"--json", "clear"}, 1, true, "--json asks on stderr too", `"code": "not_confirmed"`},
	} {
		out, code := lab(c.typed, c.args...)
		if code != c.code || strings.Contains(out, "Go on? [y/N]") != c.asked || !strings.Contains(out, c.says) {
			t.Errorf("%s: %v: exit %d (want %d), asked %v (want %v):\n%s", c.reason, c.args, code, c.code, !c.asked, c.asked, out)
		}
	}

	// uninstall --purge of a root: declined, it removes nothing.
	root := t.TempDir()
	keep := filepath.Join(root, binPath)
	if err := os.MkdirAll(filepath.Dir(keep), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keep, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, code := lab(&no, "uninstall", "--purge", "--root", root); code != 1 || !strings.Contains(out, "not confirmed") {
		t.Errorf("uninstall --purge declined: exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("a declined uninstall --purge removed %s: %v", binPath, err)
	}
	if out, code := lab(&no, "uninstall", "--root", root, "--dry-run"); code != 0 || strings.Contains(out, "Go on?") {
		t.Errorf("uninstall without --purge asked or failed: exit %d:\n%s", code, out)
	}

	// install and uninstall --json: one report on stdout, nothing else.
	for _, args := range [][]string{{"install", "--root", root, "--dry-run"}, {"uninstall", "--root", root, "--dry-run"}} {
		cmd := exec.Command(bin, append([]string{"--json", "natmap"}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v --json: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		var report stepsReport
		if err := json.Unmarshal(stdout.Bytes(), &report); err != nil || !report.DryRun || len(report.Steps) == 0 {
			t.Errorf("%v --json printed %q (%v)", args, stdout.String(), err)
		}
		for _, step := range report.Steps {
			if step.Result != "would" && step.Result != "unchanged" {
				t.Errorf("%v --json, a dry run: step %+v", args, step)
			}
		}
	}
}
