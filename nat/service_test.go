package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

type rig struct {
	svc    *Service
	fake   *Fake
	res    *FakeReserver
	store  *MemStore
	router *FakeRouter
}

func (r *rig) deps() Deps {
	if r.router == nil {
		r.router = NewFakeRouter()
	}
	return Deps{Backend: r.fake, Reserver: r.res, Store: r.store, System: &NoSystem{}, Router: r.router}
}

func newRig(t testing.TB, st State) *rig {
	t.Helper()
	r := &rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}
	r.svc = NewService(r.deps())
	if err := r.svc.Start(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return r
}

// snapshot is everything a failed request must leave as it was.
func (r *rig) snapshot() string {
	return fmt.Sprintf("kernel:\n%sheld: %s\nsaves: %d\nroutes: %s\nrules: %+v", r.fake.Dump(), r.res.Dump(), r.store.saves, r.router.Dump(), r.svc.List())
}

func dnat(t *testing.T, ext, in, ports, proto, ifname string) DNAT {
	t.Helper()
	c := DnatConfig{ExtIP: ext, IntIP: in, Ports: ports, Proto: proto}
	if ifname != "" {
		c.ExtIf = &ifname
	}
	d, err := c.ToDNAT()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var ctx = context.Background()

func TestAddListDeleteMerge(t *testing.T) {
	r := newRig(t, State{})
	mail := dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", "")
	if _, changed, err := r.svc.AddDNAT(ctx, mail); err != nil || !changed {
		t.Fatalf("add: changed=%v err=%v", changed, err)
	}
	before := r.snapshot()
	if _, changed, err := r.svc.AddDNAT(ctx, mail); err != nil || changed {
		t.Fatalf("second add: changed=%v err=%v, want a no-op", changed, err)
	}
	if after := r.snapshot(); after != before {
		t.Fatalf("a no-op add changed things:\n%s\nwant\n%s", after, before)
	}
	// More ports for the same rule merge into it.
	rule, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "587,2525:25", "tcp", ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := rule.Ports.String(); got != "25,465,587,2525:25" {
		t.Fatalf("merged ports %s", got)
	}
	// The same port over UDP is another forward.
	if _, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25", "udp", "")); err != nil {
		t.Fatalf("udp beside tcp: %v", err)
	}
	wantKernel := `dnat tcp 203.0.113.43:25 -> 10.0.0.101:25
dnat udp 203.0.113.43:25 -> 10.0.0.101:25
dnat tcp 203.0.113.43:465 -> 10.0.0.101:465
dnat tcp 203.0.113.43:587 -> 10.0.0.101:587
dnat tcp 203.0.113.43:2525 -> 10.0.0.101:25
`
	if got := r.fake.Dump(); got != wantKernel {
		t.Fatalf("kernel:\n%s\nwant\n%s", got, wantKernel)
	}
	// Deleting some ports keeps the rest and releases exactly those.
	if err := r.svc.DeleteDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "465,2525:25", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	if got := r.res.Dump(); got != "203.0.113.43:25/tcp 203.0.113.43:25/udp 203.0.113.43:587/tcp" {
		t.Fatalf("held after partial delete: %s", got)
	}
	if got := r.store.last.Dnats[0].Ports.String(); got != "25,587" {
		t.Fatalf("stored ports after partial delete: %s", got)
	}
}

func TestRefusedRequestsChangeNothing(t *testing.T) {
	r := newRig(t, State{})
	if _, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	r.res.busy[Endpoint{Addr: netip.MustParseAddrPort("203.0.113.43:8080"), Proto: ProtoTCP}] = true
	tests := []struct {
		name    string
		do      func() error
		want    error
		message string
	}{
		{"conflicting target", func() error {
			_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.102", "465,993", "tcp", ""))
			return err
		}, ErrConflict, "203.0.113.43:465/tcp is already forwarded to 10.0.0.101:465"},
		{"same port on an interface", func() error {
			_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25", "tcp", "vmbr0"))
			return err
		}, ErrConflict, "already forwarded"},
		{"port held by another program", func() error {
			_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "8079-8081", "tcp", ""))
			return err
		}, ErrPortInUse, "203.0.113.43:8080/tcp is in use"},
		{"delete of a missing rule", func() error {
			return r.svc.DeleteDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.109", "25", "tcp", ""))
		}, ErrNotFound, "no dnat rule 203.0.113.43 -> 10.0.0.109"},
		{"delete of a missing port", func() error {
			return r.svc.DeleteDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25,26", "tcp", ""))
		}, ErrNotFound, "port 26/tcp is not forwarded"},
		{"delete with the wrong protocol", func() error {
			return r.svc.DeleteDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25", "udp", ""))
		}, ErrNotFound, "no dnat rule"},
		{"backend failure on add", func() error {
			r.fake.FailNext = errors.New("netlink: boom")
			_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "993", "tcp", ""))
			return err
		}, nil, "netlink: boom"},
		{"store failure on add", func() error {
			r.store.failNext = errors.New("disk full")
			_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "993", "tcp", ""))
			return err
		}, nil, "disk full"},
		{"backend failure on delete", func() error {
			r.fake.FailNext = errors.New("netlink: boom")
			return r.svc.DeleteDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25", "tcp", ""))
		}, nil, "netlink: boom"},
		{"store failure on delete", func() error {
			r.store.failNext = errors.New("disk full")
			return r.svc.DeleteDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "25", "tcp", ""))
		}, nil, "disk full"},
		{"store failure on clear", func() error {
			r.store.failNext = errors.New("disk full")
			return r.svc.Clear(ctx)
		}, nil, "disk full"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.snapshot()
			err := tt.do()
			if err == nil {
				t.Fatal("succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error %v is not %v", err, tt.want)
			}
			if tt.want == nil && ErrStatus(err) != 500 {
				t.Errorf("error %v maps to %d, want 500", err, ErrStatus(err))
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not say %q", err, tt.message)
			}
			if after := r.snapshot(); after != before {
				t.Errorf("a refused request changed things:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

func TestStartWithTakenPortKeepsRuleInactiveAndRetries(t *testing.T) {
	st := State{Dnats: []DNAT{
		dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", ""),
		dnat(t, "203.0.113.43", "10.0.0.102", "80", "tcp", ""),
	}}
	r := &rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}
	busy := Endpoint{Addr: netip.MustParseAddrPort("203.0.113.43:465"), Proto: ProtoTCP}
	busy80 := Endpoint{Addr: netip.MustParseAddrPort("203.0.113.43:80"), Proto: ProtoTCP}
	r.res.busy[busy], r.res.busy[busy80] = true, true
	r.svc = NewService(r.deps())
	if err := r.svc.Start(ctx, st); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); got != "dnat tcp 203.0.113.43:25 -> 10.0.0.101:25\n" {
		t.Fatalf("kernel after start:\n%s", got)
	}
	countsAgree(t, r.svc, map[string]int{"partial": 1, "inactive": 1})
	list := r.svc.List().Dnats
	if list[0].Status != "partial" || !strings.Contains(list[0].Reason, "203.0.113.43:465/tcp is in use") {
		t.Fatalf("first rule: %+v", list[0])
	}
	if list[1].Status != "inactive" {
		t.Fatalf("second rule: %+v", list[1])
	}
	if r.svc.RetryInactive(ctx) != 0 {
		t.Fatal("retry succeeded while the ports are busy")
	}
	delete(r.res.busy, busy)
	if n := r.svc.RetryInactive(ctx); n != 1 {
		t.Fatalf("retry brought back %d forwards, want 1", n)
	}
	if list := r.svc.List().Dnats; list[0].Status != "active" || list[1].Status != "inactive" {
		t.Fatalf("after retry: %+v", list)
	}
	countsAgree(t, r.svc, map[string]int{"active": 1, "inactive": 1})
	// Deleting an inactive rule releases nothing (it holds nothing).
	if err := r.svc.DeleteDNAT(ctx, st.Dnats[1]); err != nil {
		t.Fatal(err)
	}
	countsAgree(t, r.svc, map[string]int{"active": 1}) // nothing inactive now
	if got := r.res.Dump(); got != "203.0.113.43:25/tcp 203.0.113.43:465/tcp" {
		t.Fatalf("held: %s", got)
	}
	if r.store.saves != 1 || len(r.store.last.Dnats) != 1 {
		t.Fatalf("store: %d saves, %+v", r.store.saves, r.store.last)
	}
}

func TestClear(t *testing.T) {
	r := newRig(t, State{Dnats: []DNAT{dnat(t, "2001:db8::1", "fd00::1", "80,443", "tcp", "eth0")}})
	if err := r.svc.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if r.fake.Dump() != "" || r.res.Dump() != "" || len(r.store.last.Dnats) != 0 || len(r.svc.List().Dnats) != 0 {
		t.Fatalf("after clear:\n%s", r.snapshot())
	}
}

func TestStartRefusesInvalidState(t *testing.T) {
	d := dnat(t, "203.0.113.43", "10.0.0.101", "25", "tcp", "")
	other := dnat(t, "203.0.113.43", "10.0.0.102", "25", "tcp", "")
	svc := NewService((&rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}).deps())
	if err := svc.Start(ctx, State{Dnats: []DNAT{d, other}}); !errors.Is(err, ErrConflict) {
		t.Fatalf("start with two rules on one port: %v", err)
	}
}

// countsAgree checks the status counts (Stats.ByState, counted from the
// rules) against the listing's statuses, and the dnats' against want.
func countsAgree(t *testing.T, svc *Service, want map[string]int) {
	t.Helper()
	l := svc.List()
	listed := map[string]map[string]int{}
	count := func(kind, status string) {
		if listed[kind] == nil {
			listed[kind] = map[string]int{}
		}
		listed[kind][status]++
	}
	for _, d := range l.Dnats {
		count("dnat", d.Status)
	}
	for _, h := range l.Hairpins {
		count("hairpin", h.Status)
	}
	for range l.Snats {
		count("snat", "active")
	}
	for _, p := range l.PolicyRoutes {
		count("policy_route", p.Status)
	}
	for _, m := range l.Mappings {
		count("mapping", m.Status)
	}
	got := svc.Stats().ByState
	if !reflect.DeepEqual(got, listed) {
		t.Errorf("counted by state %v, the listing says %v", got, listed)
	}
	if want != nil && !reflect.DeepEqual(got["dnat"], want) {
		t.Errorf("dnats by state %v, want %v", got["dnat"], want)
	}
}
