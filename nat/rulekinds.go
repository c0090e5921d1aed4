package nat

import (
	"cmp"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"
)

// SNAT rewrites the source address of new connections from internal hosts
// that leave through one interface: to ExtIP, or, without one, to the
// interface's address at the time (masquerade), which follows a dynamic
// address.
type SNAT struct {
	// IntNet is the internal host (a /32 or /128) or network.
	IntNet netip.Prefix `json:"int_ip"`
	// ExtIP is the source address given to the traffic; the zero Addr
	// (empty in JSON) masquerades.
	ExtIP netip.Addr `json:"ext_ip"`
	// ExtIf is the interface the traffic leaves by.
	ExtIf string `json:"ext_if"`
}

// SNATID identifies a SNAT rule: the traffic it matches.
type SNATID struct {
	// IntNet is the rule's source network.
	IntNet netip.Prefix
	// ExtIf is the rule's output interface.
	ExtIf string
}

// ID returns the rule's identity.
func (s SNAT) ID() SNATID { return SNATID{IntNet: s.IntNet, ExtIf: s.ExtIf} }

// Masquerade reports whether the rule takes the interface's address.
func (s SNAT) Masquerade() bool { return !s.ExtIP.IsValid() }

// To is the source the rule gives: the address, or "masquerade".
func (s SNAT) To() string {
	if s.Masquerade() {
		return "masquerade"
	}
	return s.ExtIP.String()
}

func (s SNAT) String() string {
	if s.Masquerade() {
		return fmt.Sprintf("masquerade from %s out %s", PrefixString(s.IntNet), s.ExtIf)
	}
	return fmt.Sprintf("snat from %s out %s to %s", PrefixString(s.IntNet), s.ExtIf, s.ExtIP)
}

// Validate checks a SNAT rule; errors name the field.
func (s SNAT) Validate() error {
	if !s.IntNet.IsValid() {
		return FieldErr("int_ip", "missing address")
	}
	if !s.Masquerade() {
		if err := checkHostAddr("ext_ip", s.ExtIP); err != nil {
			return err
		}
		if s.IntNet.Addr().Is4() != s.ExtIP.Is4() {
			return FieldErr("ext_ip", "%s and int_ip %s are of different IP versions", s.ExtIP, PrefixString(s.IntNet))
		}
	}
	if s.ExtIf == "" {
		return FieldErr("ext_if", "missing: SNAT needs the interface the traffic leaves by")
	}
	if err := CheckIfName(s.ExtIf); err != nil {
		return &FieldError{Field: "ext_if", Msg: err.Error()}
	}
	return nil
}

// PrefixString writes a single address without its /32 or /128.
func PrefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// ParsePrefix parses an address or a CIDR for the named field; the CIDR's
// host bits must be zero.
func ParsePrefix(field, s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, FieldErr(field, "missing address")
	}
	if !strings.Contains(s, "/") {
		a, err := ParseAddr(field, s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, FieldErr(field, "%q is not an address or CIDR", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, FieldErr(field, "%s has host bits set (did you mean %s?)", s, p.Masked())
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)), nil
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// Hairpin lets internal hosts reach a forwarded service through the
// external address: it installs the forwards (shared with a DNAT on the same
// ports) and masquerades connections from LanCIDR to the service, so the
// service answers through this host. Outside clients keep their address.
type Hairpin struct {
	// ExtIP is the external address.
	ExtIP netip.Addr `json:"ext_ip"`
	// IntIP is the service's internal address.
	IntIP netip.Addr `json:"int_ip"`
	// Ports lists the external ports and where each goes.
	Ports PortList `json:"ports"`
	// Proto is tcp or udp.
	Proto Proto `json:"proto"`
	// LanCIDR is the network whose connections are masqueraded; by default
	// the connected network of IntIP.
	LanCIDR netip.Prefix `json:"lan_cidr"`
	// ExtIf, with ExtIP the unspecified address, makes the hairpin of a
	// forward by interface: internal hosts reach the service through
	// whatever addresses the interface has, now or later.
	ExtIf string `json:"ext_if,omitempty"`
}

// HairpinID identifies a hairpin rule: everything but ports and LAN.
type HairpinID struct {
	// ExtIP is the rule's external address.
	ExtIP netip.Addr
	// IntIP is the rule's internal address.
	IntIP netip.Addr
	// Proto is the rule's protocol.
	Proto Proto
	// ExtIf is the interface of a hairpin by interface.
	ExtIf string
}

// ID returns the rule's identity.
func (h Hairpin) ID() HairpinID {
	return HairpinID{ExtIP: h.ExtIP, IntIP: h.IntIP, Proto: h.Proto, ExtIf: h.ExtIf}
}

func (h Hairpin) String() string {
	ext := h.ExtIP.String()
	if h.dnat().ByInterface() {
		ext = h.ExtIf + "'s addresses"
	}
	s := fmt.Sprintf("hairpin %s %s ports %s -> %s", h.Proto, ext, h.Ports, h.IntIP)
	if h.LanCIDR.IsValid() {
		s += " for " + h.LanCIDR.String()
	}
	return s
}

// dnat is the forwarding part of a hairpin.
func (h Hairpin) dnat() DNAT {
	return DNAT{ExtIP: h.ExtIP, IntIP: h.IntIP, Ports: h.Ports, Proto: h.Proto, ExtIf: h.ExtIf}
}

// Validate checks a hairpin rule; errors name the field. LanCIDR may still
// be unset (the service fills it in).
func (h Hairpin) Validate() error {
	if err := h.dnat().Validate(); err != nil {
		return err
	}
	if h.LanCIDR.IsValid() && h.LanCIDR.Addr().Is4() != h.IntIP.Is4() {
		return FieldErr("lan_cidr", "%s and int_ip %s are of different IP versions", h.LanCIDR, h.IntIP)
	}
	return nil
}

// Masquerades are the masquerade rules that carry out hairpins where the
// masquerade comes after DNAT (iptables' POSTROUTING): for each hairpinned
// forward that forwardOf finds (one not installed has no rule), its LAN's
// connections to the forward's target; consecutive target ports of one
// LAN, target and protocol in one rule.
func Masquerades(hs []Hairpinned, forwardOf func(Endpoint) (Forward, bool)) []Masquerade {
	var ms []Masquerade
	for _, h := range hs {
		if f, ok := forwardOf(h.Endpoint); ok {
			p := f.Int.Port()
			ms = append(ms, Masquerade{Src: h.LAN, Dst: f.Int.Addr(), Proto: f.Proto, From: p, To: p})
		}
	}
	slices.SortFunc(ms, func(a, b Masquerade) int {
		return cmp.Or(a.Dst.Compare(b.Dst), cmp.Compare(a.Proto, b.Proto), a.Src.Addr().Compare(b.Src.Addr()),
			cmp.Compare(a.Src.Bits(), b.Src.Bits()), cmp.Compare(a.From, b.From))
	})
	var out []Masquerade
	for _, m := range ms {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Src == m.Src && last.Dst == m.Dst && last.Proto == m.Proto && int(m.From) <= int(last.To)+1 {
				last.To = max(last.To, m.To)
				continue
			}
		}
		out = append(out, m)
	}
	return out
}

// Hairpinned is one forward of a hairpin: connections from LAN to the
// forward's external endpoint are masqueraded.
type Hairpinned struct {
	// LAN is the hairpin's network.
	LAN netip.Prefix
	// Endpoint is the forward's external address, port and protocol.
	Endpoint
}

func (h Hairpinned) String() string { return fmt.Sprintf("hairpin from %s to %s", h.LAN, h.Endpoint) }

// hairpinned lists h's forwards of ports as Hairpinned.
func (h Hairpin) hairpinned(fs []Forward) []Hairpinned {
	if h.dnat().ByInterface() {
		return nil // its elements are the derived forwards' (derive)
	}
	out := make([]Hairpinned, len(fs))
	for i, f := range fs {
		out[i] = Hairpinned{LAN: h.LanCIDR, Endpoint: f.Endpoint()}
	}
	return out
}

// Masquerade rewrites the source of natmap-forwarded connections from Src
// to Dst:From-To, so the internal host answers through this host.
type Masquerade struct {
	// Src is the network whose connections are rewritten.
	Src netip.Prefix
	// Dst is the internal host.
	Dst netip.Addr
	// Proto is the protocol.
	Proto Proto
	// From and To are the internal ports.
	From, To uint16
}

func (m Masquerade) String() string {
	return fmt.Sprintf("masquerade %s from %s to %s port %s", m.Proto, m.Src, m.Dst, portSpan(m.From, m.To))
}

// PolicyRoute sends traffic from SrcIP through Via, with routing table
// Table: `ip rule from SRC lookup TABLE`, a default route via VIA in TABLE,
// and the main table's connected routes copied into TABLE.
type PolicyRoute struct {
	// SrcIP is the source address whose traffic is routed.
	SrcIP netip.Addr `json:"src_ip"`
	// Via is the gateway.
	Via netip.Addr `json:"via"`
	// Table is the routing table number.
	Table uint32 `json:"table"`
}

func (p PolicyRoute) String() string {
	return fmt.Sprintf("policy route from %s via %s table %d", p.SrcIP, p.Via, p.Table)
}

// tableClash is the rule that a routing table has one gateway: an error
// naming the route of others that sends p's table via another gateway,
// or nil.
func tableClash(p PolicyRoute, others iter.Seq[PolicyRoute]) error {
	for q := range others {
		if q.Table == p.Table && q.Via != p.Via {
			return fmt.Errorf("table %d already routes via %s (%s): %w", p.Table, q.Via, q, ErrConflict)
		}
	}
	return nil
}

// Validate checks a policy route; errors name the field.
func (p PolicyRoute) Validate() error {
	if err := checkHostAddr("src_ip", p.SrcIP); err != nil {
		return err
	}
	if err := checkHostAddr("via", p.Via); err != nil {
		return err
	}
	if p.SrcIP.Is4() != p.Via.Is4() {
		return FieldErr("via", "%s and src_ip %s are of different IP versions", p.Via, p.SrcIP)
	}
	switch p.Table {
	case 0:
		return FieldErr("table", "0 is not a routing table (use 1-252 or 256 and above)")
	case 253, 254, 255:
		return FieldErr("table", "%d is reserved (253 default, 254 main, 255 local); use 1-252 or 256 and above", p.Table)
	}
	return nil
}
