package nat

import (
	"fmt"
	"net/http"
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
	if t := m.target(); t.IsValid() {
		pm.Request.ContainerAddr = netip.AddrPortFrom(t, m.ContainerPort).String()
	}
	return pm
}

func portField(field string, v int, zeroOK bool) (uint16, error) {
	if v < 0 || v > 65535 || (v == 0 && !zeroOK) {
		return 0, fieldErr(field, "port %d is out of range 1-65535", v)
	}
	return uint16(v), nil
}

func (r DockerAddMapRequest) toRequest(container string) (MappingRequest, error) {
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
	if req.HostPort, err = portField("host_port", r.HostPort, true); err != nil {
		return req, err
	}
	if req.ContainerPort, err = portField("container_port", r.ContainerPort, true); err != nil {
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
			return r, fieldErr("mapping", "%q: unknown protocol %q (want tcp or udp)", spec, proto)
		}
		r.Proto = strings.ToLower(proto)
	}
	parts, ok := splitMappingSpec(body)
	bad := func(format string, args ...any) (DockerAddMapRequest, error) {
		return DockerAddMapRequest{}, fieldErr("mapping", "%q: "+format+" (want [HOST_IP:]HOST_PORT[:[TARGET_IP:]CONTAINER_PORT][/PROTO])", append([]any{spec}, args...)...)
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

// mappingRoutes adds the Docker routes to mux.
func (a *api) mappingRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /mapping/{container}", a.addMapping)
	mux.HandleFunc("DELETE /mapping/{container}/{port}", a.removeMappings)
	// The same without the earlier API's ambiguity: /mapping/by-id/3 is
	// mapping #3, never port 3 of a container named by-id.
	mux.HandleFunc("DELETE /mapping/{container}/port/{port}", a.removeMappings)
	mux.HandleFunc("DELETE /mapping/by-id/{id}", a.removeMappings)
	mux.HandleFunc("DELETE /mapping/{container}", a.removeMappings)
	mux.HandleFunc("PUT /remap/{container}", a.remap)
	// What the DELETEs would remove, without removing it (404 when none).
	mux.HandleFunc("GET /mapping/{container}", a.findMappings)
	mux.HandleFunc("GET /mapping/{container}/port/{port}", a.findMappings)
	mux.HandleFunc("GET /mapping/by-id/{id}", a.findMappings)
}

func (a *api) addMapping(w http.ResponseWriter, r *http.Request) {
	var body DockerAddMapRequest
	if err := decodeBody(w, r, &body, false); err != nil {
		a.fail(w, r, err)
		return
	}
	req, err := body.toRequest(r.PathValue("container"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.info.Policy.authorize(r.Context(), req); err != nil {
		a.fail(w, r, err)
		return
	}
	m, changed, err := a.svc.AddMapping(r.Context(), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(ChangedHeader, fmt.Sprint(changed))
	reply(w, http.StatusOK, PortMapOf(m))
}

// selectorOf reads the mappings a request's path names: by ID
// (/mapping/by-id/ID), by container and host port (?proto=, tcp by
// default), or every mapping of a container.
func selectorOf(r *http.Request) (MappingSelector, error) {
	if v := r.PathValue("id"); v != "" {
		id, err := strconv.Atoi(v)
		if err != nil || id < 1 {
			return MappingSelector{}, fieldErr("id", "%q is not a mapping id", v)
		}
		return MappingSelector{ID: id}, nil
	}
	sel := MappingSelector{Container: r.PathValue("container")}
	if v := r.PathValue("port"); v != "" {
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return MappingSelector{}, fieldErr("port", "%q is not a port number", v)
		}
		proto, err := ParseProto(r.URL.Query().Get("proto"))
		if err != nil {
			return MappingSelector{}, &FieldError{Field: "proto", Msg: err.Error()}
		}
		sel.HostPort, sel.Proto = uint16(port), proto
	}
	return sel, nil
}

func (a *api) removeMappings(w http.ResponseWriter, r *http.Request) {
	sel, err := selectorOf(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := a.svc.RemoveMappings(r.Context(), sel); err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(ChangedHeader, "true")
	w.WriteHeader(http.StatusOK)
}

// findMappings answers with the mappings a DELETE of the same path would
// remove, or not_found.
func (a *api) findMappings(w http.ResponseWriter, r *http.Request) {
	sel, err := selectorOf(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	found, err := a.svc.FindMappings(r.Context(), sel)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]DockerPortMap, len(found))
	for i, m := range found {
		out[i] = PortMapOf(m)
	}
	reply(w, http.StatusOK, out)
}

func (a *api) remap(w http.ResponseWriter, r *http.Request) {
	var body RemapRequest
	if err := decodeBody(w, r, &body, false); err != nil {
		a.fail(w, r, err)
		return
	}
	from, err := portField("host_port", body.HostPort, false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	to, err := portField("new_host_port", body.NewHostPort, false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	proto, err := ParseProto(body.Proto)
	if err != nil {
		a.fail(w, r, &FieldError{Field: "proto", Msg: err.Error()})
		return
	}
	moved, err := a.svc.Remap(r.Context(), r.PathValue("container"), proto, from, to)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(ChangedHeader, fmt.Sprint(from != to))
	out := make([]DockerPortMap, len(moved))
	for i, m := range moved {
		out[i] = PortMapOf(m)
	}
	reply(w, http.StatusOK, out)
}
