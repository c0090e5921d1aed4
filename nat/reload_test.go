package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func reloadStates(t *testing.T) (before, after State) {
	t.Helper()
	route := func(src, via string, table uint32) PolicyRoute {
		return PolicyRoute{SrcIP: netip.MustParseAddr(src), Via: netip.MustParseAddr(via), Table: table}
	}
	before = State{
		Dnats: []DNAT{
			dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", ""),
			dnat(t, "203.0.113.44", "10.0.0.102", "53", "udp", ""),
		},
		Snats:        []SNAT{{IntNet: netip.MustParsePrefix("10.0.0.0/24"), ExtIP: netip.MustParseAddr("203.0.113.43"), ExtIf: "eth0"}},
		PolicyRoutes: []PolicyRoute{route("10.0.0.101", "10.0.0.1", 100), route("10.0.0.102", "10.0.0.2", 101)},
	}
	after = State{
		Dnats: []DNAT{
			dnat(t, "203.0.113.43", "10.0.0.101", "25,587", "tcp", ""),
		},
		PolicyRoutes: []PolicyRoute{route("10.0.0.101", "10.0.0.1", 100), route("10.0.0.103", "10.0.0.3", 102)},
	}
	return before, after
}

func TestReloadReplacesEverythingInOneChange(t *testing.T) {
	before, after := reloadStates(t)
	r := newRig(t, before)
	// A port held by us stays held: were it reserved again, the fake
	// reserver would refuse and the forward would show inactive.
	txns := r.fake.Transactions
	if err := r.svc.Reload(ctx, after); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Transactions - txns; got != 1 {
		t.Errorf("reload took %d kernel transactions, want 1", got)
	}
	want := newRig(t, after)
	if got, w := r.fake.Dump(), want.fake.Dump(); got != w {
		t.Errorf("kernel after reload:\n%s\nwant as after a fresh start:\n%s", got, w)
	}
	if got, w := r.res.Dump(), want.res.Dump(); got != w {
		t.Errorf("reserved after reload: %s, want %s", got, w)
	}
	if got, w := r.router.Dump(), want.router.Dump(); got != w {
		t.Errorf("routes after reload: %s, want %s", got, w)
	}
	if st := r.svc.Stats(); st.Inactive != 0 {
		t.Errorf("%d forwards inactive after reload, want 0 (a kept port was reserved again?)", st.Inactive)
	}
	after.NextMappingID = 1 // as the service normalises it
	if got, w := fmt.Sprint(r.store.last), fmt.Sprint(after); got != w {
		t.Errorf("saved state:\n%s\nwant\n%s", got, w)
	}
}

func TestReloadKeepsBusyPortsInactive(t *testing.T) {
	before, after := reloadStates(t)
	r := newRig(t, before)
	busy := Endpoint{Proto: ProtoTCP, Addr: netip.MustParseAddrPort("203.0.113.43:587")}
	r.res.busy[busy] = true
	if err := r.svc.Reload(ctx, after); err != nil {
		t.Fatal(err)
	}
	if st := r.svc.Stats(); st.Inactive != 1 || st.Forwards != 2 {
		t.Fatalf("after reload: %d forwards, %d inactive; want 2 and 1", st.Forwards, st.Inactive)
	}
	if strings.Contains(r.fake.Dump(), ":587") {
		t.Errorf("the busy port is in the kernel:\n%s", r.fake.Dump())
	}
	// The strict form (apply) refuses the whole change instead.
	r2 := newRig(t, before)
	r2.res.busy[busy] = true
	snap := r2.snapshot()
	unlock := r2.svc.lock()
	err := r2.svc.replaceLocked(ctx, after, true)
	unlock()
	if err == nil || !strings.Contains(err.Error(), "203.0.113.43:587") {
		t.Fatalf("strict replace with a busy port: %v, want an error naming it", err)
	}
	if got := r2.snapshot(); got != snap {
		t.Fatalf("a refused replace changed things:\n%s\nwant\n%s", got, snap)
	}
}

func TestReloadFailuresChangeNothing(t *testing.T) {
	before, after := reloadStates(t)
	conflict := after
	conflict.Dnats = append(conflict.Dnats[:1:1], dnat(t, "203.0.113.43", "10.0.0.109", "25", "tcp", ""))
	for _, tc := range []struct {
		name  string
		st    State
		setup func(*rig)
	}{
		{"backend fails", after, func(r *rig) { r.fake.FailNext = errors.New("netlink: no buffer space") }},
		{"store fails", after, func(r *rig) { r.store.failNext = errors.New("disk full") }},
		{"conflicting rules", conflict, func(*rig) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, before)
			snap := r.snapshot()
			tc.setup(r)
			if err := r.svc.Reload(ctx, tc.st); err == nil {
				t.Fatal("reload succeeded, want an error")
			}
			if got := r.snapshot(); got != snap {
				t.Fatalf("a failed reload changed things:\n%s\nwant\n%s", got, snap)
			}
		})
	}
}

// A change requested while a reload reads the state waits for the reload
// and then applies: the reload never reverts an acknowledged change.
func TestReloadWithSerializesChanges(t *testing.T) {
	before, after := reloadStates(t)
	r := newRig(t, before)
	late := dnat(t, "203.0.113.45", "10.0.0.105", "80", "tcp", "")
	done := make(chan error, 1)
	err := r.svc.ReloadWith(ctx, func() (State, error) {
		go func() {
			_, _, err := r.svc.AddDNAT(ctx, late)
			done <- err
		}()
		// Were the state read outside the lock, the change would go
		// through now and the reload would then revert it.
		select {
		case err := <-done:
			t.Errorf("a change went through while the reload read the state (err %v)", err)
			done <- err
		case <-time.After(200 * time.Millisecond):
		}
		return after, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range r.svc.State().Dnats {
		found = found || d.ID() == late.ID()
	}
	if !found {
		t.Errorf("the change made during the reload is gone: %+v", r.svc.State().Dnats)
	}
}
