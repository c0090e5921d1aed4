package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIntegrationConfigExportApply: export, then apply on a fresh daemon, gives the
// same rules, with traffic; diff reports edits with exit 3 (0 when there is
// nothing to do); a file with a conflicting port and a bad address changes
// nothing and names both lines; --prune removes what the file does not
// name; apply twice changes nothing; the documented example works as the
// usage guide's mail-server script does.
func TestIntegrationConfigExportApply(t *testing.T) {
	l := newLabWith(t, "vmbr0")
	serve(t, l.server, "mail", serverIP+":25", serverIP+":587", serverIP+":2525")
	l.startDaemon()

	// The documented example, applied as it is.
	example, err := filepath.Abs("../docs/natmap.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l.mustCLI("apply", "-f", example)
	if got := expectReach(t, l.client, "tcp", extIP+":25", "mail"); got != clientIP {
		t.Errorf("through the example's dnat the server saw %s, want %s", got, clientIP)
	}
	if got := expectReach(t, l.server, "tcp", extIP+":587", "mail"); got != "10.0.0.1" {
		t.Errorf("through the example's hairpin the server saw %s, want the router's 10.0.0.1", got)
	}
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8025:2525")

	file := filepath.Join(l.dir, "natmap.yaml")
	l.mustCLI("export", "--output", file)
	before := l.mustCLI("ls")

	// A fresh daemon, nothing installed: apply the export.
	l.stopDaemon()
	os.Remove(l.state)
	l.dropNAT()
	l.startDaemon()
	expectNoReach(t, l.client, "tcp", extIP+":8025")
	if _, _, code := l.cli("diff", "-f", file); code != 3 {
		t.Fatalf("diff against an empty daemon: exit %d, want 3", code)
	}
	out := l.mustCLI("apply", "-f", file)
	if !strings.Contains(out, "added") {
		t.Errorf("apply said:\n%s", out)
	}
	if after := l.mustCLI("ls"); after != before {
		t.Errorf("ls after export and apply:\n%s\nwant\n%s", after, before)
	}
	expectReach(t, l.client, "tcp", extIP+":8025", "mail")
	expectReach(t, l.client, "tcp", extIP+":25", "mail")

	// Twice is a no-op; diff says so with exit 0.
	if out, _, code := l.cli("apply", "-f", file); code != 0 || !strings.Contains(out, "nothing to change") {
		t.Errorf("a second apply: exit %d\n%s", code, out)
	}
	if out, _, code := l.cli("diff", "-f", file); code != 0 || !strings.Contains(out, "nothing to change") {
		t.Errorf("diff after apply: exit %d\n%s", code, out)
	}

	// Edits: one port more, the snat gone. diff lists exactly those.
	data, _ := os.ReadFile(file)
	edited := strings.Replace(string(data), `4190,8025:2525`, `4190,8025:2525,9000`, 1)
	if edited == string(data) {
		t.Fatalf("the export does not hold the dnat's ports as expected:\n%s", data)
	}
	snatStart := strings.Index(edited, "snat:\n")
	snatEnd := strings.Index(edited[snatStart:], "\n# ") + snatStart
	edited = edited[:snatStart] + "snat: []" + edited[snatEnd:]
	if err := os.WriteFile(file, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, code := l.cli("diff", "-f", file, "--prune")
	out = "\n" + out
	if code != 3 || strings.Count(out, "\n+ ") != 1 || strings.Count(out, "\n- ") != 2 ||
		!strings.Contains(out, "9000") || !strings.Contains(out, "- snat from 10.0.0.101") {
		t.Errorf("diff --prune after two edits: exit %d\n%s\nwant the dnat replaced (one + one -) and the snat removed", code, out)
	}

	// One conflicting port and one bad address: nothing changes, both
	// problems are listed with their lines.
	kernel := l.kernelRules()
	bad := filepath.Join(l.dir, "bad.yaml")
	os.WriteFile(bad, []byte(`version: 1
dnat:
  - ext_ip: 203.0.113.43
    int_ip: 10.0.0.102
    ports: "8025"
  - ext_ip: 203.0.113.999
    int_ip: 10.0.0.101
    ports: "9001"
`), 0o644)
	_, errOut, code := l.cli("apply", "-f", bad)
	if code == 0 || !strings.Contains(errOut, "bad.yaml:3: dnat[0]") || !strings.Contains(errOut, "already forwarded") ||
		!strings.Contains(errOut, "bad.yaml:6: dnat[1]") || !strings.Contains(errOut, "203.0.113.999") {
		t.Errorf("a file with a conflict and a bad address: exit %d\n%s", code, errOut)
	}
	if got := l.kernelRules(); got != kernel {
		t.Errorf("a refused apply changed the kernel")
	}

	// --prune: the rules the file does not name go.
	l.mustCLI("snat", "--int-ip", "10.0.0.103", "--ext-ip", extIP, "--ext-if", "vmbr0")
	out = l.mustCLI("apply", "-f", file, "--prune")
	if !strings.Contains(out, "- snat from 10.0.0.103") || strings.Contains(l.mustCLI("ls"), "10.0.0.103") {
		t.Errorf("apply --prune left the snat the file does not name:\n%s", out)
	}
	expectReach(t, l.client, "tcp", extIP+":8025", "mail")
}

// TestIntegrationDaemonConfig: daemon --config applies a file at start, after the
// state; a file that does not apply stops the daemon with its lines.
func TestIntegrationDaemonConfig(t *testing.T) {
	l := newLabWith(t, "vmbr0")
	serve(t, l.server, "mail", serverIP+":993")
	example, _ := filepath.Abs("../docs/natmap.example.yaml")
	l.startDaemon("--config", example)
	expectReach(t, l.client, "tcp", extIP+":993", "mail")
	l.stopDaemon()

	bad := filepath.Join(l.dir, "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nsnat:\n  - int_ip: 10.0.0.101\n    ext_ip: nowhere\n    ext_if: vmbr0\n"), 0o644)
	err := l.tryStartDaemon("--config", bad)
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:3: snat[0]") {
		t.Fatalf("a daemon with a bad --config: %v, want it refused naming bad.yaml:3", err)
	}
}
