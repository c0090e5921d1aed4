package route

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/nat"
)

// lan is a namespace with an interface, d0 (a veth whose peer d1 is in
// the same namespace), on 10.9.0.0/24 and
// fd00:9::/64, where the tests program policy routes.
func lan(t *testing.T) *netnstest.NS {
	netnstest.RequirePrivileges(t)
	ns := netnstest.New(t, "nmrt")
	ns.MustRun(t, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	ns.AddAddr(t, "d0", "10.9.0.1/24")
	ns.AddAddr(t, "d0", "fd00:9::1/64")
	ns.MustRun(t, "ip", "link", "set", "d0", "up")
	ns.MustRun(t, "ip", "link", "set", "d1", "up")
	return ns
}

// in runs fn in ns, failing the test on its error.
func in(t *testing.T, ns *netnstest.NS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func policy(src, via string, table uint32) nat.PolicyRoute {
	return nat.PolicyRoute{SrcIP: netip.MustParseAddr(src), Via: netip.MustParseAddr(via), Table: table}
}

func TestGatewayAndConnectedPrefix(t *testing.T) {
	ns := lan(t)
	var r Netlink
	in(t, ns, func() error {
		if err := r.CheckGateway(netip.MustParseAddr("10.9.0.254")); err != nil {
			t.Errorf("a gateway on d0's network: %v", err)
		}
		if err := r.CheckGateway(netip.MustParseAddr("192.0.2.1")); !errors.Is(err, nat.ErrInvalid) {
			t.Errorf("a gateway on no connected network: %v, want ErrInvalid", err)
		}
		for ip, want := range map[string]string{"10.9.0.77": "10.9.0.0/24", "fd00:9::77": "fd00:9::/64", "192.0.2.1": "192.0.2.1/32"} {
			if p, err := r.ConnectedPrefix(netip.MustParseAddr(ip)); err != nil || p.String() != want {
				t.Errorf("ConnectedPrefix(%s) = %s %v, want %s", ip, p, err, want)
			}
		}
		addrs, err := r.InterfaceAddrs("d0")
		if err != nil || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("fd00:9::1")}) {
			t.Errorf("d0's addresses: %v %v (link-local left out)", addrs, err)
		}
		if addrs, err := r.InterfaceAddrs("nope0"); err != nil || addrs != nil {
			t.Errorf("a missing interface: %v %v, want none and no error", addrs, err)
		}
		return nil
	})
}

func TestPolicyRouteAddDelete(t *testing.T) {
	ns := lan(t)
	var r Netlink
	for _, p := range []nat.PolicyRoute{policy("10.9.0.50", "10.9.0.254", 100), policy("fd00:9::50", "fd00:9::fe", 100)} {
		family := "-4"
		if p.SrcIP.Is6() {
			family = "-6"
		}
		in(t, ns, func() error { return r.AddPolicyRoute(p) })
		in(t, ns, func() error { return r.AddPolicyRoute(p) }) // idempotent
		rules := ns.MustRun(t, "ip", family, "rule", "show", "table", "100")
		if n := strings.Count(rules, "from "+p.SrcIP.String()+" lookup 100 proto 212"); n != 1 || !strings.HasPrefix(rules, "1000:") {
			t.Errorf("%s: rules after two adds:\n%s", p, rules)
		}
		table := ns.MustRun(t, "ip", family, "route", "show", "table", "100")
		connected := map[bool]string{false: "10.9.0.0/24", true: "fd00:9::/64"}[p.SrcIP.Is6()] + " dev d0 proto 212"
		if !strings.Contains(table, "default via "+p.Via.String()+" dev d0 proto 212") || !strings.Contains(table, connected) {
			t.Errorf("%s: table 100 lacks the default route or the connected copy:\n%s", p, table)
		}
		// An admin's route in natmap's table stays when natmap's go.
		ns.MustRun(t, "ip", family, "route", "add", map[bool]string{false: "192.0.2.0/24", true: "2001:db8::/64"}[p.SrcIP.Is6()], "dev", "d0", "table", "100")
		in(t, ns, func() error { return r.DeletePolicyRoute(p, true) })
		in(t, ns, func() error { return r.DeletePolicyRoute(p, true) }) // a missing rule is no error
		if rules := ns.MustRun(t, "ip", family, "rule", "show", "table", "100"); rules != "" {
			t.Errorf("%s: rules after delete:\n%s", p, rules)
		}
		if table := ns.MustRun(t, "ip", family, "route", "show", "table", "100"); strings.Contains(table, "proto 212") || !strings.Contains(table, "dev d0") {
			t.Errorf("%s: table 100 after delete, want only the admin's route:\n%s", p, table)
		}
		ns.MustRun(t, "ip", family, "route", "flush", "table", "100")
	}
}

// Another tool's table is refused before anything changes.
func TestPolicyRouteLeavesForeignTable(t *testing.T) {
	ns := lan(t)
	var r Netlink
	ns.MustRun(t, "ip", "route", "add", "default", "dev", "d0", "table", "51820")
	before := ns.MustRun(t, "ip", "rule", "show") + ns.MustRun(t, "ip", "route", "show", "table", "all")
	err := ns.Do(func() error { return r.AddPolicyRoute(policy("10.9.0.50", "10.9.0.254", 51820)) })
	if !errors.Is(err, nat.ErrConflict) || !strings.Contains(err.Error(), "table 51820 holds routes natmap did not create (default dev d0 proto boot)") {
		t.Errorf("a foreign table: %v", err)
	}
	if err := ns.Do(func() error { return r.AddPolicyRoute(policy("10.9.0.50", "192.0.2.1", 100)) }); !errors.Is(err, nat.ErrInvalid) {
		t.Errorf("a gateway on no connected network: %v", err)
	}
	if after := ns.MustRun(t, "ip", "rule", "show") + ns.MustRun(t, "ip", "route", "show", "table", "all"); after != before {
		t.Errorf("refused policy routes changed routing:\n%s\nwant\n%s", after, before)
	}
}

// Prune removes natmap's rules and routes of policy routes no longer kept,
// and nothing else.
func TestPrunePolicyRoutes(t *testing.T) {
	ns := lan(t)
	var r Netlink
	keep, drop := policy("10.9.0.50", "10.9.0.254", 100), policy("10.9.0.51", "10.9.0.253", 101)
	in(t, ns, func() error { return r.AddPolicyRoute(keep) })
	in(t, ns, func() error { return r.AddPolicyRoute(drop) })
	ns.MustRun(t, "ip", "rule", "add", "from", "10.9.0.52", "lookup", "101", "priority", "1000") // the admin's
	in(t, ns, func() error { return r.PrunePolicyRoutes([]nat.PolicyRoute{keep}) })
	rules := ns.MustRun(t, "ip", "rule", "show")
	if !strings.Contains(rules, "from 10.9.0.50 lookup 100 proto 212") || strings.Contains(rules, "from 10.9.0.51") || !strings.Contains(rules, "from 10.9.0.52 lookup 101") {
		t.Errorf("rules after prune:\n%s", rules)
	}
	if t101 := ns.MustRun(t, "ip", "route", "show", "table", "101"); t101 != "" {
		t.Errorf("table 101 after prune:\n%s", t101)
	}
	if t100 := ns.MustRun(t, "ip", "route", "show", "table", "100"); !strings.Contains(t100, "default via 10.9.0.254") {
		t.Errorf("table 100 after prune:\n%s", t100)
	}
}
