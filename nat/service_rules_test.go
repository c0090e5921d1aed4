package nat

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func hairpin(t *testing.T, ext, in, ports, proto, lan string) Hairpin {
	t.Helper()
	c := HairpinConfig{ExtIP: ext, IntIP: in, Ports: ports, Proto: proto}
	if lan != "" {
		c.LanCIDR = &lan
	}
	h, err := c.ToHairpin()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func snat(t *testing.T, in, ifname, ext string) SNAT {
	t.Helper()
	s, err := SnatConfig{IntIP: in, ExtIP: ext, ExtIf: ifname}.ToSNAT()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestHairpinSharesTheDNATForward(t *testing.T) {
	r := newRig(t, State{})
	mail := dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", "")
	if _, _, err := r.svc.AddDNAT(ctx, mail); err != nil {
		t.Fatal(err)
	}
	rule, changed, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "25,465,587", "tcp", ""))
	if err != nil || !changed {
		t.Fatalf("hairpin: %v %v", changed, err)
	}
	if rule.LanCIDR.String() != "10.0.0.0/24" {
		t.Errorf("default LAN %s, want the connected 10.0.0.0/24", rule.LanCIDR)
	}
	want := `dnat tcp 203.0.113.43:25 -> 10.0.0.101:25
dnat tcp 203.0.113.43:465 -> 10.0.0.101:465
dnat tcp 203.0.113.43:587 -> 10.0.0.101:587
masquerade tcp from 10.0.0.0/24 to 10.0.0.101 port 25
masquerade tcp from 10.0.0.0/24 to 10.0.0.101 port 465
masquerade tcp from 10.0.0.0/24 to 10.0.0.101 port 587
`
	if got := r.fake.Dump(); got != want {
		t.Fatalf("kernel:\n%s\nwant\n%s", got, want)
	}
	// Deleting the dnat keeps the forwards the hairpin uses, and their ports.
	if err := r.svc.DeleteDNAT(ctx, mail); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); got != want {
		t.Fatalf("after deleting the dnat:\n%s", got)
	}
	if got := r.res.Dump(); got != "203.0.113.43:25/tcp 203.0.113.43:465/tcp 203.0.113.43:587/tcp" {
		t.Fatalf("held: %s", got)
	}
	if err := r.svc.DeleteHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "25,465,587", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	if r.fake.Dump() != "" || r.res.Dump() != "" {
		t.Fatalf("after deleting both:\n%s", r.snapshot())
	}
}

func TestSNATAndPolicyRoutes(t *testing.T) {
	r := newRig(t, State{})
	host := snat(t, "10.0.0.101", "vmbr0", "203.0.113.43")
	lan := snat(t, "10.0.0.0/24", "vmbr0", "203.0.113.44")
	for _, s := range []SNAT{lan, host} {
		if changed, err := r.svc.AddSNAT(ctx, s); err != nil || !changed {
			t.Fatalf("add %s: %v %v", s, changed, err)
		}
	}
	if changed, err := r.svc.AddSNAT(ctx, host); err != nil || changed {
		t.Fatalf("second add: %v %v", changed, err)
	}
	want := "snat from 10.0.0.101 out vmbr0 to 203.0.113.43\nsnat from 10.0.0.0/24 out vmbr0 to 203.0.113.44\n"
	if got := r.fake.Dump(); got != want {
		t.Fatalf("kernel (most specific first):\n%s", got)
	}
	if _, err := r.svc.AddSNAT(ctx, snat(t, "10.0.0.101", "vmbr0", "203.0.113.45")); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting snat: %v", err)
	}
	if err := r.svc.DeleteSNAT(ctx, snat(t, "10.0.0.101", "vmbr0", "203.0.113.45")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting with the wrong address: %v", err)
	}

	p := PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.101"), Via: netip.MustParseAddr("10.0.0.1"), Table: 100}
	if changed, err := r.svc.AddPolicyRoute(p); err != nil || !changed {
		t.Fatalf("policy route: %v %v", changed, err)
	}
	if changed, err := r.svc.AddPolicyRoute(p); err != nil || changed {
		t.Fatalf("second policy route: %v %v", changed, err)
	}
	other := PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.102"), Via: netip.MustParseAddr("10.0.0.2"), Table: 100}
	if _, err := r.svc.AddPolicyRoute(other); !errors.Is(err, ErrConflict) {
		t.Fatalf("table with another gateway: %v", err)
	}
	far := PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.102"), Via: netip.MustParseAddr("192.0.2.1"), Table: 101}
	if _, err := r.svc.AddPolicyRoute(far); ErrStatus(err) != 400 {
		t.Fatalf("unreachable gateway: %v", err)
	}
	same := PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.102"), Via: netip.MustParseAddr("10.0.0.1"), Table: 100}
	if _, err := r.svc.AddPolicyRoute(same); err != nil {
		t.Fatal(err)
	}
	// The table stays while another route uses it.
	if err := r.svc.DeletePolicyRoute(p); err != nil {
		t.Fatal(err)
	}
	if got := r.router.Dump(); got != "policy route from 10.0.0.102 via 10.0.0.1 table 100; table 100" {
		t.Fatalf("routes: %s", got)
	}
	if len(r.store.last.PolicyRoutes) != 1 || len(r.store.last.Snats) != 2 {
		t.Fatalf("stored: %+v", r.store.last)
	}
	if err := r.svc.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if r.fake.Dump() != "" || r.router.Dump() != "" || len(r.store.last.Snats)+len(r.store.last.PolicyRoutes) != 0 {
		t.Fatalf("after clear:\n%s", r.snapshot())
	}
}

func TestRulesRefusedChangeNothing(t *testing.T) {
	r := newRig(t, State{})
	if _, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.svc.AddSNAT(ctx, snat(t, "10.0.0.101", "vmbr0", "203.0.113.43")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		do   func() error
		want string
	}{
		{"hairpin to another target", func() error {
			_, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.102", "25", "tcp", ""))
			return err
		}, "already forwarded to 10.0.0.101:25"},
		{"hairpin with the other protocol", func() error {
			_, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "25", "udp", ""))
			return err
		}, "forwards port 25 over tcp, not udp"},
		{"backend failure on hairpin", func() error {
			r.fake.FailNext = errors.New("netlink: boom")
			_, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "25,26", "tcp", ""))
			return err
		}, "boom"},
		{"store failure on hairpin", func() error {
			r.store.failNext = errors.New("disk full")
			_, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "25,26", "tcp", ""))
			return err
		}, "disk full"},
		{"store failure on snat delete", func() error {
			r.store.failNext = errors.New("disk full")
			return r.svc.DeleteSNAT(ctx, snat(t, "10.0.0.101", "vmbr0", "203.0.113.43"))
		}, "disk full"},
		{"store failure on policy route", func() error {
			r.store.failNext = errors.New("disk full")
			_, err := r.svc.AddPolicyRoute(PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.101"), Via: netip.MustParseAddr("10.0.0.1"), Table: 7})
			return err
		}, "disk full"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.snapshot()
			err := tt.do()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error saying %q", err, tt.want)
			}
			if after := r.snapshot(); after != before {
				t.Errorf("a refused request changed things:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

func TestPolicyRouteValidation(t *testing.T) {
	for _, c := range []struct {
		cfg  PolicyRouteConfig
		want string
	}{
		{PolicyRouteConfig{SrcIP: "10.0.0.1", Via: "10.0.0.254", Table: 0}, "table: 0 is not"},
		{PolicyRouteConfig{SrcIP: "10.0.0.1", Via: "10.0.0.254", Table: 253}, "table: 253 is reserved"},
		{PolicyRouteConfig{SrcIP: "10.0.0.1", Via: "10.0.0.254", Table: 254}, "table: 254 is reserved"},
		{PolicyRouteConfig{SrcIP: "10.0.0.1", Via: "10.0.0.254", Table: 255}, "table: 255 is reserved"},
		{PolicyRouteConfig{SrcIP: "10.0.0.1", Via: "fd00::1", Table: 100}, "different IP versions"},
		{PolicyRouteConfig{SrcIP: "nope", Via: "10.0.0.254", Table: 100}, "src_ip"},
	} {
		if _, err := c.cfg.ToPolicyRoute(); err == nil || !strings.Contains(err.Error(), c.want) || ErrStatus(err) != 400 {
			t.Errorf("%+v: %v, want 400 saying %q", c.cfg, err, c.want)
		}
	}
}

// A hairpin change reaches the backend as element changes alone, with no
// rules to rebuild, and the elements always equal the model's hairpins; a
// failed change takes its elements back.
func TestHairpinChangesAreElementsOnly(t *testing.T) {
	r := &rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}
	r.svc = NewService(r.deps())
	start := State{Hairpins: []Hairpin{hairpin(t, "203.0.113.43", "10.0.0.101", "25", "tcp", "10.0.0.0/24")}}
	if err := r.svc.Start(ctx, start); err != nil {
		t.Fatal(err)
	}
	same := func(when string) {
		t.Helper()
		want := setOf(r.svc.rulesWith(true).Hairpinned)
		if got := r.fake.Hairpinned(); !maps.Equal(got, want) {
			t.Fatalf("%s: the backend holds %v, the model %v", when, got, want)
		}
	}
	same("after start")
	steps := []struct {
		name string
		do   func() error
	}{
		{"add ports", func() error {
			_, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "465,587", "tcp", ""))
			return err
		}},
		{"another LAN", func() error {
			_, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.44", "10.0.0.102", "80", "tcp", "10.0.0.0/25"))
			return err
		}},
		{"a dnat beside", func() error {
			_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25,8080", "tcp", ""))
			return err
		}},
		{"delete some", func() error {
			return r.svc.DeleteHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "25,587", "tcp", ""))
		}},
	}
	for _, s := range steps {
		before := r.fake.Transactions
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if r.fake.Transactions != before+1 {
			t.Fatalf("%s: %d transactions", s.name, r.fake.Transactions-before)
		}
		same(s.name)
	}
	r.store.failNext = errors.New("disk full")
	if _, _, err := r.svc.AddHairpin(ctx, hairpin(t, "203.0.113.43", "10.0.0.101", "993", "tcp", "")); err == nil {
		t.Fatal("a change that could not be saved succeeded")
	}
	same("after a refused change")
	if err := r.svc.DeleteHairpin(ctx, hairpin(t, "203.0.113.44", "10.0.0.102", "80", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	same("after the last of a LAN")
}

// TestPublishedStatsNeverWaitForTheLock: the counts a metrics scrape reads
// come without the service lock, even while a change holds it, and follow
// the changes made.
func TestPublishedStatsNeverWaitForTheLock(t *testing.T) {
	r := newRig(t, State{})
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	go r.svc.PublishStats(pctx, 10*time.Millisecond)
	if _, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for st := r.svc.published.Load(); st == nil || st.Forwards != 2; st = r.svc.published.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("published stats after a change: %+v, want 2 forwards", st)
		}
		time.Sleep(time.Millisecond)
	}

	unlock := r.svc.lock() // a change in progress
	got := make(chan Stats, 1)
	go func() { got <- r.svc.PublishedStats() }()
	select {
	case st := <-got:
		if st.Dnats != 1 || st.Changes != 1 {
			t.Errorf("published stats: %+v, want 1 dnat, 1 change", st)
		}
	case <-time.After(5 * time.Second):
		t.Error("reading the published stats waited for the service lock")
	}
	unlock()
}
