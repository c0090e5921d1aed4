package nat

// The JSON shapes of the socket API. Field names match the earlier
// implementation's API (the README's "The socket API") so its clients keep
// working.

import (
	"net/netip"
	"strings"
)

// MaxBodyBytes is the largest request body the API reads.
const MaxBodyBytes = 1 << 20

// ChangedHeader is set on replies of mutating requests: "true" when the
// request changed something, "false" when it was already in place.
const ChangedHeader = "Natmap-Changed"

// DnatConfig is the body of POST and DELETE /dnat, and the reply of POST.
type DnatConfig struct {
	// ExtIP is the external address; empty with ExtIf forwards every
	// address the interface has, now or later.
	ExtIP string `json:"ext_ip" yaml:"ext_ip,omitempty"`
	// IntIP is the internal address.
	IntIP string `json:"int_ip" yaml:"int_ip"`
	// Ports is a port list such as "25,465,8000-8100,2222:22".
	Ports string `json:"ports" yaml:"ports"`
	// Proto is "tcp" (the default when empty) or "udp".
	Proto string `json:"proto" yaml:"proto,omitempty"`
	// ExtIf limits the rule to one input interface; null for any.
	ExtIf *string `json:"ext_if" yaml:"ext_if,omitempty"`
	// PreserveSrcIP is accepted for compatibility; the source is always kept.
	PreserveSrcIP bool `json:"preserve_src_ip" yaml:"preserve_src_ip,omitempty"`
}

// DnatEntry is one DNAT rule in a ListResponse.
type DnatEntry struct {
	DnatConfig
	// Status is "active", "inactive" or "partial".
	Status string `json:"status"`
	// Reason says why some forwards are not installed.
	Reason string `json:"reason,omitempty"`
	// Standby is set when ext_ip is not an address of this host now: the
	// rule is installed (and its ports reserved) all the same, and takes
	// the address's traffic when it comes, as on the standby router of a
	// keepalived pair.
	Standby bool `json:"standby,omitempty"`
	// Counter is what the kernel counted (GET /mappings?counters=1).
	*Counter `json:",omitempty"`
}

// SnatConfig is the body of POST and DELETE /snat.
type SnatConfig struct {
	// IntIP is the internal address or CIDR.
	IntIP string `json:"int_ip" yaml:"int_ip"`
	// ExtIP is the source address given to the traffic; empty
	// masquerades (the interface's address at the time).
	ExtIP string `json:"ext_ip" yaml:"ext_ip,omitempty"`
	// ExtIf is the interface the traffic leaves by (required).
	ExtIf string `json:"ext_if" yaml:"ext_if,omitempty"`
}

// SnatEntry is one SNAT rule in a ListResponse.
type SnatEntry struct {
	SnatConfig
	// Status is always "active".
	Status string `json:"status"`
	// Standby is set when ext_ip is not an address of this host now: the
	// rule is installed (and its ports reserved) all the same, and takes
	// the address's traffic when it comes, as on the standby router of a
	// keepalived pair.
	Standby bool `json:"standby,omitempty"`
}

// HairpinConfig is the body of POST and DELETE /hairpin.
type HairpinConfig struct {
	// ExtIP is the external address (empty with ExtIf).
	ExtIP string `json:"ext_ip" yaml:"ext_ip,omitempty"`
	// IntIP is the service's internal address.
	IntIP string `json:"int_ip" yaml:"int_ip"`
	// Ports is a port list, as for DNAT.
	Ports string `json:"ports" yaml:"ports"`
	// Proto is "tcp" (the default when empty) or "udp".
	Proto string `json:"proto" yaml:"proto,omitempty"`
	// LanCIDR is the network whose connections are masqueraded; null for
	// the connected network of int_ip.
	LanCIDR *string `json:"lan_cidr" yaml:"lan_cidr,omitempty"`
	// ExtIf, without ExtIP, makes the hairpin of a forward by interface
	// (whatever addresses it has).
	ExtIf *string `json:"ext_if,omitempty" yaml:"ext_if,omitempty"`
}

// HairpinEntry is one hairpin rule in a ListResponse.
type HairpinEntry struct {
	HairpinConfig
	// Status is "active", "inactive" or "partial".
	Status string `json:"status"`
	// Reason says why some forwards are not installed.
	Reason string `json:"reason,omitempty"`
	// Standby is set when ext_ip is not an address of this host now: the
	// rule is installed (and its ports reserved) all the same, and takes
	// the address's traffic when it comes, as on the standby router of a
	// keepalived pair.
	Standby bool `json:"standby,omitempty"`
	// Counter is what the kernel counted (GET /mappings?counters=1).
	*Counter `json:",omitempty"`
}

// PolicyRouteConfig is the body of POST and DELETE /policy-route.
type PolicyRouteConfig struct {
	// SrcIP is the source address whose traffic is routed.
	SrcIP string `json:"src_ip" yaml:"src_ip"`
	// Via is the gateway.
	Via string `json:"via" yaml:"via"`
	// Table is the routing table (1-252, 256 and above).
	Table uint32 `json:"table" yaml:"table"`
}

// PolicyRouteEntry is one policy route in a ListResponse.
type PolicyRouteEntry struct {
	PolicyRouteConfig
	// Status is "active" or "inactive".
	Status string `json:"status"`
	// Reason says why the route is not installed.
	Reason string `json:"reason,omitempty"`
}

// ListResponse is the reply of GET /mappings.
type ListResponse struct {
	// Docker lists container mappings.
	Docker []DockerPortMap `json:"docker"`
	// Dnats lists static DNAT rules.
	Dnats []DnatEntry `json:"dnats"`
	// Snats lists SNAT rules.
	Snats []SnatEntry `json:"snats"`
	// Hairpins lists hairpin rules.
	Hairpins []HairpinEntry `json:"hairpins"`
	// PolicyRoutes lists policy routes.
	PolicyRoutes []PolicyRouteEntry `json:"policy_routes"`
}

// SaveResponse is the reply of POST /save.
type SaveResponse struct {
	// Path is the (first) file the daemon wrote.
	Path string `json:"path"`
	// Paths are all the files the daemon wrote (the iptables backend
	// writes an IPv4 and an IPv6 file).
	Paths []string `json:"paths"`
	// Forwards is how many forwards the file holds.
	Forwards int `json:"forwards"`
	// Files says what was written to each file.
	Files []SavedFile `json:"files"`
}

// SavedFile says what save wrote to one file.
type SavedFile struct {
	// Path is the file.
	Path string `json:"path"`
	// Merged is set when natmap's lines were merged into a file of the
	// host's (an iptables boot file), keeping every other line.
	Merged bool `json:"merged"`
	// Kept counts the host's own rules and chain lines kept in the file.
	Kept int `json:"kept"`
	// Summary says it in a phrase.
	Summary string `json:"summary"`
}

// String is the path and the summary.
func (f SavedFile) String() string { return f.Path + " (" + f.Summary + ")" }

// LiveRule is one entry of GET /rules: what is installed in the kernel.
type LiveRule struct {
	// Kind is "dnat", "hairpin", "snat" or "mapping".
	Kind string `json:"kind"`
	// ExtIP is the external address.
	ExtIP string `json:"ext_ip"`
	// IntIP is the internal address.
	IntIP string `json:"int_ip"`
	// Ports are the installed external ports, sorted.
	Ports []uint16 `json:"ports"`
	// Proto is "tcp" or "udp".
	Proto string `json:"proto"`
}

// FwdRequest is the optional body of POST /fwd.
type FwdRequest struct {
	// IPv6 enables IPv6 forwarding as well as IPv4.
	IPv6 bool `json:"ipv6"`
}

// FwdResponse is the reply of POST /fwd: the request, and what changed.
type FwdResponse struct {
	// IPv6 is the request's.
	IPv6 bool `json:"ipv6"`
	// Changed lists each host setting that changed, as
	// "net.ipv4.ip_forward 0 -> 1"; empty when all were set already.
	Changed []string `json:"changed"`
}

// StatusResponse is the reply of GET /status.
type StatusResponse struct {
	// Version is the daemon's version.
	Version string `json:"version"`
	// Backend names the kernel backend in use.
	Backend string `json:"backend"`
	// BackendReason says why that backend was chosen.
	BackendReason string `json:"backend_reason"`
	// Docker is "connected" or says why not.
	Docker string `json:"docker"`
	// Rules counts what the daemon holds.
	Rules Stats `json:"rules"`
	// Standby counts the dnat, hairpin and snat rules whose ext_ip is not
	// an address of this host now (see DnatEntry.Standby).
	Standby int `json:"standby,omitempty"`
	// UptimeSeconds is how long the daemon has been serving.
	UptimeSeconds int64 `json:"uptime_seconds"`
}

// ContainersResponse is the reply of GET /containers.
type ContainersResponse struct {
	// Containers are container names, sorted.
	Containers []string `json:"containers"`
}

// ErrorResponse is the body of every error reply.
type ErrorResponse struct {
	// Error says what went wrong.
	Error string `json:"error"`
	// Problems lists each problem of a refused configuration (POST /apply).
	Problems []Problem `json:"problems,omitempty"`
	// Code names the kind of error, for scripts: invalid, forbidden (only
	// root may), not_found, conflict, port_in_use, docker_unavailable,
	// too_large, internal; the CLI adds daemon_unreachable and usage.
	Code string `json:"code,omitempty"`
	// Rule names the part of the policy that refused a forbidden request.
	Rule string `json:"rule,omitempty"`
	// Field names the request's field that is wrong, by its key (such as
	// "ext_if"); the CLI names it as the user typed it ("--ext-if").
	Field string `json:"field,omitempty"`
}

// ToDNAT parses and validates a request body.
func (c DnatConfig) ToDNAT() (DNAT, error) {
	in, err := ParseAddr("int_ip", c.IntIP)
	if err != nil {
		return DNAT{}, err
	}
	var ext netip.Addr
	switch {
	case strings.TrimSpace(c.ExtIP) == "" && c.ExtIf != nil && *c.ExtIf != "":
		// By interface: whatever addresses it has.
		ext = netip.IPv6Unspecified()
		if in.Is4() {
			ext = netip.IPv4Unspecified()
		}
	default:
		if ext, err = ParseAddr("ext_ip", c.ExtIP); err != nil {
			if strings.TrimSpace(c.ExtIP) == "" {
				err = FieldErr("ext_ip", "missing address (or give ext_if alone to forward every address of an interface)")
			}
			return DNAT{}, err
		}
	}
	ports, err := ParsePorts(c.Ports)
	if err != nil {
		return DNAT{}, &FieldError{Field: "ports", Msg: err.Error()}
	}
	proto, err := ParseProto(c.Proto)
	if err != nil {
		return DNAT{}, &FieldError{Field: "proto", Msg: err.Error()}
	}
	d := DNAT{ExtIP: ext, IntIP: in, Ports: ports, Proto: proto, PreserveSrcIP: c.PreserveSrcIP}
	if c.ExtIf != nil {
		d.ExtIf = *c.ExtIf
	}
	return d, d.Validate()
}

// ConfigOf renders a rule in the wire shape.
func ConfigOf(d DNAT) DnatConfig {
	ext := d.ExtIP.String()
	if d.ByInterface() {
		ext = ""
	}
	c := DnatConfig{
		ExtIP:         ext,
		IntIP:         d.IntIP.String(),
		Ports:         d.Ports.String(),
		Proto:         d.Proto.String(),
		PreserveSrcIP: d.PreserveSrcIP,
	}
	if d.ExtIf != "" {
		ifname := d.ExtIf
		c.ExtIf = &ifname
	}
	return c
}

// ToSNAT parses and validates a request body.
func (c SnatConfig) ToSNAT() (SNAT, error) {
	in, err := ParsePrefix("int_ip", c.IntIP)
	if err != nil {
		return SNAT{}, err
	}
	var ext netip.Addr
	if strings.TrimSpace(c.ExtIP) != "" {
		if ext, err = ParseAddr("ext_ip", c.ExtIP); err != nil {
			return SNAT{}, err
		}
	}
	sn := SNAT{IntNet: in, ExtIP: ext, ExtIf: c.ExtIf}
	return sn, sn.Validate()
}

// SnatConfigOf renders a rule in the wire shape.
func SnatConfigOf(s SNAT) SnatConfig {
	c := SnatConfig{IntIP: PrefixString(s.IntNet), ExtIf: s.ExtIf}
	if !s.Masquerade() {
		c.ExtIP = s.ExtIP.String()
	}
	return c
}

// ToHairpin parses and validates a request body.
func (c HairpinConfig) ToHairpin() (Hairpin, error) {
	d, err := DnatConfig{ExtIP: c.ExtIP, IntIP: c.IntIP, Ports: c.Ports, Proto: c.Proto, ExtIf: c.ExtIf}.ToDNAT()
	if err != nil {
		return Hairpin{}, err
	}
	if d.ExtIf != "" && !d.ByInterface() {
		return Hairpin{}, FieldErr("ext_if", "goes without ext_ip: a hairpin is for an address, or for every address of an interface")
	}
	h := Hairpin{ExtIP: d.ExtIP, IntIP: d.IntIP, Ports: d.Ports, Proto: d.Proto, ExtIf: d.ExtIf}
	if c.LanCIDR != nil && *c.LanCIDR != "" {
		if h.LanCIDR, err = ParsePrefix("lan_cidr", *c.LanCIDR); err != nil {
			return Hairpin{}, err
		}
	}
	return h, h.Validate()
}

// HairpinConfigOf renders a rule in the wire shape.
func HairpinConfigOf(h Hairpin) HairpinConfig {
	c := HairpinConfig{ExtIP: h.ExtIP.String(), IntIP: h.IntIP.String(), Ports: h.Ports.String(), Proto: h.Proto.String()}
	if h.dnat().ByInterface() {
		ifname := h.ExtIf
		c.ExtIP, c.ExtIf = "", &ifname
	}
	if h.LanCIDR.IsValid() {
		lan := h.LanCIDR.String()
		c.LanCIDR = &lan
	}
	return c
}

// ToPolicyRoute parses and validates a request body.
func (c PolicyRouteConfig) ToPolicyRoute() (PolicyRoute, error) {
	src, err := ParseAddr("src_ip", c.SrcIP)
	if err != nil {
		return PolicyRoute{}, err
	}
	via, err := ParseAddr("via", c.Via)
	if err != nil {
		return PolicyRoute{}, err
	}
	p := PolicyRoute{SrcIP: src, Via: via, Table: c.Table}
	return p, p.Validate()
}

// PolicyRouteConfigOf renders a route in the wire shape.
func PolicyRouteConfigOf(p PolicyRoute) PolicyRouteConfig {
	return PolicyRouteConfig{SrcIP: p.SrcIP.String(), Via: p.Via.String(), Table: p.Table}
}
