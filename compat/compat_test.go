package compat

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/nat"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func fwd(ifname, proto, ext, in string) nat.Forward {
	p, _ := nat.ParseProto(proto)
	return nat.Forward{ExtIf: ifname, Proto: p, Ext: netip.MustParseAddrPort(ext), Int: netip.MustParseAddrPort(in)}
}

var volatile = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// save lists natmap's tables as iptables-save prints them, without the
// comment lines and counters that change from run to run.
func save(t *testing.T, ns *netnstest.NS, mode Mode, v6 bool) string {
	t.Helper()
	tool := "iptables-" + string(mode) + "-save"
	if v6 {
		tool = "ip6tables-" + string(mode) + "-save"
	}
	var out strings.Builder
	for _, table := range []string{"nat", "filter"} {
		out.WriteString(volatile.ReplaceAllString(ns.MustRun(t, tool, "-t", table), ""))
	}
	return out.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestIntegrationGoldenBothModes(t *testing.T) {
	for _, mode := range []Mode{Legacy, NFT} {
		t.Run(string(mode), func(t *testing.T) {
			netnstest.RequirePrivileges(t, "iptables-"+string(mode)+"-restore")
			ns := netnstest.New(t, "nmipt")
			ctx := context.Background()
			b := New(mode)
			smtp := fwd("", "tcp", "203.0.113.43:25", "10.0.0.101:25")
			ssh := fwd("", "tcp", "203.0.113.43:2222", "10.0.0.101:22")
			dns := fwd("", "udp", "203.0.113.43:53", "10.0.0.53:53")
			web := fwd("vmbr0", "tcp", "203.0.113.43:443", "10.0.0.102:443")
			anyAddr := fwd("", "tcp", "0.0.0.0:8080", "172.17.0.2:80")
			v6 := fwd("", "tcp", "[2001:db8::43]:80", "[fd00::101]:8080")
			rules := nat.Rules{
				SNATs:       []nat.SNAT{{IntNet: netip.MustParsePrefix("10.0.0.0/24"), ExtIP: netip.MustParseAddr("203.0.113.43"), ExtIf: "vmbr0"}},
				Masquerades: []nat.Masquerade{{Src: netip.MustParsePrefix("10.0.0.0/24"), Dst: netip.MustParseAddr("10.0.0.101"), Proto: nat.ProtoTCP, From: 8000, To: 8100}},
				SameNet:     []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")},
			}
			err := ns.Do(func() error {
				if err := b.Replace(ctx, nat.Ruleset{Forwards: []nat.Forward{smtp, dns}}); err != nil {
					return err
				}
				if err := b.Apply(ctx, nat.Change{Add: []nat.Forward{ssh, web, anyAddr, v6}, Rules: &rules}); err != nil {
					return err
				}
				return b.Apply(ctx, nat.Change{Del: []nat.Forward{dns}})
			})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "sequence-"+string(mode)+".v4", save(t, ns, mode, false))
			golden(t, "sequence-"+string(mode)+".v6", save(t, ns, mode, true))

			// A failed change (deleting what is absent) changes nothing.
			before := save(t, ns, mode, false)
			err = ns.Do(func() error {
				return b.Apply(ctx, nat.Change{Del: []nat.Forward{dns}, Add: []nat.Forward{fwd("", "tcp", "203.0.113.43:26", "10.0.0.101:26")}})
			})
			if err == nil {
				t.Fatal("deleting an absent forward succeeded")
			}
			if after := save(t, ns, mode, false); after != before {
				t.Errorf("a failed change changed the rules:\n%s", after)
			}
			// Replace twice keeps one jump each; Remove leaves nothing.
			if err := ns.Do(func() error { return b.Replace(ctx, nat.Ruleset{}) }); err != nil {
				t.Fatal(err)
			}
			if err := ns.Do(func() error { return b.Replace(ctx, nat.Ruleset{}) }); err != nil {
				t.Fatal(err)
			}
			if got := save(t, ns, mode, false); strings.Count(got, "-j NATMAP-PRE") != 1 {
				t.Errorf("jumps after two replaces:\n%s", got)
			}
			if err := ns.Do(b.Remove); err != nil {
				t.Fatal(err)
			}
			if got := save(t, ns, mode, false) + save(t, ns, mode, true); strings.Contains(got, "NATMAP") {
				t.Errorf("after Remove:\n%s", got)
			}
		})
	}
}
