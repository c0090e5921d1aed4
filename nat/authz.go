package nat

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// ErrForbidden marks a request its peer may not make: 403.
var ErrForbidden = errors.New("forbidden")

// Forbidden is a request the socket group may not make: only root may (or
// the admin's allow-list lets the group).
type Forbidden struct {
	// Rule names the part of the policy that refused it, such as
	// "ext_ip_not_local".
	Rule string
	// Msg says what was refused and why.
	Msg string
}

func (e *Forbidden) Error() string {
	return e.Msg + " (natmap's rule " + e.Rule + ": only root may do this, see \"Security model\" in the README)"
}

// Unwrap makes every Forbidden an ErrForbidden.
func (e *Forbidden) Unwrap() error { return ErrForbidden }

func forbid(rule, format string, args ...any) error {
	return &Forbidden{Rule: rule, Msg: fmt.Sprintf(format, args...)}
}

// Policy is what the socket group may change; root may change anything.
// A member may forward what arrives at the host for one of its own
// addresses and may not capture or redirect anything else: the host's own
// outgoing traffic, loopback, another host's traffic.
type Policy struct {
	// ExtAllowed are external addresses the group may forward although no
	// interface of this host holds them (addresses routed to the host, a
	// floating address): the admin's allow-list (daemon --group-ext).
	ExtAllowed []netip.Prefix
	// Addrs returns the host's own addresses, each with its interface.
	Addrs func() (map[netip.Addr]string, error)
}

// privileged reports whether the request comes from root. A request
// without known credentials is not.
func privileged(ctx context.Context) bool {
	p, ok := PeerOf(ctx)
	return ok && p.UID == 0
}

// Authorize refuses a rule the peer of ctx may not add (rule is a DNAT,
// Hairpin, SNAT, PolicyRoute or MappingRequest). Removals need no check:
// they capture nothing.
func (p Policy) Authorize(ctx context.Context, rule any) error {
	if privileged(ctx) {
		return nil
	}
	addrs := map[netip.Addr]string{}
	if p.Addrs != nil {
		var err error
		if addrs, err = p.Addrs(); err != nil {
			return fmt.Errorf("listing the host's addresses to check the request: %w", err)
		}
	}
	switch r := rule.(type) {
	case DNAT:
		return p.forwardOf(r, addrs)
	case Hairpin:
		return p.forwardOf(r.dnat(), addrs)
	case MappingRequest:
		if r.HostIP.IsValid() && !r.HostIP.IsUnspecified() {
			if err := p.external("host_ip", r.HostIP, addrs); err != nil {
				return err
			}
		}
		return target("target_ip", r.TargetIP)
	case SNAT:
		return snatAllowed(r, addrs)
	case PolicyRoute:
		if ifname, own := addrs[r.SrcIP]; own {
			return forbid("policy_route_host_addr", "src_ip: %s is this host's own address (on %s): a policy route for it redirects the host's own traffic", r.SrcIP, ifname)
		}
	}
	return nil
}

// forwardOf checks a forward's external address (whatever addresses an
// interface has are the host's own) and its target.
func (p Policy) forwardOf(d DNAT, addrs map[netip.Addr]string) error {
	switch {
	case d.ByInterface() && d.ExtIf == "lo":
		return forbid("ext_ip_loopback", "ext_if: lo is the loopback interface")
	case !d.ByInterface():
		if err := p.external("ext_ip", d.ExtIP, addrs); err != nil {
			return err
		}
	}
	return target("int_ip", d.IntIP)
}

// external: the group forwards only traffic that arrives for one of the
// host's own addresses (or one the admin allowed), never loopback,
// link-local or multicast addresses.
func (p Policy) external(field string, a netip.Addr, addrs map[netip.Addr]string) error {
	switch {
	case a.IsLoopback():
		return forbid("ext_ip_loopback", "%s: %s is a loopback address: a forward there would take over what the host's own programs send to it", field, a)
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsMulticast(), a.IsUnspecified():
		return forbid("ext_ip_special", "%s: %s is a link-local, multicast or unspecified address (such as a cloud metadata service's)", field, a)
	}
	if _, own := addrs[a]; own {
		return nil
	}
	for _, pfx := range p.ExtAllowed {
		if pfx.Contains(a) {
			return nil
		}
	}
	return forbid("ext_ip_not_local", "%s: %s is not an address of this host: forwarding it would capture traffic on its way to another machine (root may, or the admin may allow it with daemon --group-ext)", field, a)
}

// target: the group may not expose a service that listens on loopback
// only (root may: a local service mapping).
func target(field string, a netip.Addr) error {
	if a.IsValid() && a.IsLoopback() {
		return forbid("target_loopback", "%s: %s is a loopback address: forwarding to it exposes a service that listens only on this host", field, a)
	}
	return nil
}

// snatAllowed: a SNAT may not catch the host's own traffic: every source,
// one of the host's own addresses, or a network that holds an address of
// the interface the traffic leaves by (the host's own outgoing traffic
// comes from there).
func snatAllowed(s SNAT, addrs map[netip.Addr]string) error {
	if s.IntNet.Bits() == 0 {
		return forbid("snat_catches_host", "int_ip: %s is every source, the host's own traffic included", s.IntNet)
	}
	for a, ifname := range addrs {
		if !s.IntNet.Contains(a) {
			continue
		}
		if s.IntNet.IsSingleIP() || ifname == s.ExtIf {
			return forbid("snat_catches_host", "int_ip: %s holds %s, this host's own address on %s: the rule would rewrite the host's own traffic", s.IntNet, a, ifname)
		}
	}
	return nil
}

// AuthorizeConfig checks every rule a configuration adds, as if each were
// its own request; entries that do not parse are left to Apply to report.
func (p Policy) AuthorizeConfig(ctx context.Context, c Config) error {
	if privileged(ctx) {
		return nil
	}
	var rules []any
	for _, d := range c.Dnat {
		if r, err := d.ToDNAT(); err == nil {
			rules = append(rules, r)
		}
	}
	for _, h := range c.Hairpin {
		if r, err := h.ToHairpin(); err == nil {
			rules = append(rules, r)
		}
	}
	for _, s := range c.Snat {
		if r, err := s.ToSNAT(); err == nil {
			rules = append(rules, r)
		}
	}
	for _, pr := range c.PolicyRoutes {
		if r, err := pr.ToPolicyRoute(); err == nil {
			rules = append(rules, r)
		}
	}
	for _, m := range c.Docker {
		var req MappingRequest
		req.HostIP, _ = netip.ParseAddr(m.HostIP)
		req.TargetIP, _ = netip.ParseAddr(m.TargetIP)
		rules = append(rules, req)
	}
	for _, r := range rules {
		if err := p.Authorize(ctx, r); err != nil {
			return err
		}
	}
	return nil
}
