package nat

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func TestPolicy(t *testing.T) {
	member := WithPeer(context.Background(), Peer{UID: 1000, PID: 2})
	root := WithPeer(context.Background(), Peer{UID: 0, PID: 1})
	unknown := context.Background()
	p := FakePolicy()
	mapping := func(host, target string) MappingRequest {
		var m MappingRequest
		m.HostIP, _ = netip.ParseAddr(host)
		m.TargetIP, _ = netip.ParseAddr(target)
		return m
	}
	for _, c := range []struct {
		name string
		rule any
		want string // the refusing rule, "" when allowed
	}{
		{"the mail server's dnat", dnat(t, "203.0.113.43", "10.0.0.101", "25,465", "tcp", ""), ""},
		{"the tailscale dnat", dnat(t, "100.64.0.10", "10.0.1.20", "80,443", "tcp", ""), ""},
		{"an allowed routed address", dnat(t, "198.51.100.5", "10.0.0.101", "80", "tcp", ""), ""},
		{"another host's address", dnat(t, "198.51.100.77", "10.0.0.101", "80", "tcp", ""), "ext_ip_not_local"},
		{"the DNS resolver", dnat(t, "192.0.2.53", "10.0.0.101", "53", "udp", ""), "ext_ip_not_local"},
		{"cloud metadata", dnat(t, "169.254.169.254", "10.0.0.101", "80", "tcp", ""), "ext_ip_special"},
		{"loopback", dnat(t, "127.0.0.1", "10.0.0.101", "5432", "tcp", ""), "ext_ip_loopback"},
		{"to a loopback service", dnat(t, "203.0.113.43", "127.0.0.1", "5432", "tcp", ""), "target_loopback"},
		{"the mail server's hairpin", hairpin(t, "203.0.113.43", "10.0.0.101", "25", "tcp", "10.0.0.0/24"), ""},
		{"a dnat by interface", DNAT{ExtIP: netip.IPv4Unspecified(), ExtIf: "vmbr0", IntIP: netip.MustParseAddr("10.0.0.101")}, ""},
		{"a hairpin by interface", Hairpin{ExtIP: netip.IPv4Unspecified(), ExtIf: "vmbr0", IntIP: netip.MustParseAddr("10.0.0.101")}, ""},
		{"a dnat by the loopback interface", DNAT{ExtIP: netip.IPv4Unspecified(), ExtIf: "lo", IntIP: netip.MustParseAddr("10.0.0.101")}, "ext_ip_loopback"},
		{"a hairpin of another host's address", hairpin(t, "192.0.2.1", "10.0.0.101", "25", "tcp", "10.0.0.0/24"), "ext_ip_not_local"},
		{"the mail server's snat", snat(t, "10.0.0.101", "vmbr0", "203.0.113.43"), ""},
		{"the tailscale snat (the LAN holds the host's LAN address)", snat(t, "10.0.1.0/24", "tailscale0", "100.64.0.10"), ""},
		{"every source", snat(t, "0.0.0.0/0", "vmbr0", "203.0.113.43"), "snat_catches_host"},
		{"the host's own address", snat(t, "10.0.0.1", "vmbr0", "203.0.113.43"), "snat_catches_host"},
		{"the WAN network", snat(t, "203.0.113.0/24", "vmbr0", "203.0.113.43"), "snat_catches_host"},
		{"a container mapping", mapping("", ""), ""},
		{"a mapping on a host address", mapping("203.0.113.43", ""), ""},
		{"a mapping on loopback", mapping("127.0.0.1", ""), "ext_ip_loopback"},
		{"a local service on loopback", mapping("", "127.0.0.1"), "target_loopback"},
		{"a local service on the LAN", mapping("", "10.0.0.102"), ""},
		{"a policy route of another host", PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.101"), Via: netip.MustParseAddr("10.0.0.254"), Table: 100}, ""},
		{"a policy route of the host's own address", PolicyRoute{SrcIP: netip.MustParseAddr("10.0.0.1"), Via: netip.MustParseAddr("10.0.0.254"), Table: 100}, "policy_route_host_addr"},
	} {
		err := p.Authorize(member, c.rule)
		var fb *Forbidden
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused to a member: %v", c.name, err)
		case c.want != "" && (!errors.As(err, &fb) || fb.Rule != c.want || !errors.Is(err, ErrForbidden)):
			t.Errorf("%s: %v, want refused by %s", c.name, err, c.want)
		}
		if c.want != "" {
			if err := p.Authorize(root, c.rule); err != nil {
				t.Errorf("%s: refused to root: %v", c.name, err)
			}
			if err := p.Authorize(unknown, c.rule); err == nil {
				t.Errorf("%s: allowed to a peer of unknown credentials", c.name)
			}
		}
	}
}
