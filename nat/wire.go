package nat

// The JSON shapes of the socket API. Field names match the earlier
// implementation's API (reference/api.md) so its clients keep working.

// DnatConfig is the body of POST and DELETE /dnat, and the reply of POST.
type DnatConfig struct {
	// ExtIP is the external address.
	ExtIP string `json:"ext_ip"`
	// IntIP is the internal address.
	IntIP string `json:"int_ip"`
	// Ports is a port list such as "25,465,8000-8100,2222:22".
	Ports string `json:"ports"`
	// Proto is "tcp" (the default when empty) or "udp".
	Proto string `json:"proto"`
	// ExtIf limits the rule to one input interface; null for any.
	ExtIf *string `json:"ext_if"`
	// PreserveSrcIP is accepted for compatibility; the source is always kept.
	PreserveSrcIP bool `json:"preserve_src_ip"`
}

// DnatEntry is one DNAT rule in a ListResponse.
type DnatEntry struct {
	DnatConfig
	// Status is "active", "inactive" or "partial".
	Status string `json:"status"`
	// Reason says why some forwards are not installed.
	Reason string `json:"reason,omitempty"`
}

// ListResponse is the reply of GET /mappings.
type ListResponse struct {
	// Docker lists container mappings.
	Docker []any `json:"docker"`
	// Dnats lists static DNAT rules.
	Dnats []DnatEntry `json:"dnats"`
	// Snats lists SNAT rules.
	Snats []any `json:"snats"`
	// Hairpins lists hairpin rules.
	Hairpins []any `json:"hairpins"`
	// PolicyRoutes lists policy routes.
	PolicyRoutes []any `json:"policy_routes"`
}

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

// StatusResponse is the reply of GET /status.
type StatusResponse struct {
	// Version is the daemon's version.
	Version string `json:"version"`
	// Backend names the kernel backend in use.
	Backend string `json:"backend"`
	// BackendReason says why that backend was chosen.
	BackendReason string `json:"backend_reason"`
	// Rules counts what the daemon holds.
	Rules Stats `json:"rules"`
	// UptimeSeconds is how long the daemon has been serving.
	UptimeSeconds int64 `json:"uptime_seconds"`
}

// ErrorResponse is the body of every error reply.
type ErrorResponse struct {
	// Error says what went wrong.
	Error string `json:"error"`
}

// toDNAT parses and validates a request body.
func (c DnatConfig) toDNAT() (DNAT, error) {
	ext, err := ParseAddr("ext_ip", c.ExtIP)
	if err != nil {
		return DNAT{}, err
	}
	in, err := ParseAddr("int_ip", c.IntIP)
	if err != nil {
		return DNAT{}, err
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
	c := DnatConfig{
		ExtIP:         d.ExtIP.String(),
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
