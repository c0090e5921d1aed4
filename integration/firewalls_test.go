package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// TestIntegrationFirewalld runs natmap beside Debian 12's own firewalld
// (nftables backend) under a real systemd, as the README says it works:
// with the external interface in zone public and the LAN in zone
// internal, natmap's forwards pass untouched (firewalld accepts
// connections whose conntrack status is DNAT), through firewall-cmd
// --reload and a restart of firewalld, while a host port nobody opened
// stays filtered.
func TestIntegrationFirewalld(t *testing.T) {
	if testBackend() != "nftables" {
		t.Skip("runs once, in the nftables pass")
	}
	netnstest.RequirePrivileges(t, "debootstrap", "systemd-nspawn", "nsenter")
	root := debianTree(t, "libpam-systemd", "firewalld") // polkitd (for firewalld) needs a logind
	dist := t.TempDir()
	if out, err := exec.Command("cp", binary, dist).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	l := newLabWith(t, "vmbr0")
	m := bootDebian(t, root, l.router, dist)
	serve(t, l.server, "svc", serverIP+":25")
	serve(t, l.router, "host", extIP+":8080") // a host service nobody opened

	// systemctl returns once firewalld is on the bus; its rules are in
	// when firewall-cmd --state says running.
	ready := func() {
		t.Helper()
		if !waitFor(30*time.Second, func() bool { out, _ := m.run("firewall-cmd", "--state"); return strings.TrimSpace(out) == "running" }) {
			out, _ := m.run("journalctl", "--no-pager", "-u", "firewalld")
			t.Fatalf("firewalld is not running:\n%s", out)
		}
	}
	m.must("systemctl", "start", "firewalld")
	ready()
	version := strings.TrimSpace(m.must("firewall-cmd", "--version"))
	t.Logf("firewalld %s", version)
	m.must("firewall-cmd", "--permanent", "--zone=public", "--add-interface=vmbr0")
	m.must("firewall-cmd", "--permanent", "--zone=internal", "--add-interface=int0")
	m.must("firewall-cmd", "--reload")
	filtered := func(when string) {
		t.Helper()
		if got, err := dial(l.client, "tcp", extIP+":8080"); err == nil {
			t.Errorf("%s: a host port nobody opened answered: %q", when, got)
		}
	}
	filtered("firewalld alone")

	lab := "/dist/" + filepath.Base(binary)
	m.must("systemd-run", "--unit=natmap", lab, "natmap", "daemon", "--socket-group", "root")
	if !waitFor(10*time.Second, func() bool { _, err := m.run(lab, "natmap", "status"); return err == nil }) {
		out, _ := m.run("journalctl", "--no-pager", "-u", "natmap")
		t.Fatalf("natmap did not start:\n%s", out)
	}
	m.must(lab, "natmap", "fwd")
	m.must(lab, "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	for _, step := range []struct {
		what string
		do   []string
	}{
		{"with firewalld's zones", nil},
		{"after firewall-cmd --reload", []string{"firewall-cmd", "--reload"}},
		{"after systemctl restart firewalld", []string{"systemctl", "restart", "firewalld"}},
	} {
		if step.do != nil {
			m.must(step.do...)
			ready()
		}
		if src := expectReach(t, l.client, "tcp", extIP+":25", "svc"); src != clientIP {
			t.Errorf("%s: the server saw %s, want the client's %s", step.what, src, clientIP)
		}
		filtered(step.what)
	}
}
