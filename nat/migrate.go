package nat

import (
	"fmt"
	"net/netip"
)

// EarlierState is the state file of the earlier, iptables-based natmap:
// the same rule shapes as its API, and Docker mappings by container.
type EarlierState struct {
	// Mapping holds each container's mappings.
	Mapping map[string][]DockerPortMap `json:"mapping"`
	// Dnats are the DNAT rules.
	Dnats []DnatConfig `json:"dnats"`
	// Snats are the SNAT rules.
	Snats []SnatConfig `json:"snats"`
	// Hairpins are the hairpin rules.
	Hairpins []HairpinConfig `json:"hairpins"`
	// PolicyRoutes are the policy routes.
	PolicyRoutes []PolicyRouteConfig `json:"policy_routes"`
}

// Migrate converts an earlier state into natmap's. Rules the earlier
// natmap kept separately but natmap merges (the same addresses and
// protocol) are merged; a hairpin without lan_cidr gets the default at
// start. Any entry that does not convert is an error naming it: nothing is
// dropped silently.
func (e EarlierState) Migrate() (State, error) {
	var st State
	dnats := map[DNATID]int{}
	for i, c := range e.Dnats {
		d, err := c.ToDNAT()
		if err != nil {
			return State{}, fmt.Errorf("dnats[%d]: %w", i, err)
		}
		if j, ok := dnats[d.ID()]; ok {
			st.Dnats[j].Ports = st.Dnats[j].Ports.Union(d.Ports)
			continue
		}
		dnats[d.ID()] = len(st.Dnats)
		st.Dnats = append(st.Dnats, d)
	}
	for i, c := range e.Snats {
		s, err := c.ToSNAT()
		if err != nil {
			return State{}, fmt.Errorf("snats[%d]: %w", i, err)
		}
		st.Snats = append(st.Snats, s)
	}
	hairpins := map[HairpinID]int{}
	for i, c := range e.Hairpins {
		h, err := c.ToHairpin()
		if err != nil {
			return State{}, fmt.Errorf("hairpins[%d]: %w", i, err)
		}
		if j, ok := hairpins[h.ID()]; ok {
			st.Hairpins[j].Ports = st.Hairpins[j].Ports.Union(h.Ports)
			continue
		}
		hairpins[h.ID()] = len(st.Hairpins)
		st.Hairpins = append(st.Hairpins, h)
	}
	for i, c := range e.PolicyRoutes {
		p, err := c.ToPolicyRoute()
		if err != nil {
			return State{}, fmt.Errorf("policy_routes[%d]: %w", i, err)
		}
		st.PolicyRoutes = append(st.PolicyRoutes, p)
	}
	for key, maps := range e.Mapping {
		for i, pm := range maps {
			m, err := migrateMapping(pm)
			if err != nil {
				return State{}, fmt.Errorf("mapping[%q][%d]: %w", key, i, err)
			}
			st.Mappings = append(st.Mappings, m)
			st.NextMappingID = max(st.NextMappingID, m.ID+1)
		}
	}
	return st, nil
}

// migrateMapping converts an earlier DockerPortMap. A mapping without a
// container ID was a local service: its container address is its target.
func migrateMapping(pm DockerPortMap) (Mapping, error) {
	host, err := netip.ParseAddrPort(pm.Request.HostAddr)
	if err != nil {
		return Mapping{}, FieldErr("host_addr", "%q is not ADDRESS:PORT", pm.Request.HostAddr)
	}
	target, err := netip.ParseAddrPort(pm.Request.ContainerAddr)
	if err != nil {
		return Mapping{}, FieldErr("container_addr", "%q is not ADDRESS:PORT", pm.Request.ContainerAddr)
	}
	proto, err := ParseProto(pm.Request.Proto)
	if err != nil {
		return Mapping{}, &FieldError{Field: "proto", Msg: err.Error()}
	}
	m := Mapping{ID: pm.ID, Container: pm.ContainerName, HostIP: host.Addr().Unmap(), HostPort: host.Port(),
		ContainerPort: target.Port(), Proto: proto, ContainerID: pm.ContainerID}
	if pm.ContainerID == "" {
		m.TargetIP = target.Addr().Unmap()
	} else {
		m.ContainerIP = target.Addr().Unmap()
	}
	if m.ID <= 0 {
		return Mapping{}, FieldErr("id", "%d is not a mapping id", m.ID)
	}
	return m, nil
}
