package nat

import (
	"maps"
	"slices"
)

// Delta is one change to the persisted state: the rules it removed and the
// rules it added or replaced, and the state's settings after it. A Store
// can record a Delta instead of writing the whole state again, so a change
// costs the same with 10 rules or 10,000.
type Delta struct {
	// Del are the rules removed, as they were; only their identity counts
	// (a DNAT's DNATID, a mapping's ID, ...).
	Del State `json:"del"`
	// Add are the rules added or replaced, whole, as they are now. Its
	// NextMappingID, IPForward and IPv6Forward are the state's after the
	// change.
	Add State `json:"add"`
}

// Replay returns st with the deltas applied in order, sorted as a
// snapshot is.
func (st State) Replay(ds ...Delta) State {
	dnats := indexBy(st.Dnats, DNAT.ID)
	hairpins := indexBy(st.Hairpins, Hairpin.ID)
	snats := indexBy(st.Snats, SNAT.ID)
	routes := indexBy(st.PolicyRoutes, func(p PolicyRoute) PolicyRoute { return p })
	mappings := indexBy(st.Mappings, func(m Mapping) int { return m.ID })
	settings := st
	for _, d := range ds {
		replay(dnats, d.Del.Dnats, d.Add.Dnats, DNAT.ID)
		replay(hairpins, d.Del.Hairpins, d.Add.Hairpins, Hairpin.ID)
		replay(snats, d.Del.Snats, d.Add.Snats, SNAT.ID)
		replay(routes, d.Del.PolicyRoutes, d.Add.PolicyRoutes, func(p PolicyRoute) PolicyRoute { return p })
		replay(mappings, d.Del.Mappings, d.Add.Mappings, func(m Mapping) int { return m.ID })
		settings = d.Add
	}
	return sortedState(dnats, hairpins, snats, slices.Collect(maps.Keys(routes)), mappings,
		State{NextMappingID: settings.NextMappingID, IPForward: settings.IPForward, IPv6Forward: settings.IPv6Forward})
}

func indexBy[K comparable, V any](vs []V, id func(V) K) map[K]V {
	m := make(map[K]V, len(vs))
	for _, v := range vs {
		m[id(v)] = v
	}
	return m
}

func replay[K comparable, V any](m map[K]V, del, add []V, id func(V) K) {
	for _, v := range del {
		delete(m, id(v))
	}
	for _, v := range add {
		m[id(v)] = v
	}
}

// sortedState is the persisted form of rules kept by identity, each kind
// in its stable order, with settings' NextMappingID and forwarding flags.
func sortedState(dnats map[DNATID]DNAT, hairpins map[HairpinID]Hairpin, snats map[SNATID]SNAT,
	routes []PolicyRoute, mappings map[int]Mapping, settings State) State {
	return State{
		Dnats:         slices.SortedFunc(maps.Values(dnats), compareDNAT),
		Hairpins:      slices.SortedFunc(maps.Values(hairpins), compareHairpin),
		Snats:         slices.SortedFunc(maps.Values(snats), compareSNAT),
		PolicyRoutes:  slices.SortedFunc(slices.Values(routes), comparePolicyRoute),
		Mappings:      slices.SortedFunc(maps.Values(mappings), func(a, b Mapping) int { return a.ID - b.ID }),
		NextMappingID: settings.NextMappingID,
		IPForward:     settings.IPForward,
		IPv6Forward:   settings.IPv6Forward,
	}
}

// delta is the Delta of the rules tx put or dropped: each touched rule as
// it is now, or among the removed when it is gone.
func (s *Service) delta(tx *txn) Delta {
	var d Delta
	seen := map[any]bool{}
	first := func(id any) bool {
		if seen[id] {
			return false
		}
		seen[id] = true
		return true
	}
	for _, v := range tx.touched {
		switch r := v.(type) {
		case DNAT:
			if id := r.ID(); first(id) {
				d.Add.Dnats, d.Del.Dnats = nowOrGone(s.dnats, id, r, d.Add.Dnats, d.Del.Dnats)
			}
		case Hairpin:
			if id := r.ID(); first(id) {
				d.Add.Hairpins, d.Del.Hairpins = nowOrGone(s.hairpins, id, r, d.Add.Hairpins, d.Del.Hairpins)
			}
		case SNAT:
			if id := r.ID(); first(id) {
				d.Add.Snats, d.Del.Snats = nowOrGone(s.snats, id, r, d.Add.Snats, d.Del.Snats)
			}
		case Mapping:
			if first(r.ID) {
				d.Add.Mappings, d.Del.Mappings = nowOrGone(s.mappings, r.ID, r, d.Add.Mappings, d.Del.Mappings)
			}
		}
	}
	return d
}

// nowOrGone appends m[id] to add when the rule is there, or was to del.
func nowOrGone[K comparable, V any](m map[K]V, id K, was V, add, del []V) ([]V, []V) {
	if now, ok := m[id]; ok {
		return append(add, now), del
	}
	return add, append(del, was)
}
