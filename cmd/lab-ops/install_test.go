package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// throwawayRoot is a directory with copies of the host's account files,
// systemd's units and the tools the unit runs, for install --root and
// systemd-analyze --root.
func throwawayRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, dir := range []string{"etc", "bin", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"/etc/group", "/etc/gshadow", "/etc/passwd", "/etc/shadow", "/bin/ln", "/bin/kill", "/bin/touch"} {
		if out, err := exec.Command("cp", "-p", f, filepath.Join(root, f)).CombinedOutput(); err != nil {
			t.Fatalf("copying %s: %v %s", f, err, out)
		}
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copying systemd's units: %v %s", err, out)
	}
	return root
}

func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return out.String() + errOut.String(), code
}

// listFiles maps every path under root to its mode and modification time.
func listFiles(t *testing.T, root string) map[string]string {
	t.Helper()
	files := map[string]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			files[strings.TrimPrefix(p, root)] = fi.Mode().String() + " " + fi.ModTime().Format(time.RFC3339Nano)
		}
		return nil
	})
	return files
}

func TestInstallIntoRoot(t *testing.T) {
	netnstest.RequirePrivileges(t, "groupadd", "usermod", "systemctl", "systemd-analyze")
	root := throwawayRoot(t)
	t.Setenv("SUDO_USER", "nobody")
	before := listFiles(t, root)

	out, code := runCLI(t, "natmap", "install", "--root", root, "--dry-run")
	if code != 0 || !strings.Contains(out, installedUnit()) || !strings.Contains(out, "would      write "+unitPath) {
		t.Fatalf("install --dry-run: exit %d, want the unit and the actions:\n%s", code, out)
	}
	if after := listFiles(t, root); len(after) != len(before) {
		t.Fatalf("install --dry-run wrote files: %d paths before, %d after", len(before), len(after))
	}

	if out, code = runCLI(t, "natmap", "install", "--root", root); code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	for path, mode := range map[string]os.FileMode{binPath: 0o755, unitPath: 0o644} {
		fi, err := os.Stat(filepath.Join(root, path))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v; want mode %v", path, err, fi.Mode().Perm(), mode)
		}
	}
	if link, err := os.Readlink(filepath.Join(root, "/etc/systemd/system/multi-user.target.wants", unitName)); err != nil || link != unitPath {
		t.Errorf("not enabled: %q %v", link, err)
	}
	members, ok, err := host{root: root}.groupMembers(serviceGroup)
	if !ok || err != nil || strings.Join(members, ",") != "nobody" {
		t.Errorf("group %s: exists %v, members %v, err %v; want nobody in it", serviceGroup, ok, members, err)
	}

	for path, text := range completionFiles {
		if b, err := os.ReadFile(filepath.Join(root, path)); err != nil || string(b) != text {
			t.Errorf("completion %s: %v", path, err)
		}
	}

	installed := listFiles(t, root)
	out, code = runCLI(t, "natmap", "install", "--root", root)
	if code != 0 || !strings.Contains(out, "Nothing to do") || strings.Contains(out, "  done ") {
		t.Errorf("a second install: exit %d, want nothing done:\n%s", code, out)
	}
	// --json: the steps as a report, and nothing else on stdout.
	var stdout, stderr bytes.Buffer
	code = run([]string{"--json", "natmap", "install", "--root", root}, &stdout, &stderr)
	var report stepsReport
	if err := json.Unmarshal(stdout.Bytes(), &report); err != nil || code != 0 || len(report.Steps) < 5 || len(report.Notes) == 0 {
		t.Errorf("install --json: exit %d, %v: %+v\n%s", code, err, report, stdout.String())
	}
	for _, s := range report.Steps {
		if s.Result != "unchanged" {
			t.Errorf("install --json a second time: %+v", s)
		}
	}
	for p, v := range listFiles(t, root) {
		if installed[p] != v {
			t.Errorf("a second install changed %s", p)
		}
	}

	verify := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, unitName)
	if out, err := verify.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	sec, err := exec.Command("systemd-analyze", "security", "--offline=true", "--root="+root, unitName).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for natmap.service: ([0-9.]+)`).FindSubmatch(sec)
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, sec)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security --offline=true: exposure %.1f (target <= 3.0)", score)
	if score > 3.0 {
		t.Errorf("exposure %.1f, want <= 3.0:\n%s", score, sec)
	}

	if out, code = runCLI(t, "natmap", "uninstall", "--root", root); code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	for _, p := range append(slices.Collect(maps.Keys(completionFiles)), binPath, unitPath, "/etc/systemd/system/multi-user.target.wants/"+unitName) {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall: %v", p, err)
		}
	}
	if _, ok, _ := (host{root: root}).groupMembers(serviceGroup); ok {
		t.Errorf("group %s left after uninstall", serviceGroup)
	}
	out, code = runCLI(t, "natmap", "uninstall", "--root", root)
	if code != 0 || !strings.Contains(out, "Nothing to do") {
		t.Errorf("a second uninstall: exit %d, want nothing done:\n%s", code, out)
	}
}

// TestManPages: every command has a page that names each of its flags and
// renders without complaint.
func TestManPages(t *testing.T) {
	var cli CLI
	parser, err := newParser(&cli, os.Stdout, os.Stderr, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	pages := manPages(parser.Model)
	for _, want := range []string{"lab-ops-natmap.8", "lab-ops-natmap-dnat.8", "lab-ops-natmap-docker-add.8", "lab-ops-natmap-install.8", "lab-ops-completion.8"} {
		if _, ok := pages[want]; !ok {
			t.Errorf("no page %s among %d", want, len(pages))
		}
	}
	dir := t.TempDir()
	if out, code := runCLI(t, "man", "--dir", dir); code != 0 {
		t.Fatalf("man: exit %d\n%s", code, out)
	}
	for _, n := range parser.Model.Leaves(true) {
		page, ok := pages[pageName(n)+".8"]
		if !ok {
			if !n.Hidden {
				t.Errorf("no page for %s", pageName(n))
			}
			continue
		}
		for _, f := range n.Flags {
			if !f.Hidden && !strings.Contains(page, `\-\-`+roff(f.Name)) {
				t.Errorf("%s does not describe --%s", pageName(n), f.Name)
			}
		}
		if _, err := exec.LookPath("man"); err == nil {
			cmd := exec.Command("man", "--warnings", "-l", filepath.Join(dir, pageName(n)+".8"))
			cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat")
			out, err := cmd.CombinedOutput()
			if err != nil || strings.Contains(string(out), "warning") {
				t.Errorf("man -l %s: %v\n%s", pageName(n), err, out)
			}
		}
	}
}

// TestInstalledCompletionsLoad installs into a throwaway root, mounts its
// /usr/local/share and /etc/fish over the real ones in a private mount
// namespace, and asks bash-completion, zsh and fish, each as it starts
// with no settings of its own, for lab-ops's completion: the places
// install writes to are the places the shells read.
func TestInstalledCompletionsLoad(t *testing.T) {
	netnstest.RequirePrivileges(t, "unshare", "mount", "bash", "zsh", "fish")
	const bashCompletionLib = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(bashCompletionLib); err != nil {
		netnstest.RequirePrivileges(t, bashCompletionLib) // fails under CI, skips elsewhere
	}
	root := t.TempDir()
	dir := t.TempDir() // lab-ops on PATH, for fish to run
	if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "lab-ops"), ".").CombinedOutput(); err != nil {
		t.Fatalf("building lab-ops: %v\n%s", err, out)
	}
	if err := writeStep(host{root: root}, "completions", completionFiles).do(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/usr/local/share", "/etc/fish"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	shell := func(script string) string {
		t.Helper()
		mounts := fmt.Sprintf("mount --bind %s/usr/local/share /usr/local/share && mount --bind %s/etc/fish /etc/fish && ", root, root)
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", mounts+script)
		cmd.Env = []string{"PATH=" + dir + ":/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + t.TempDir(), "NATMAP_SOCKET=" + filepath.Join(dir, "none.sock")}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", script, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := shell(`bash -c '. ` + bashCompletionLib + ` && __load_completion lab-ops && complete -p lab-ops'`); got != "complete -o default -C 'lab-ops' lab-ops" {
		t.Errorf("bash-completion loaded %q", got)
	}
	if got := shell(`zsh -f -c 'fpath=($fpath); autoload -Uz compinit && compinit -u -D && print -r -- $_comps[lab-ops]'`); got != "_lab-ops" {
		t.Errorf("zsh's compinit found %q for lab-ops, want _lab-ops", got)
	}
	// fish's own configuration (not the user's: HOME is empty) sets the
	// path it completes from.
	if got := shell(`fish -c 'complete -C"lab-ops natmap dn"'`); got != "dnat\t"+summary(findHelp(t, "dnat")) {
		t.Errorf("fish completed %q", got)
	}
}

// findHelp is the help of a natmap command.
func findHelp(t *testing.T, name string) string {
	var cli CLI
	parser, err := newParser(&cli, os.Stdout, os.Stderr, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	natmap := findChild(parser.Model.Node, "natmap")
	return findChild(natmap, name).Help
}
