package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

	installed := listFiles(t, root)
	out, code = runCLI(t, "natmap", "install", "--root", root)
	if code != 0 || !strings.Contains(out, "Nothing to do") || strings.Contains(out, "  done ") {
		t.Errorf("a second install: exit %d, want nothing done:\n%s", code, out)
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
	for _, p := range []string{binPath, unitPath, "/etc/systemd/system/multi-user.target.wants/" + unitName} {
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
