package integration

import (
	"strings"
	"testing"
	"time"
)

// TestIntegrationSelfHealing tampers with natmap's rules the ways people do
// and expects them back within a second, with a log line saying what was
// repaired, and other tables untouched.
func TestIntegrationSelfHealing(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP)
	want := noCounters(l.kernelRules())

	var tampers [][]string
	switch b := testBackend(); b {
	case "nftables":
		l.router.MustRun(t, "nft", "add", "table", "inet", "other")
		l.router.MustRun(t, "nft", "add", "chain", "inet", "other", "c")
		tampers = [][]string{
			{"nft", "delete", "table", "inet", "natmap"},
			{"nft", "flush", "chain", "inet", "natmap", "prerouting"},
			{"nft", "flush", "chain", "inet", "natmap", "snat_out"},
			{"nft", "flush", "ruleset"},
		}
	default:
		ipt := "iptables" + strings.TrimPrefix(b, "iptables")
		tampers = [][]string{
			{ipt, "-t", "nat", "-F", "NATMAP-PRE"},
			{ipt, "-t", "nat", "-D", "PREROUTING", "-j", "NATMAP-PRE"},
			{ipt, "-t", "nat", "-F", "NATMAP-SNAT"},
			{ipt, "-D", "FORWARD", "-j", "NATMAP-FWD"},
		}
	}
	for _, tamper := range tampers {
		l.router.MustRun(t, tamper[0], tamper[1:]...)
		start := time.Now()
		if !waitFor(time.Second, func() bool { return noCounters(l.kernelRules()) == want }) {
			t.Fatalf("after %v the rules were not restored within 1s:\n%s", tamper, l.kernelRules())
		}
		t.Logf("repair time after %q: %v", strings.Join(tamper, " "), time.Since(start).Round(time.Millisecond))
		expectReach(t, l.client, "tcp", extIP+":25", "mail")
	}
	if !strings.Contains(l.daemonLog.String(), "restored them") {
		t.Errorf("no repair logged:\n%s", l.daemonLog)
	}
	if testBackend() == "nftables" {
		// The foreign table was gone only with the flush of the whole
		// ruleset (the last tamper); natmap never touched it before.
		if out, _ := l.router.Run("nft", "list", "tables"); strings.Contains(out, "inet other") {
			t.Errorf("natmap restored a table it does not own:\n%s", out)
		}
	}
}
