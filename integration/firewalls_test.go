package integration

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// firewallTools are Debian 12 packages the README's "Living with ..."
// section speaks of, in one cached tree (libpam-systemd: polkitd, which
// firewalld needs, wants a logind). netfilter-persistent has a tree of its
// own: ufw breaks it.
var firewallTools = []string{"libpam-systemd", "firewalld", "ufw"}

// firewallHost is the lab's router as a booted Debian 12 system with the
// firewall tools installed and none of them running, and the lab-ops
// binary at h.lab.
type firewallHost struct {
	*machine
	l   *lab
	lab string // the binary, inside
}

func newFirewallHost(t *testing.T, tools ...string) *firewallHost {
	t.Helper()
	if testBackend() != "nftables" {
		t.Skip("runs once, in the nftables pass")
	}
	netnstest.RequirePrivileges(t, "debootstrap", "systemd-nspawn", "nsenter")
	root := debianTree(t, tools...)
	units := map[string]string{"firewalld": "firewalld.service", "ufw": "ufw.service", "iptables-persistent": "netfilter-persistent.service"}
	// A fresh host: no firewall starts at boot; each test starts its own.
	for _, tool := range tools {
		unit, ok := units[tool]
		if !ok {
			continue
		}
		if out, err := exec.Command("systemctl", "--root", root, "disable", unit).CombinedOutput(); err != nil {
			t.Fatalf("disabling %s: %v %s", unit, err, out)
		}
	}
	dist := t.TempDir()
	if out, err := exec.Command("cp", binary, dist).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	l := newLabWith(t, "vmbr0")
	h := &firewallHost{l: l, lab: "/dist/" + filepath.Base(binary)}
	h.machine = bootDebian(t, root, l.router, dist)
	serve(t, l.server, "svc", serverIP+":25")
	return h
}

// natmap starts the daemon as a transient unit (it does not come back at
// a reboot: what comes back is what the host loads itself) and waits for
// its socket.
func (h *firewallHost) natmap(args ...string) {
	h.t.Helper()
	h.must(append([]string{"systemd-run", "--unit=natmap", h.lab, "natmap", "daemon", "--socket-group", "root"}, args...)...)
	if !waitFor(10*time.Second, func() bool { _, err := h.run(h.lab, "natmap", "status"); return err == nil }) {
		out, _ := h.run("journalctl", "--no-pager", "-u", "natmap")
		h.t.Fatalf("natmap did not start:\n%s", out)
	}
}

// forwarded reports whether the client reaches the server through the
// forward of port 25, from its own address.
func (h *firewallHost) forwarded() bool {
	got, err := dial(h.l.client, "tcp", extIP+":25")
	return err == nil && strings.HasPrefix(got, "svc "+clientIP+":")
}

// TestIntegrationFirewalld runs natmap beside Debian 12's own firewalld
// (nftables backend) under a real systemd, as the README says it works:
// with the external interface in zone public and the LAN in zone
// internal, natmap's forwards pass untouched (firewalld accepts
// connections whose conntrack status is DNAT), through firewall-cmd
// --reload and a restart of firewalld, while a host port nobody opened
// stays filtered.
func TestIntegrationFirewalld(t *testing.T) {
	h := newFirewallHost(t, firewallTools...)
	serve(t, h.l.router, "host", extIP+":8080") // a host service nobody opened
	// systemctl returns once firewalld is on the bus; its rules are in
	// when firewall-cmd --state says running.
	ready := func() {
		t.Helper()
		if !waitFor(30*time.Second, func() bool { out, _ := h.run("firewall-cmd", "--state"); return strings.TrimSpace(out) == "running" }) {
			out, _ := h.run("journalctl", "--no-pager", "-u", "firewalld")
			t.Fatalf("firewalld is not running:\n%s", out)
		}
	}
	h.must("systemctl", "start", "firewalld")
	ready()
	t.Logf("firewalld %s", strings.TrimSpace(h.must("firewall-cmd", "--version")))
	h.must("firewall-cmd", "--permanent", "--zone=public", "--add-interface=vmbr0")
	h.must("firewall-cmd", "--permanent", "--zone=internal", "--add-interface=int0")
	h.must("firewall-cmd", "--reload")
	ready()
	filtered := func(when string) {
		t.Helper()
		if got, err := dial(h.l.client, "tcp", extIP+":8080"); err == nil {
			t.Errorf("%s: a host port nobody opened answered: %q", when, got)
		}
	}
	filtered("firewalld alone")

	h.natmap()
	h.must(h.lab, "natmap", "fwd")
	h.must(h.lab, "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	for _, step := range []struct {
		what string
		do   []string
	}{
		{"with firewalld's zones", nil},
		{"after firewall-cmd --reload", []string{"firewall-cmd", "--reload"}},
		{"after systemctl restart firewalld", []string{"systemctl", "restart", "firewalld"}},
	} {
		if step.do != nil {
			h.must(step.do...)
			ready()
		}
		if !h.forwarded() {
			t.Errorf("%s: the forward does not pass", step.what)
		}
		filtered(step.what)
	}
}

// TestIntegrationUfw: Debian 12's ufw, enabled, drops forwarded traffic
// (DEFAULT_FORWARD_POLICY="DROP"), natmap's too; the README's recipe, ufw
// route allow, lets the forward through, and it stays through ufw reload
// and a disable and enable.
func TestIntegrationUfw(t *testing.T) {
	h := newFirewallHost(t, firewallTools...)
	h.natmap()
	h.must(h.lab, "natmap", "fwd")
	h.must(h.lab, "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	if !h.forwarded() {
		t.Fatal("the forward does not pass before ufw")
	}
	t.Logf("%s", strings.TrimSpace(strings.Split(h.must("ufw", "version"), "\n")[0]))
	h.must("ufw", "--force", "enable")
	if h.forwarded() {
		t.Error("with ufw enabled and nothing allowed, the forward passes: ufw's forward policy is not DROP here")
	}
	h.must("ufw", "route", "allow", "proto", "tcp", "to", serverIP, "port", "25")
	for _, step := range [][]string{nil, {"ufw", "reload"}, {"sh", "-c", "ufw disable && ufw --force enable"}} {
		if step != nil {
			h.must(step...)
		}
		if !h.forwarded() {
			t.Errorf("after %v: the forward allowed by ufw route allow does not pass", step)
		}
	}
}

// TestIntegrationNftablesService: Debian's nftables.service loads
// /etc/nftables.conf, which begins with flush ruleset; natmap puts its
// table back within its check interval, and the admin's table stays. With
// the README's include line, the same service loads natmap's saved table
// at boot without the daemon.
func TestIntegrationNftablesService(t *testing.T) {
	h := newFirewallHost(t, firewallTools...)
	h.natmap()
	h.must(h.lab, "natmap", "fwd")
	h.must(h.lab, "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	if conf := h.must("cat", "/etc/nftables.conf"); !strings.Contains(conf, "flush ruleset") {
		t.Fatalf("Debian's /etc/nftables.conf does not flush the ruleset:\n%s", conf)
	}
	h.must("systemctl", "restart", "nftables")
	if !waitFor(5*time.Second, h.forwarded) {
		t.Error("natmap's forward did not come back after nftables.service flushed the ruleset")
	}
	if tables := h.must("nft", "list", "tables"); !strings.Contains(tables, "table inet filter") || !strings.Contains(tables, "table inet natmap") {
		t.Errorf("after nftables.service and natmap's repair, the tables are:\n%s", tables)
	}

	// save, the include line, and no daemon: nftables.service alone.
	h.must(h.lab, "natmap", "save")
	h.must("sh", "-c", `echo 'include "/etc/natmap/natmap.nft"' >> /etc/nftables.conf`)
	h.must("systemctl", "stop", "natmap")
	h.must("nft", "flush", "ruleset")
	if h.forwarded() {
		t.Fatal("the forward passes with the ruleset flushed and no daemon")
	}
	h.must("systemctl", "restart", "nftables")
	if !h.forwarded() {
		t.Errorf("nftables.service with the include line did not load natmap's forward:\n%s", h.must("nft", "list", "ruleset"))
	}
}

// TestIntegrationNetfilterPersistent: with the iptables backend, save
// merges natmap's chains into the admin's /etc/iptables/rules.v4;
// netfilter-persistent loads the file at boot, so after a reboot without
// the daemon both the admin's rules and natmap's forward are there.
func TestIntegrationNetfilterPersistent(t *testing.T) {
	h := newFirewallHost(t, "iptables-persistent")
	h.must("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "admin ssh", "-j", "ACCEPT")
	h.must("netfilter-persistent", "save")
	h.must("systemctl", "enable", "netfilter-persistent")
	h.natmap("--backend", "iptables", "--iptables-mode", "nft")
	h.must(h.lab, "natmap", "fwd")
	h.must(h.lab, "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	h.must(h.lab, "natmap", "save")
	if saved := h.must("cat", "/etc/iptables/rules.v4"); !strings.Contains(saved, "admin ssh") || !strings.Contains(saved, "NATMAP-PRE") {
		t.Fatalf("the saved rules.v4:\n%s", saved)
	}
	h.reboot() // the namespace keeps its forwarding setting; the daemon does not come back
	rules := h.must("iptables-save")
	if !strings.Contains(rules, "admin ssh") || !strings.Contains(rules, "-j NATMAP-PRE") {
		t.Errorf("after a reboot, iptables holds:\n%s", rules)
	}
	if !waitFor(5*time.Second, h.forwarded) {
		t.Error("after a reboot, the saved forward does not pass")
	}
}
