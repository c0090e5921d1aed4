package nat

import (
	"net/netip"
	"strings"
	"testing"
)

func TestHostNeedsFollowTheRules(t *testing.T) {
	r := newRig(t, State{})
	sys := r.svc.sys.(*noSystem)
	last := func() HostNeeds {
		t.Helper()
		if len(sys.settled) == 0 {
			t.Fatal("never settled")
		}
		return sys.settled[len(sys.settled)-1]
	}
	if n := last(); n.LocalnetAll || n.ForwardHole || len(n.LocalnetTo) > 0 {
		t.Errorf("with no rules: %+v", n)
	}
	local := MappingRequest{Container: "svc", HostPort: 8080, ContainerPort: 80, TargetIP: netip.MustParseAddr("127.0.0.1"), Proto: ProtoTCP}
	if _, _, err := r.svc.AddMapping(ctx, local); err != nil {
		t.Fatal(err)
	}
	if n := last(); !n.LocalnetAll || !n.ForwardHole || len(n.LocalnetTo) != 0 {
		t.Errorf("with a local service on loopback: %+v", n)
	}
	calls := len(sys.settled)
	web := dnat(t, "203.0.113.43", "10.0.0.101", "80", "tcp", "")
	if _, _, err := r.svc.AddDNAT(ctx, web); err != nil {
		t.Fatal(err)
	}
	if len(sys.settled) != calls {
		t.Errorf("a change that needs nothing new settled again: %+v", sys.settled[calls:])
	}
	host := MappingRequest{Container: "lan", HostPort: 8081, ContainerPort: 80, TargetIP: netip.MustParseAddr("10.0.0.102"), Proto: ProtoTCP}
	if _, _, err := r.svc.AddMapping(ctx, host); err != nil {
		t.Fatal(err)
	}
	if n := last(); !n.LocalnetAll || len(n.LocalnetTo) != 1 || n.LocalnetTo[0].String() != "10.0.0.102" {
		t.Errorf("with a host-wide mapping: %+v", n)
	}
	if _, err := r.svc.RemoveMappings(ctx, MappingSelector{Container: "svc"}); err != nil {
		t.Fatal(err)
	}
	if n := last(); n.LocalnetAll || !n.ForwardHole {
		t.Errorf("after the local service went: %+v", n)
	}
	// A dnat to loopback needs it as much as a mapping does.
	if _, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "127.0.0.1", "8443:443", "tcp", "")); err != nil {
		t.Fatal(err)
	}
	if n := last(); !n.LocalnetAll {
		t.Errorf("with a dnat to 127.0.0.1: %+v", n)
	}
	if err := r.svc.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if n := last(); n.LocalnetAll || n.ForwardHole || len(n.LocalnetTo) > 0 {
		t.Errorf("after clear: %+v", n)
	}
}

func TestMappingToIPv6LoopbackIsRefused(t *testing.T) {
	r := newRig(t, State{})
	_, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "svc", HostIP: netip.IPv6Unspecified(), HostPort: 8080,
		ContainerPort: 80, TargetIP: netip.IPv6Loopback(), Proto: ProtoTCP})
	if err == nil || !strings.Contains(err.Error(), "IPv6 has no route_localnet") {
		t.Errorf("a mapping to ::1: %v", err)
	}
}
