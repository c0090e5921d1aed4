package nat

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestHostNeedsFollowTheRules(t *testing.T) {
	r := newRig(t, State{})
	sys := r.svc.sys.(*NoSystem)
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
	if n := last(); !n.LocalnetAll || !n.ForwardHole || n.Docker || len(n.LocalnetTo) != 0 {
		t.Errorf("with a local service on loopback: %+v", n)
	}
	// Docker answering is told, and settles again.
	r.svc.ResettleHost()
	if n := last(); !n.Docker || !n.ForwardHole {
		t.Errorf("after Docker answered: %+v", n)
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

func TestForwardByInterfaceAndOneAddressClash(t *testing.T) {
	r := newRig(t, State{})
	byIf := DnatConfig{IntIP: "10.0.0.101", Ports: "443", ExtIf: ptr("ext0")}
	d, err := byIf.ToDNAT()
	if err != nil || !d.ByInterface() || d.ExtIP != netip.IPv4Unspecified() {
		t.Fatalf("a dnat by interface: %+v %v", d, err)
	}
	if _, _, err := r.svc.AddDNAT(ctx, d); err != nil {
		t.Fatal(err)
	}
	before := r.snapshot()
	_, _, err = r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.102", "443", "tcp", ""))
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "already forwarded for 0.0.0.0") {
		t.Errorf("a forward of one address on the same port: %v", err)
	}
	if after := r.snapshot(); after != before {
		t.Errorf("a refused forward changed things:\n%s\nwant\n%s", after, before)
	}
	// Another port, the other protocol or family: no clash.
	for _, other := range []DNAT{dnat(t, "203.0.113.43", "10.0.0.102", "444", "tcp", ""), dnat(t, "203.0.113.43", "10.0.0.102", "443", "udp", ""),
		dnat(t, "2001:db8::43", "fd00::102", "443", "tcp", "")} {
		if _, _, err := r.svc.AddDNAT(ctx, other); err != nil {
			t.Errorf("%s: %v", other, err)
		}
	}
	// A state that holds both still loads.
	st := r.svc.State()
	st.Dnats = append(st.Dnats, dnat(t, "203.0.113.43", "10.0.0.103", "443", "tcp", ""))
	newRig(t, st)
	// Without an interface there is no address.
	if _, err := (DnatConfig{IntIP: "10.0.0.101", Ports: "443"}).ToDNAT(); err == nil || !strings.Contains(err.Error(), "give ext_if alone") {
		t.Errorf("a dnat with neither: %v", err)
	}
}

func ptr(s string) *string { return &s }

// A hairpin by interface follows the interface's addresses: a derived
// forward (and hairpin element) per address, changed as addresses come
// and go, none persisted, none reserved.
func TestHairpinByInterfaceFollowsAddresses(t *testing.T) {
	r := newRig(t, State{})
	r.router.ifaddrs = map[string][]netip.Addr{"ext0": {netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("2001:db8::1")}}
	d, err := (DnatConfig{IntIP: "10.0.0.101", Ports: "443", ExtIf: ptr("ext0")}).ToDNAT()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.svc.AddDNAT(ctx, d); err != nil {
		t.Fatal(err)
	}
	h, err := (HairpinConfig{IntIP: "10.0.0.101", Ports: "443", ExtIf: ptr("ext0")}).ToHairpin()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.svc.AddHairpin(ctx, h); err != nil {
		t.Fatal(err)
	}
	held := r.res.Dump()
	if kernel := r.fake.Dump(); !strings.Contains(kernel, "dnat tcp 203.0.113.1:443 -> 10.0.0.101:443") || strings.Contains(kernel, "2001:db8::1") {
		t.Errorf("kernel with the hairpin by interface:\n%s", kernel)
	}
	r.router.ifaddrs["ext0"] = []netip.Addr{netip.MustParseAddr("203.0.113.2")}
	r.svc.RefreshInterfaces(ctx)
	kernel := r.fake.Dump()
	if !strings.Contains(kernel, "203.0.113.2:443 -> 10.0.0.101:443") || strings.Contains(kernel, "203.0.113.1:443") {
		t.Errorf("kernel after the address changed:\n%s", kernel)
	}
	if r.res.Dump() != held {
		t.Errorf("derived forwards were reserved: %s, want %s", r.res.Dump(), held)
	}
	if st := r.svc.State(); len(st.Hairpins) != 1 || st.Hairpins[0].ExtIf != "ext0" || len(st.Dnats) != 1 {
		t.Errorf("state: %+v", st)
	}
	// A restart derives them again.
	again := newRig(t, r.svc.State())
	again.router.ifaddrs = r.router.ifaddrs
	again.svc.RefreshInterfaces(ctx)
	if kernel := again.fake.Dump(); !strings.Contains(kernel, "203.0.113.2:443 -> 10.0.0.101:443") {
		t.Errorf("kernel after a restart:\n%s", kernel)
	}
	if err := r.svc.DeleteHairpin(ctx, h); err != nil {
		t.Fatal(err)
	}
	if kernel := r.fake.Dump(); strings.Contains(kernel, "203.0.113.2:443") {
		t.Errorf("kernel after the hairpin went:\n%s", kernel)
	}
}
