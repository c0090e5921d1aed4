package api

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/lab-ops/natmap/nat"
)

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
	var body nat.DockerAddMapRequest
	if err := decodeBody(w, r, &body, false); err != nil {
		a.fail(w, r, err)
		return
	}
	req, err := body.ToRequest(r.PathValue("container"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.info.Policy.Authorize(r.Context(), req); err != nil {
		a.fail(w, r, err)
		return
	}
	m, changed, err := a.svc.AddMapping(r.Context(), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(nat.ChangedHeader, fmt.Sprint(changed))
	reply(w, http.StatusOK, nat.PortMapOf(m))
}

// selectorOf reads the mappings a request's path names: by ID
// (/mapping/by-id/ID), by container and host port (?proto=, tcp by
// default), or every mapping of a container.
func selectorOf(r *http.Request) (nat.MappingSelector, error) {
	if v := r.PathValue("id"); v != "" {
		id, err := strconv.Atoi(v)
		if err != nil || id < 1 {
			return nat.MappingSelector{}, nat.FieldErr("id", "%q is not a mapping id", v)
		}
		return nat.MappingSelector{ID: id}, nil
	}
	sel := nat.MappingSelector{Container: r.PathValue("container")}
	if v := r.PathValue("port"); v != "" {
		port, err := strconv.Atoi(v)
		if err != nil || port < 1 || port > 65535 {
			return nat.MappingSelector{}, nat.FieldErr("port", "%q is not a port number", v)
		}
		proto, err := nat.ParseProto(r.URL.Query().Get("proto"))
		if err != nil {
			return nat.MappingSelector{}, &nat.FieldError{Field: "proto", Msg: err.Error()}
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
	w.Header().Set(nat.ChangedHeader, "true")
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
	out := make([]nat.DockerPortMap, len(found))
	for i, m := range found {
		out[i] = nat.PortMapOf(m)
	}
	reply(w, http.StatusOK, out)
}

func (a *api) remap(w http.ResponseWriter, r *http.Request) {
	var body nat.RemapRequest
	if err := decodeBody(w, r, &body, false); err != nil {
		a.fail(w, r, err)
		return
	}
	from, err := nat.PortField("host_port", body.HostPort, false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	to, err := nat.PortField("new_host_port", body.NewHostPort, false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	proto, err := nat.ParseProto(body.Proto)
	if err != nil {
		a.fail(w, r, &nat.FieldError{Field: "proto", Msg: err.Error()})
		return
	}
	moved, err := a.svc.Remap(r.Context(), r.PathValue("container"), proto, from, to)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(nat.ChangedHeader, fmt.Sprint(from != to))
	out := make([]nat.DockerPortMap, len(moved))
	for i, m := range moved {
		out[i] = nat.PortMapOf(m)
	}
	reply(w, http.StatusOK, out)
}
