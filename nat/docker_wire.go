package nat

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DockerAddMapRequest is the body of POST /mapping/{container}.
type DockerAddMapRequest struct {
	// HostIP is the host address; null or "0.0.0.0" for every address.
	HostIP *string `json:"host_ip"`
	// HostPort is the host port; 0 asks the daemon to pick one.
	HostPort int `json:"host_port"`
	// ContainerPort is the container's port; 0 means the host port.
	ContainerPort int `json:"container_port"`
	// TargetIP, when set, maps to this address without asking Docker.
	TargetIP *string `json:"target_ip"`
	// Proto is "tcp" (the default when empty) or "udp".
	Proto string `json:"proto"`
}

// MapRequest is the address part of a DockerPortMap.
type MapRequest struct {
	// HostAddr is "IP:PORT" on the host.
	HostAddr string `json:"host_addr"`
	// ContainerAddr is "IP:PORT" of the target; empty while the container
	// does not run.
	ContainerAddr string `json:"container_addr"`
	// Proto is "tcp" or "udp".
	Proto string `json:"proto"`
}

// DockerPortMap is one Docker mapping on the wire.
type DockerPortMap struct {
	// ID is the mapping's ID.
	ID int `json:"id"`
	// Request holds the addresses.
	Request MapRequest `json:"request"`
	// ContainerID is the container's ID, when known.
	ContainerID string `json:"container_id"`
	// ContainerName is the container's (or local service's) name.
	ContainerName string `json:"container_name"`
	// RuleComment names the mapping: natmap:NAME:PORT.
	RuleComment string `json:"rule_comment"`
	// Status is "active" or "inactive".
	Status string `json:"status,omitempty"`
	// Reason says why the mapping is inactive.
	Reason string `json:"reason,omitempty"`
	// Counter is what the kernel counted (GET /mappings?counters=1).
	*Counter `json:",omitempty"`
}

// RemapRequest is the body of PUT /remap/{container}.
type RemapRequest struct {
	// HostPort is the mapping's current host port.
	HostPort int `json:"host_port"`
	// NewHostPort is the port it moves to.
	NewHostPort int `json:"new_host_port"`
	// Proto is "tcp" (the default when empty) or "udp".
	Proto string `json:"proto"`
}

// PortMapOf renders a mapping in the wire shape.
func PortMapOf(m Mapping) DockerPortMap {
	pm := DockerPortMap{
		ID: m.ID,
		Request: MapRequest{
			HostAddr: netip.AddrPortFrom(m.HostIP, m.HostPort).String(),
			Proto:    m.Proto.String(),
		},
		ContainerID:   m.ContainerID,
		ContainerName: m.Container,
		RuleComment:   fmt.Sprintf("natmap:%s:%d", m.Container, m.HostPort),
	}
	if t := m.Target(); t.IsValid() {
		pm.Request.ContainerAddr = netip.AddrPortFrom(t, m.ContainerPort).String()
	}
	return pm
}

// PortField reads a port of a request: 1-65535 (0 too when zeroOK), or
// an error naming field.
func PortField(field string, v int, zeroOK bool) (uint16, error) {
	if v < 0 || v > 65535 || (v == 0 && !zeroOK) {
		return 0, FieldErr(field, "port %d is out of range 1-65535", v)
	}
	return uint16(v), nil
}

// ToRequest is the request for container, its addresses parsed and the
// defaults filled in; errors name the field.
func (r DockerAddMapRequest) ToRequest(container string) (MappingRequest, error) {
	req := MappingRequest{Container: container, BothFamilies: r.HostIP == nil || *r.HostIP == ""}
	var err error
	if r.HostIP != nil && *r.HostIP != "" {
		if req.HostIP, err = ParseAddr("host_ip", *r.HostIP); err != nil {
			return req, err
		}
	}
	if r.TargetIP != nil && *r.TargetIP != "" {
		if req.TargetIP, err = ParseAddr("target_ip", *r.TargetIP); err != nil {
			return req, err
		}
	}
	if req.HostPort, err = PortField("host_port", r.HostPort, true); err != nil {
		return req, err
	}
	if req.ContainerPort, err = PortField("container_port", r.ContainerPort, true); err != nil {
		return req, err
	}
	if req.Proto, err = ParseProto(r.Proto); err != nil {
		return req, &FieldError{Field: "proto", Msg: err.Error()}
	}
	return req, req.normalize()
}

// ParseMappingSpec parses the CLI's mapping grammar,
// [HOST_IP:]HOST_PORT[:[TARGET_IP:]CONTAINER_PORT][/PROTO]: one port maps
// the same port on both sides, an address first is the host address, an
// address before the container port is a target that needs no Docker.
func ParseMappingSpec(spec string) (DockerAddMapRequest, error) {
	var r DockerAddMapRequest
	body, proto, hasProto := strings.Cut(spec, "/")
	if hasProto {
		if _, err := ParseProto(proto); err != nil || proto == "" {
			return r, FieldErr("mapping", "%q: unknown protocol %q (want tcp or udp)", spec, proto)
		}
		r.Proto = strings.ToLower(proto)
	}
	parts, ok := splitMappingSpec(body)
	bad := func(format string, args ...any) (DockerAddMapRequest, error) {
		return DockerAddMapRequest{}, FieldErr("mapping", "%q: "+format+" (want [HOST_IP:]HOST_PORT[:[TARGET_IP:]CONTAINER_PORT][/PROTO])", append([]any{spec}, args...)...)
	}
	isIP := func(s string) bool { _, err := netip.ParseAddr(s); return err == nil }
	port := func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil && strings.TrimLeft(s, "0123456789") == "" && n >= 0 && n <= 65535
	}
	if !ok {
		return bad("an IPv6 address goes in brackets, such as [2001:db8::1]:8080:80")
	}
	var hostIP, hostPort, target, cport string
	switch len(parts) {
	case 1:
		hostPort = parts[0]
	case 2:
		if isIP(parts[0]) {
			hostIP, hostPort = parts[0], parts[1]
		} else {
			hostPort, cport = parts[0], parts[1]
		}
	case 3:
		if isIP(parts[0]) {
			hostIP, hostPort, cport = parts[0], parts[1], parts[2]
		} else {
			hostPort, target, cport = parts[0], parts[1], parts[2]
		}
	case 4:
		hostIP, hostPort, target, cport = parts[0], parts[1], parts[2], parts[3]
	default:
		return bad("%d parts (an IPv6 address goes in brackets, such as [2001:db8::1]:8080:80)", len(parts))
	}
	hp, ok := port(hostPort)
	if !ok {
		return bad("host port %q is not a port number", hostPort)
	}
	r.HostPort = hp
	for _, a := range []string{hostIP, target} {
		if a != "" && !isIP(a) {
			return bad("%q is not an IP address", a)
		}
	}
	if cport != "" {
		cp, ok := port(cport)
		if !ok || cp == 0 {
			return bad("container port %q is not a port number", cport)
		}
		r.ContainerPort = cp
	}
	if hostIP != "" {
		r.HostIP = &hostIP
	}
	if target != "" {
		r.TargetIP = &target
	}
	return r, nil
}

// splitMappingSpec splits a mapping spec at its colons, keeping an IPv6
// address in brackets ([2001:db8::1]) whole, without the brackets. It
// fails on a bracket that does not close or is not followed by a colon.
func splitMappingSpec(body string) ([]string, bool) {
	var parts []string
	for {
		var part string
		if strings.HasPrefix(body, "[") {
			end := strings.IndexByte(body, ']')
			if end < 0 {
				return nil, false
			}
			part, body = body[1:end], body[end+1:]
			if body != "" && body[0] != ':' {
				return nil, false
			}
		} else if i := strings.IndexByte(body, ':'); i >= 0 {
			part, body = body[:i], body[i:]
		} else {
			part, body = body, ""
		}
		parts = append(parts, part)
		if body == "" {
			return parts, true
		}
		body = body[1:] // the colon
	}
}
