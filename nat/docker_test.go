package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// fakeDocker holds containers in memory.
type fakeDocker map[string]Container

func (f fakeDocker) Container(_ context.Context, ref string) (Container, error) {
	if c, ok := f[ref]; ok {
		return c, nil
	}
	return Container{}, fmt.Errorf("no container named %q: %w", ref, ErrNotFound)
}

func dockerRig(t *testing.T, containers fakeDocker) *rig {
	t.Helper()
	r := &rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}
	deps := r.deps()
	deps.Docker = containers
	r.svc = NewService(deps)
	if err := r.svc.Start(ctx, State{}); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestMappingFollowsContainer(t *testing.T) {
	docker := fakeDocker{"web": {ID: "abc123", Name: "web"}} // stopped
	r := dockerRig(t, docker)
	m, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "web", HostPort: 8080, ContainerPort: 80, Proto: ProtoTCP})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); got != "" {
		t.Fatalf("a stopped container's mapping was installed:\n%s", got)
	}
	if r.res.Dump() != "0.0.0.0:8080/tcp" {
		t.Fatalf("the port is not reserved: %q", r.res.Dump())
	}
	if st := r.svc.List().Mappings[0]; st.Status != "inactive" || !strings.Contains(st.Reason, "not running") {
		t.Fatalf("status %+v", st)
	}
	run := func(ip string) {
		t.Helper()
		c := Container{ID: "abc123", Name: "web", Running: ip != ""}
		if ip != "" {
			c.IP = netip.MustParseAddr(ip)
		}
		if err := r.svc.ContainerChanged(ctx, "web", c, true); err != nil {
			t.Fatal(err)
		}
	}
	run("172.17.0.2")
	if got := r.fake.Dump(); !strings.HasPrefix(got, "dnat tcp 0.0.0.0:8080 -> 172.17.0.2:80\n") {
		t.Fatalf("after start:\n%s", got)
	}
	run("172.17.0.3")
	if got := r.fake.Dump(); !strings.HasPrefix(got, "dnat tcp 0.0.0.0:8080 -> 172.17.0.3:80\n") {
		t.Fatalf("after a new address:\n%s", got)
	}
	run("")
	if got := r.fake.Dump(); got != "" || r.res.Dump() != "0.0.0.0:8080/tcp" {
		t.Fatalf("after stop: kernel %q, held %q", got, r.res.Dump())
	}
	if _, err := r.svc.RemoveMappings(ctx, MappingSelector{ID: m.ID}); err != nil {
		t.Fatal(err)
	}
	if r.res.Dump() != "" || len(r.store.last.Mappings) != 0 {
		t.Fatalf("after rm: held %q, stored %+v", r.res.Dump(), r.store.last.Mappings)
	}
}

func TestMappingWithoutDockerIsUnavailable(t *testing.T) {
	r := newRig(t, State{})
	_, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "web", HostPort: 8080, Proto: ProtoTCP})
	if !errors.Is(err, ErrUnavailable) || ErrStatus(err) != 503 {
		t.Fatalf("got %v", err)
	}
	// A local service needs no Docker.
	if _, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "svc", HostPort: 8080, ContainerPort: 80,
		TargetIP: netip.MustParseAddr("127.0.0.1"), Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}
}

func TestDeletingUDPForwardsFlushesConntrack(t *testing.T) {
	r := newRig(t, State{})
	sys := r.svc.sys.(*NoSystem)
	d := dnat(t, "203.0.113.43", "10.0.0.53", "53", "udp", "")
	if _, _, err := r.svc.AddDNAT(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := r.svc.DeleteDNAT(ctx, d); err != nil {
		t.Fatal(err)
	}
	if len(sys.flushed) != 1 || sys.flushed[0].Endpoint().String() != "203.0.113.43:53/udp" {
		t.Fatalf("flushed %v", sys.flushed)
	}

	// A 1,000-port range is one flush for the whole change, made once the
	// service lock is free, so other requests do not wait for it.
	sys.flushed, sys.flushes = nil, 0
	sys.onFlush = func() {
		if !r.svc.mu.TryLock() {
			t.Error("conntrack flushed under the service lock")
			return
		}
		r.svc.mu.Unlock()
	}
	rtp := dnat(t, "203.0.113.43", "10.0.0.53", "10000-10999", "udp", "")
	if _, _, err := r.svc.AddDNAT(ctx, rtp); err != nil {
		t.Fatal(err)
	}
	if err := r.svc.DeleteDNAT(ctx, rtp); err != nil {
		t.Fatal(err)
	}
	if sys.flushes != 1 || len(sys.flushed) != 1000 || sys.flushed[999].Int.String() != "10.0.0.53:10999" {
		t.Errorf("%d flushes of %d forwards, want 1 of 1000", sys.flushes, len(sys.flushed))
	}
}

func TestParseMappingSpec(t *testing.T) {
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	for spec, want := range map[string]string{
		"8080:80":                   "- 8080 80 - ",
		"100.64.0.10:8080:80":       "100.64.0.10 8080 80 - ",
		"8443:443/tcp":              "- 8443 443 - tcp",
		"53:53/udp":                 "- 53 53 - udp",
		"8080:127.0.0.1:80":         "- 8080 80 127.0.0.1 ",
		"8080":                      "- 8080 0 - ",
		"0:80":                      "- 0 80 - ",
		"10.0.0.1:8080:10.0.0.2:80": "10.0.0.1 8080 80 10.0.0.2 ",
		"[2001:db8::1]:8080:80":     "2001:db8::1 8080 80 - ",
		"[::]:8080:80/udp":          ":: 8080 80 - udp",
		"[::]:8080:[fd00::5]:80":    ":: 8080 80 fd00::5 ",
		"8080:[fd00::5]:80":         "- 8080 80 fd00::5 ",
	} {
		r, err := ParseMappingSpec(spec)
		if err != nil {
			t.Errorf("%q: %v", spec, err)
			continue
		}
		if got := fmt.Sprintf("%s %d %d %s %s", str(r.HostIP), r.HostPort, r.ContainerPort, str(r.TargetIP), r.Proto); got != want {
			t.Errorf("%q = %q, want %q", spec, got, want)
		}
	}
	for spec, want := range map[string]string{
		"1:2:3:4:5":           "5 parts",
		"70000:80":            "not a port number",
		"8080:80/sctp":        "unknown protocol",
		":":                   "not a port number",
		"8080:0":              "container port",
		"a.b:80:80":           "not a port number",
		"8080/":               "unknown protocol",
		"2001:db8::1:8080:80": "an IPv6 address goes in brackets",
		"[::1:8080:80":        "an IPv6 address goes in brackets",
		"[::1]8080:80":        "an IPv6 address goes in brackets",
	} {
		if _, err := ParseMappingSpec(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", spec, err, want)
		}
	}
}

// FuzzMappingSpec: no spec panics the parser or the request check, and
// every refusal is a 400.
func FuzzMappingSpec(f *testing.F) {
	for _, s := range []string{"8080:80", "100.64.0.10:8080:80", "53:53/udp", "8080:127.0.0.1:80", ":", "1:2:3:4:5", "[::]:8080:[fd00::5]:80", "[2001:db8::1]:8080"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := ParseMappingSpec(spec)
		if err != nil {
			if ErrStatus(err) != 400 {
				t.Fatalf("%q: %v is not a 400", spec, err)
			}
			return
		}
		if _, err := r.ToRequest("web"); err != nil && ErrStatus(err) != 400 {
			t.Fatalf("%q: %v is not a 400", spec, err)
		}
	})
}

// A stopped container's mapping whose port was taken at start is reserved
// when the port frees, but not installed until the container runs.
func TestParkedAndInactiveMapping(t *testing.T) {
	m := Mapping{ID: 1, Container: "web", HostIP: netip.IPv4Unspecified(), HostPort: 8080, ContainerPort: 80, Proto: ProtoTCP}
	r := &rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}
	ep := Endpoint{Addr: netip.MustParseAddrPort("0.0.0.0:8080"), Proto: ProtoTCP}
	r.res.busy[ep] = true
	deps := r.deps()
	deps.Docker = fakeDocker{}
	r.svc = NewService(deps)
	if err := r.svc.Start(ctx, State{Mappings: []Mapping{m}}); err != nil {
		t.Fatal(err)
	}
	countsAgree(t, r.svc, nil)
	delete(r.res.busy, ep)
	r.svc.RetryInactive(ctx)
	if r.fake.Dump() != "" || r.res.Dump() != "0.0.0.0:8080/tcp" {
		t.Fatalf("kernel %q, held %q", r.fake.Dump(), r.res.Dump())
	}
	countsAgree(t, r.svc, nil) // parked: reserved, the container down
	if got := r.svc.Stats().ByState["mapping"]; got["inactive"] != 1 {
		t.Errorf("a parked mapping counted %v", got)
	}
	c := Container{ID: "x", Name: "web", Running: true, IP: netip.MustParseAddr("172.17.0.9")}
	if err := r.svc.ContainerChanged(ctx, "web", c, true); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); !strings.HasPrefix(got, "dnat tcp 0.0.0.0:8080 -> 172.17.0.9:80\n") {
		t.Fatalf("after start:\n%s", got)
	}
	countsAgree(t, r.svc, nil)
	if got := r.svc.Stats().ByState["mapping"]; got["active"] != 1 {
		t.Errorf("a running mapping counted %v", got)
	}
}

// A mapping given no host address covers both families when the container
// has both, like docker run -p; one on an IPv6 host address reaches the
// container's IPv6 address; remap and rm move or remove both.
func TestIPv6Mappings(t *testing.T) {
	web := Container{ID: "abc123", Name: "web", Running: true, IP: netip.MustParseAddr("172.17.0.2"), IP6: netip.MustParseAddr("fd00:d0c::2")}
	old := Container{ID: "def456", Name: "old", Running: true, IP: netip.MustParseAddr("172.17.0.3")}
	r := dockerRig(t, fakeDocker{"web": web, "old": old})
	if _, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "web", HostPort: 8080, ContainerPort: 80, Proto: ProtoTCP, BothFamilies: true}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "web", HostIP: netip.MustParseAddr("2001:db8::1"), HostPort: 8081, ContainerPort: 80, Proto: ProtoTCP}); err != nil {
		t.Fatal(err)
	}
	want := `dnat tcp 0.0.0.0:8080 -> 172.17.0.2:80
dnat tcp [::]:8080 -> [fd00:d0c::2]:80
dnat tcp [2001:db8::1]:8081 -> [fd00:d0c::2]:80
`
	if got := r.fake.Dump(); !strings.HasPrefix(got, want) {
		t.Errorf("kernel:\n%s\nwant it to start with\n%s", got, want)
	}
	moved, err := r.svc.Remap(ctx, "web", ProtoTCP, 8080, 9090)
	if err != nil || len(moved) != 2 {
		t.Fatalf("remap: %v %v", moved, err)
	}
	if got := r.fake.Dump(); !strings.Contains(got, "0.0.0.0:9090 -> 172.17.0.2:80") || !strings.Contains(got, "[::]:9090 -> [fd00:d0c::2]:80") || strings.Contains(got, ":8080 ") {
		t.Errorf("kernel after remap:\n%s", got)
	}
	if gone, err := r.svc.RemoveMappings(ctx, MappingSelector{Container: "web", HostPort: 9090, Proto: ProtoTCP}); err != nil || len(gone) != 2 {
		t.Errorf("rm: %v %v", gone, err)
	}
	// A container without IPv6 gets IPv4 alone, and a mapping on an IPv6
	// host address is refused with the reason.
	if _, _, err := r.svc.AddMapping(ctx, MappingRequest{Container: "old", HostPort: 8082, ContainerPort: 80, Proto: ProtoTCP, BothFamilies: true}); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); strings.Contains(got, ":8082 -> [") {
		t.Errorf("a container without IPv6 got an IPv6 mapping:\n%s", got)
	}
	_, _, err = r.svc.AddMapping(ctx, MappingRequest{Container: "old", HostIP: netip.IPv6Unspecified(), HostPort: 8083, ContainerPort: 80, Proto: ProtoTCP})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "has no IPv6 address") {
		t.Errorf("an IPv6 mapping of a container without IPv6: %v", err)
	}
	// The container moves: the IPv6 mapping follows its IPv6 address.
	web.IP6 = netip.MustParseAddr("fd00:d0c::9")
	if err := r.svc.ContainerChanged(ctx, "web", web, true); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); !strings.Contains(got, "[2001:db8::1]:8081 -> [fd00:d0c::9]:80") {
		t.Errorf("kernel after the container moved:\n%s", got)
	}
}

func TestNames(t *testing.T) {
	for ref, ok := range map[string]bool{
		"web": true, "/web": true, "mail-1.example_x": true, "3f2a9c": true,
		"": false, "/": false, "-web": false, ".web": false, "web app": false, "wéb": false, "web/x": false,
	} {
		if err := CheckContainerRef(ref); (err == nil) != ok {
			t.Errorf("CheckContainerRef(%q) = %v, want ok %v", ref, err, ok)
		}
	}
	for name, ok := range map[string]bool{
		"eth0": true, "vmbr0.100": true, "wg_home-1": true, "abcdefghijklmno": true,
		"abcdefghijklmnop": false, "": false, ".": false, "..": false, "eth+": false, "eth 0": false, "eth/0": false,
	} {
		if err := CheckIfName(name); (err == nil) != ok {
			t.Errorf("CheckIfName(%q) = %v, want ok %v", name, err, ok)
		}
	}
}
