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
	r := &rig{fake: NewFake(), res: newFakeReserver(), store: &memStore{}}
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
	if r.res.dump() != "0.0.0.0:8080/tcp" {
		t.Fatalf("the port is not reserved: %q", r.res.dump())
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
	if got := r.fake.Dump(); got != "" || r.res.dump() != "0.0.0.0:8080/tcp" {
		t.Fatalf("after stop: kernel %q, held %q", got, r.res.dump())
	}
	if _, err := r.svc.RemoveMappings(ctx, MappingSelector{ID: m.ID}); err != nil {
		t.Fatal(err)
	}
	if r.res.dump() != "" || len(r.store.last.Mappings) != 0 {
		t.Fatalf("after rm: held %q, stored %+v", r.res.dump(), r.store.last.Mappings)
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
	sys := r.svc.sys.(*noSystem)
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
		if _, err := r.toRequest("web"); err != nil && ErrStatus(err) != 400 {
			t.Fatalf("%q: %v is not a 400", spec, err)
		}
	})
}

// A stopped container's mapping whose port was taken at start is reserved
// when the port frees, but not installed until the container runs.
func TestParkedAndInactiveMapping(t *testing.T) {
	m := Mapping{ID: 1, Container: "web", HostIP: netip.IPv4Unspecified(), HostPort: 8080, ContainerPort: 80, Proto: ProtoTCP}
	r := &rig{fake: NewFake(), res: newFakeReserver(), store: &memStore{}}
	ep := Endpoint{Addr: netip.MustParseAddrPort("0.0.0.0:8080"), Proto: ProtoTCP}
	r.res.busy[ep] = true
	deps := r.deps()
	deps.Docker = fakeDocker{}
	r.svc = NewService(deps)
	if err := r.svc.Start(ctx, State{Mappings: []Mapping{m}}); err != nil {
		t.Fatal(err)
	}
	delete(r.res.busy, ep)
	r.svc.RetryInactive(ctx)
	if r.fake.Dump() != "" || r.res.dump() != "0.0.0.0:8080/tcp" {
		t.Fatalf("kernel %q, held %q", r.fake.Dump(), r.res.dump())
	}
	c := Container{ID: "x", Name: "web", Running: true, IP: netip.MustParseAddr("172.17.0.9")}
	if err := r.svc.ContainerChanged(ctx, "web", c, true); err != nil {
		t.Fatal(err)
	}
	if got := r.fake.Dump(); !strings.HasPrefix(got, "dnat tcp 0.0.0.0:8080 -> 172.17.0.9:80\n") {
		t.Fatalf("after start:\n%s", got)
	}
}
