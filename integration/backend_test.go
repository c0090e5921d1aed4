package integration

import (
	"encoding/json"
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
