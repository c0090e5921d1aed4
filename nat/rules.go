package nat

import (
	"fmt"
	"maps"
	"net/netip"
	"strings"
)

// DNAT forwards ports of an external address to an internal host. Rules with
// the same ID (addresses, protocol and interface) are one rule whose Ports
// is the union of what was added.
type DNAT struct {
	// ExtIP is the address clients connect to.
	ExtIP netip.Addr `json:"ext_ip"`
	// IntIP is the internal host the traffic is forwarded to.
	IntIP netip.Addr `json:"int_ip"`
	// Ports lists the external ports and where each goes.
	Ports PortList `json:"ports"`
	// Proto is tcp or udp.
	Proto Proto `json:"proto"`
	// ExtIf, when set, limits the rule to traffic arriving on this interface.
	ExtIf string `json:"ext_if,omitempty"`
	// PreserveSrcIP is kept for clients of the earlier API. natmap never
	// masquerades forwarded traffic, so the source address is always kept.
	PreserveSrcIP bool `json:"preserve_src_ip,omitempty"`
}

// DNATID identifies a DNAT rule: everything but its ports.
type DNATID struct {
	// ExtIP is the rule's external address.
	ExtIP netip.Addr
	// IntIP is the rule's internal address.
	IntIP netip.Addr
	// Proto is the rule's protocol.
	Proto Proto
	// ExtIf is the rule's interface, or "".
	ExtIf string
}

// ID returns the rule's identity.
func (d DNAT) ID() DNATID {
	return DNATID{ExtIP: d.ExtIP, IntIP: d.IntIP, Proto: d.Proto, ExtIf: d.ExtIf}
}

func (d DNAT) String() string {
	if d.ByInterface() {
		return fmt.Sprintf("%s %s's addresses ports %s -> %s", d.Proto, d.ExtIf, d.Ports, d.IntIP)
	}
	s := fmt.Sprintf("%s %s ports %s -> %s", d.Proto, d.ExtIP, d.Ports, d.IntIP)
	if d.ExtIf != "" {
		s += " on " + d.ExtIf
	}
	return s
}

// ByInterface reports whether the rule forwards whatever addresses ExtIf
// has (ExtIP is then the unspecified address of IntIP's family): a
// dynamic WAN address needs no change to the rule.
func (d DNAT) ByInterface() bool { return d.ExtIf != "" && d.ExtIP.IsUnspecified() }

// Validate checks a rule as a whole; errors name the field at fault.
func (d DNAT) Validate() error {
	if d.ExtIP.IsUnspecified() && d.ExtIf == "" {
		return FieldErr("ext_ip", "%s is not a specific address (give ext_if alone to forward every address of an interface)", d.ExtIP)
	}
	if !d.ByInterface() {
		if err := checkHostAddr("ext_ip", d.ExtIP); err != nil {
			return err
		}
	}
	if err := checkHostAddr("int_ip", d.IntIP); err != nil {
		return err
	}
	if d.ExtIP.Is4() != d.IntIP.Is4() {
		return FieldErr("int_ip", "%s and ext_ip %s are of different IP versions", d.IntIP, d.ExtIP)
	}
	if len(d.Ports) == 0 {
		return FieldErr("ports", "the list is empty")
	}
	if d.Proto != ProtoTCP && d.Proto != ProtoUDP {
		return FieldErr("proto", "unknown protocol %s (want tcp or udp)", d.Proto)
	}
	if d.ExtIf != "" {
		if err := CheckIfName(d.ExtIf); err != nil {
			return &FieldError{Field: "ext_if", Msg: err.Error()}
		}
	}
	return nil
}

func checkHostAddr(field string, a netip.Addr) error {
	switch {
	case !a.IsValid():
		return FieldErr(field, "missing address")
	case a.Zone() != "":
		return FieldErr(field, "%s: zoned addresses are not supported", a)
	case a.IsUnspecified():
		return FieldErr(field, "%s is not a specific address", a)
	case a.IsMulticast():
		return FieldErr(field, "%s is a multicast address", a)
	}
	return nil
}

// CheckIfName accepts a Linux interface name: 1-15 bytes of letters, digits
// and "_.-", not "." or "..". Wildcards such as iptables' "eth+" are refused.
func CheckIfName(name string) error {
	switch {
	case len(name) > 15:
		return fmt.Errorf("interface name %q is %d bytes long (the kernel allows 15)", name, len(name))
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%q is not an interface name", name)
	case !nameChars(name):
		return fmt.Errorf("interface name %q has characters other than letters, digits and _.-", name)
	}
	return nil
}

// ParseAddr parses a host address for the named field. IPv4-mapped IPv6
// addresses are unmapped.
func ParseAddr(field, s string) (netip.Addr, error) {
	if strings.TrimSpace(s) == "" {
		return netip.Addr{}, FieldErr(field, "missing address")
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, FieldErr(field, "%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

// Forward is one kernel forward: an external address, port and protocol
// (optionally only on one interface) and the internal address and port.
type Forward struct {
	// ExtIf limits the forward to one input interface when set.
	ExtIf string
	// Proto is the protocol.
	Proto Proto
	// Ext is the external address and port.
	Ext netip.AddrPort
	// Int is the internal address and port.
	Int netip.AddrPort
}

func (f Forward) String() string {
	s := fmt.Sprintf("dnat %s %s -> %s", f.Proto, f.Ext, f.Int)
	if f.ExtIf != "" {
		s += " iif " + f.ExtIf
	}
	return s
}

// Endpoint returns the external side, the part a reservation holds.
func (f Forward) Endpoint() Endpoint { return Endpoint{Addr: f.Ext, Proto: f.Proto} }

// Endpoint is an address, port and protocol: the key of a reservation and
// of a forward (one external endpoint goes to one place).
type Endpoint struct {
	// Addr is the address and port.
	Addr netip.AddrPort
	// Proto is the protocol.
	Proto Proto
}

func (e Endpoint) String() string { return e.Addr.String() + "/" + e.Proto.String() }

// Forwards expands a rule into its kernel forwards, in port order.
func (d DNAT) Forwards() []Forward {
	pairs := d.Ports.Pairs()
	out := make([]Forward, len(pairs))
	for i, p := range pairs {
		out[i] = Forward{
			ExtIf: d.ExtIf,
			Proto: d.Proto,
			Ext:   netip.AddrPortFrom(d.ExtIP, p.Ext),
			Int:   netip.AddrPortFrom(d.IntIP, p.Int),
		}
	}
	return out
}

// compareForwards orders forwards for stable output.
func compareForwards(a, b Forward) int {
	if c := a.Ext.Compare(b.Ext); c != 0 {
		return c
	}
	if c := int(a.Proto) - int(b.Proto); c != 0 {
		return c
	}
	return strings.Compare(a.ExtIf, b.ExtIf)
}

// compareDNAT orders rules for stable output.
func compareDNAT(a, b DNAT) int {
	if c := a.ExtIP.Compare(b.ExtIP); c != 0 {
		return c
	}
	if c := int(a.Proto) - int(b.Proto); c != 0 {
		return c
	}
	if c := int(a.Ports.first()) - int(b.Ports.first()); c != 0 {
		return c
	}
	if c := a.IntIP.Compare(b.IntIP); c != 0 {
		return c
	}
	return strings.Compare(a.ExtIf, b.ExtIf)
}

// State is natmap's desired configuration: what the state file holds.
type State struct {
	// Dnats are the static DNAT rules.
	Dnats []DNAT `json:"dnats"`
	// Snats are the SNAT rules.
	Snats []SNAT `json:"snats"`
	// Hairpins are the hairpin rules.
	Hairpins []Hairpin `json:"hairpins"`
	// PolicyRoutes are the policy routes.
	PolicyRoutes []PolicyRoute `json:"policy_routes"`
	// Mappings are the Docker mappings.
	Mappings []Mapping `json:"mappings"`
	// NextMappingID is the ID the next mapping gets.
	NextMappingID int `json:"next_mapping_id,omitempty"`
	// IPForward records that `fwd` enabled IPv4 forwarding; the daemon
	// enables it again at start.
	IPForward bool `json:"ip_forward,omitempty"`
	// IPv6Forward records the same for IPv6.
	IPv6Forward bool `json:"ipv6_forward,omitempty"`
}

// Validate checks every rule, that no external endpoint goes to two
// places, and that no rule appears twice.
func (s State) Validate() error {
	seen := map[Endpoint]Forward{}
	claim := func(where string, fs []Forward) error {
		for _, f := range fs {
			if other, dup := seen[f.Endpoint()]; dup && other != f {
				return fmt.Errorf("%s: %s is also forwarded to %s: %w", where, f.Endpoint(), other.Int, ErrConflict)
			}
			seen[f.Endpoint()] = f
		}
		return nil
	}
	for _, check := range []func() error{
		func() error {
			return validateEach("dnats", s.Dnats, DNAT.Validate, DNAT.ID, func(where string, d DNAT) error { return claim(where, d.Forwards()) })
		},
		func() error {
			return validateEach("hairpins", s.Hairpins, Hairpin.Validate, Hairpin.ID, func(where string, h Hairpin) error { return claim(where, h.dnat().Forwards()) })
		},
		func() error { return s.validateMappings(claim) },
		func() error { return validateEach("snats", s.Snats, SNAT.Validate, SNAT.ID, nil) },
		s.validatePolicyRoutes,
	} {
		if err := check(); err != nil {
			return err // the first, as the sections come
		}
	}
	return nil
}

// validateEach checks each rule of a section: valid, not twice (by id),
// and then more (when set).
func validateEach[R fmt.Stringer, ID comparable](section string, rules []R, validate func(R) error, id func(R) ID, more func(string, R) error) error {
	ids := map[ID]bool{}
	for i, r := range rules {
		where := fmt.Sprintf("%s[%d]", section, i)
		if err := validate(r); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if ids[id(r)] {
			return fmt.Errorf("%s: %s appears twice: %w", where, r, ErrInvalid)
		}
		ids[id(r)] = true
		if more != nil {
			if err := more(where, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// validateMappings checks each mapping as a request would be, its host
// port and ID, and claims its endpoint.
func (s State) validateMappings(claim func(string, []Forward) error) error {
	ids := map[int]bool{}
	for i, m := range s.Mappings {
		where := fmt.Sprintf("mappings[%d]", i)
		req := MappingRequest{Container: m.Container, HostIP: m.HostIP, HostPort: m.HostPort, ContainerPort: m.ContainerPort, TargetIP: m.TargetIP, Proto: m.Proto}
		if err := req.normalize(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if m.HostPort == 0 || m.ID <= 0 || ids[m.ID] {
			return fmt.Errorf("%s: bad host port %d or id %d: %w", where, m.HostPort, m.ID, ErrInvalid)
		}
		ids[m.ID] = true
		if err := claim(where, []Forward{m.forward()}); err != nil {
			return err
		}
	}
	return nil
}

// validatePolicyRoutes checks each policy route, not twice, and one
// gateway a table.
func (s State) validatePolicyRoutes() error {
	tables := map[uint32]PolicyRoute{}
	return validateEach("policy_routes", s.PolicyRoutes, PolicyRoute.Validate, func(p PolicyRoute) PolicyRoute { return p },
		func(where string, p PolicyRoute) error {
			if err := tableClash(p, maps.Values(tables)); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			tables[p.Table] = p
			return nil
		})
}
