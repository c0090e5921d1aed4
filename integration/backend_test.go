package integration

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

// These tests choose backends themselves, whatever NATMAP_TEST_BACKEND says.

func status(t *testing.T, l *lab) nat.StatusResponse {
	t.Helper()
	var st nat.StatusResponse
	if err := json.Unmarshal([]byte(l.mustCLI("--json", "status")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestIntegrationBackendAuto(t *testing.T) {
	l := newLab(t)
	l.startDaemon("--backend", "auto")
	if st := status(t, l); st.Backend != "nftables" || !strings.Contains(st.BackendReason, "no iptables-legacy rules") {
		t.Errorf("clean host: %s (%s)", st.Backend, st.BackendReason)
	}
	l.stopDaemon()
	// natmap's own chains, left on iptables-legacy by a run there, do not
	// keep auto on iptables-legacy.
	l.startDaemon("--backend", "iptables", "--iptables-mode", "legacy")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	l.stopDaemon()
	l.startDaemon("--backend", "auto")
	if st := status(t, l); st.Backend != "nftables" || !strings.Contains(st.BackendReason, "no iptables-legacy rules") {
		t.Errorf("after a run on iptables-legacy: %s (%s)", st.Backend, st.BackendReason)
	}
	if out := l.router.MustRun(t, "iptables-legacy-save"); strings.Contains(out, "NATMAP") {
		t.Errorf("natmap's legacy chains stayed after the move to nftables:\n%s", out)
	}
	l.stopDaemon()

	legacy := newLab(t)
	legacy.router.MustRun(t, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "RETURN")
	serve(t, legacy.server, "mail", serverIP+":25")
	legacy.startDaemon("--backend", "auto")
	if st := status(t, legacy); st.Backend != "iptables-legacy" || !strings.Contains(st.BackendReason, "iptables-legacy tables hold 1 rules") {
		t.Errorf("legacy host: %s (%s)", st.Backend, st.BackendReason)
	}
	legacy.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	expectReach(t, legacy.client, "tcp", extIP+":25", "mail")
	if out := legacy.router.MustRun(t, "iptables-legacy-save", "-t", "nat"); !strings.Contains(out, "-A PREROUTING -j NATMAP-PRE") {
		t.Errorf("iptables-legacy-save:\n%s", out)
	}
}

// TestIntegrationBackendSwitch runs the daemon on each backend in turn
// over the same state: traffic flows each time, and nothing of the
// previous backend remains.
func TestIntegrationBackendSwitch(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25")
	traces := func() map[string]string {
		legacy, _ := l.router.Run("iptables-legacy-save")
		nftVariant, _ := l.router.Run("iptables-nft-save")
		ruleset, _ := l.router.Run("nft", "list", "ruleset")
		return map[string]string{"iptables-legacy": legacy, "iptables-nft": nftVariant, "nftables": ruleset}
	}
	steps := []struct{ backend, mode string }{
		{"nftables", "auto"}, {"iptables", "legacy"}, {"iptables", "nft"}, {"nftables", "auto"},
	}
	for i, step := range steps {
		l.startDaemon("--backend", step.backend, "--iptables-mode", step.mode)
		if i == 0 {
			l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
		}
		expectReach(t, l.client, "tcp", extIP+":25", "mail")
		l.stopDaemon()
		name := step.backend
		if name == "iptables" {
			name = "iptables-" + step.mode
		}
		for kind, text := range traces() {
			ours := strings.Contains(text, "NATMAP") || strings.Contains(text, "table inet natmap")
			if kind == "nftables" && name == "iptables-nft" {
				// iptables-nft keeps its chains in nftables' ip tables.
				ours = strings.Contains(text, "table inet natmap")
			}
			if want := kind == name; ours != want {
				t.Errorf("after running on %s, natmap's rules in %s: %v, want %v:\n%s", name, kind, ours, want, text)
			}
		}
	}
}

// TestIntegrationMigrateFromEarlierNatmap starts the daemon on a state file
// of the earlier, iptables-based natmap, with the rules that implementation
// left in iptables: traffic flows by natmap's rules, no old rule remains,
// other rules stay, and the original file is kept as a backup.
func TestIntegrationMigrateFromEarlierNatmap(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25", serverIP+":465")
	serve(t, l.server, "old", "10.0.0.102:25", "10.0.0.102:465")
	earlier := `{"mapping": {}, "dnats": [{"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "25,465", "proto": "tcp", "ext_if": null, "preserve_src_ip": false}],
  "snats": [], "hairpins": [{"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "25,465", "proto": "tcp", "lan_cidr": null}], "policy_routes": []}`
	if err := os.WriteFile(l.state, []byte(earlier), 0o600); err != nil {
		t.Fatal(err)
	}
	// What the earlier natmap left: a NATMAP chain and natmap: rules in
	// built-in chains (pointing at the wrong server, to be sure they go),
	// beside somebody else's rule that must stay.
	for _, tool := range []string{"iptables-nft", "iptables-legacy"} {
		for _, args := range [][]string{
			{"-t", "nat", "-N", "NATMAP"},
			{"-t", "nat", "-A", "PREROUTING", "-j", "NATMAP"},
			{"-t", "nat", "-A", "NATMAP", "-d", extIP, "-p", "tcp", "--dport", "25", "-j", "DNAT", "--to-destination", "10.0.0.102"},
			{"-t", "nat", "-A", "PREROUTING", "-d", extIP, "-p", "tcp", "--dport", "465", "-m", "comment", "--comment", "natmap:dnat 465", "-j", "DNAT", "--to-destination", "10.0.0.102"},
			{"-t", "nat", "-A", "POSTROUTING", "-s", "10.0.0.101", "-m", "comment", "--comment", "natmap:hairpin", "-j", "MASQUERADE"},
			{"-A", "FORWARD", "-d", "10.0.0.101", "-m", "comment", "--comment", "natmap:fwd", "-j", "ACCEPT"},
			{"-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "RETURN"},
		} {
			l.router.MustRun(t, tool, args...)
		}
	}
	l.startDaemon()
	if !strings.Contains(l.daemonLog.String(), "migrating the earlier natmap") {
		t.Errorf("no migration logged:\n%s", l.daemonLog)
	}
	for _, port := range []string{"25", "465"} {
		if src := expectReach(t, l.client, "tcp", extIP+":"+port, "mail"); src != clientIP {
			t.Errorf("port %s: the server saw %s", port, src)
		}
		expectReach(t, l.server2, "tcp", extIP+":"+port, "mail") // the hairpin
	}
	for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out := l.router.MustRun(t, tool)
		if strings.Contains(out, ":NATMAP ") || strings.Contains(out, "natmap:dnat 465") || strings.Contains(out, "natmap:fwd") || strings.Contains(out, "natmap:hairpin") {
			t.Errorf("%s still has the earlier natmap's rules:\n%s", tool, out)
		}
		if !strings.Contains(out, "-A POSTROUTING -s 192.0.2.0/24 -j RETURN") {
			t.Errorf("%s lost somebody else's rule:\n%s", tool, out)
		}
	}
	if b, err := os.ReadFile(l.state + ".earlier-natmap.bak"); err != nil || string(b) != earlier {
		t.Errorf("backup: %q %v", b, err)
	}
	if b, _ := os.ReadFile(l.state); !strings.Contains(string(b), `"version": 1`) || !strings.Contains(string(b), `"lan_cidr": "10.0.0.0/24"`) {
		t.Errorf("state file not rewritten:\n%s", b)
	}
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "25,465") || !strings.Contains(ls, "hairpin") {
		t.Errorf("ls:\n%s", ls)
	}
}
