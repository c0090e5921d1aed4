package nat

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"
)

// AddHairpin adds h, merging its ports into the hairpin with the same ID.
// An empty LanCIDR means the rule's existing LAN, or else the connected
// network of the internal address. Its forwards are shared with a DNAT that
// sends the same ports to the same place.
func (s *Service) AddHairpin(ctx context.Context, h Hairpin) (rule Hairpin, changed bool, err error) {
	if err := h.Validate(); err != nil {
		return Hairpin{}, false, err
	}
	defer s.lock()()
	old, had := s.hairpins[h.ID()]
	switch {
	case !h.LanCIDR.IsValid() && had:
		h.LanCIDR = old.LanCIDR
	case !h.LanCIDR.IsValid():
		lan, err := s.router.ConnectedPrefix(h.IntIP)
		if err != nil {
			return Hairpin{}, false, fmt.Errorf("finding the LAN of %s (give --lan-cidr): %w", h.IntIP, err)
		}
		h.LanCIDR = lan
	case had && old.LanCIDR != h.LanCIDR:
		return Hairpin{}, false, fmt.Errorf("hairpin %s already masquerades %s; delete it to change its LAN: %w", old, old.LanCIDR, ErrConflict)
	}
	if err := s.checkHairpinProto(h); err != nil {
		return Hairpin{}, false, err
	}
	add := missingFrom(old.Ports, h.dnat())
	if len(add) == 0 {
		return old, false, nil
	}
	rule = h
	if had {
		rule = old
		rule.Ports = old.Ports.Union(PortListOf(pairsOf(add)))
	}
	tx := &txn{}
	fresh, err := s.own(tx, add)
	if err != nil {
		tx.rollback()
		return Hairpin{}, false, err
	}
	put(tx, s.hairpins, h.ID(), rule)
	if err := s.commit(ctx, tx, edit{fresh: fresh, hairpinAdd: rule.hairpinned(add)}); err != nil {
		return Hairpin{}, false, fmt.Errorf("adding %s: %w", h, err)
	}
	if h.dnat().ByInterface() {
		s.followIfs = true
		if err := s.refreshDerived(ctx); err != nil {
			s.log.Warn("hairpin by interface", "err", err) // tried again every second
			warn(ctx, err.Error()+"; natmap tries again every second")
		}
	}
	s.log.Info("hairpin added", "rule", rule.String())
	return rule, true, nil
}

// checkHairpinProto refuses a hairpin whose ports a DNAT of the same
// addresses forwards only over the other protocol: the usual slip is a
// forgotten --proto.
func (s *Service) checkHairpinProto(h Hairpin) error {
	other := ProtoUDP
	if h.Proto == ProtoUDP {
		other = ProtoTCP
	}
	d, ok := s.dnats[DNATID{ExtIP: h.ExtIP, IntIP: h.IntIP, Proto: other}]
	if !ok {
		return nil
	}
	if _, same := s.dnats[DNATID{ExtIP: h.ExtIP, IntIP: h.IntIP, Proto: h.Proto}]; same {
		return nil
	}
	for _, p := range h.Ports.Pairs() {
		if _, ok := d.Ports.Target(p.Ext); ok {
			return FieldErr("proto", "the dnat %s forwards port %d over %s, not %s (add --proto %s)", d, p.Ext, other, h.Proto, other)
		}
	}
	return nil
}

// DeleteHairpin removes h's ports from the hairpin with h's ID; the ports
// stay forwarded and reserved while a DNAT still uses them.
func (s *Service) DeleteHairpin(ctx context.Context, h Hairpin) error {
	if err := h.Validate(); err != nil {
		return err
	}
	defer s.lock()()
	old, err := s.findHairpin(h)
	if err != nil {
		return err
	}
	tx := &txn{}
	gone := s.disown(tx, h.dnat().Forwards())
	if left := old.Ports.Without(h.Ports); len(left) == 0 {
		drop(tx, s.hairpins, h.ID())
	} else {
		rule := old
		rule.Ports = left
		put(tx, s.hairpins, h.ID(), rule)
	}
	if err := s.commit(ctx, tx, edit{gone: gone, hairpinDel: old.hairpinned(h.dnat().Forwards())}); err != nil {
		return fmt.Errorf("deleting %s: %w", h, err)
	}
	if h.dnat().ByInterface() {
		if err := s.refreshDerived(ctx); err != nil {
			s.log.Warn("hairpin by interface", "err", err) // tried again every second
		}
	}
	s.log.Info("hairpin deleted", "rule", h.String())
	return nil
}

// CheckHairpin returns the hairpin that holds every port of h, or an error
// that wraps ErrNotFound, as DeleteHairpin would.
func (s *Service) CheckHairpin(_ context.Context, h Hairpin) (Hairpin, error) {
	if err := h.Validate(); err != nil {
		return Hairpin{}, err
	}
	defer s.lock()()
	return s.findHairpin(h)
}

// findHairpin is the hairpin with h's ID if it holds every port of h.
func (s *Service) findHairpin(h Hairpin) (Hairpin, error) {
	old, ok := s.hairpins[h.ID()]
	if !ok {
		return Hairpin{}, fmt.Errorf("no hairpin rule %s -> %s (%s): %w", h.ExtIP, h.IntIP, h.Proto, ErrNotFound)
	}
	if miss := missingFrom(old.Ports, h.dnat()); len(miss) > 0 {
		return Hairpin{}, fmt.Errorf("port %d/%s is not in hairpin %s: %w", miss[0].Ext.Port(), h.Proto, old, ErrNotFound)
	}
	return old, nil
}

// AddSNAT adds sn. The same rule again is a no-op; the same traffic sent
// to another address is a conflict.
func (s *Service) AddSNAT(ctx context.Context, sn SNAT) (changed bool, err error) {
	if err := sn.Validate(); err != nil {
		return false, err
	}
	defer s.lock()()
	if old, ok := s.snats[sn.ID()]; ok {
		if old == sn {
			return false, nil
		}
		return false, fmt.Errorf("traffic from %s out %s already gets source %s: %w", PrefixString(sn.IntNet), sn.ExtIf, old.To(), ErrConflict)
	}
	tx := &txn{}
	put(tx, s.snats, sn.ID(), sn)
	if err := s.commit(ctx, tx, edit{rules: true}); err != nil {
		return false, fmt.Errorf("adding %s: %w", sn, err)
	}
	s.log.Info("snat added", "rule", sn.String())
	return true, nil
}

// DeleteSNAT removes sn, which must exist as given.
func (s *Service) DeleteSNAT(ctx context.Context, sn SNAT) error {
	if err := sn.Validate(); err != nil {
		return err
	}
	defer s.lock()()
	if err := s.findSNAT(sn); err != nil {
		return err
	}
	tx := &txn{}
	drop(tx, s.snats, sn.ID())
	if err := s.commit(ctx, tx, edit{rules: true}); err != nil {
		return fmt.Errorf("deleting %s: %w", sn, err)
	}
	s.log.Info("snat deleted", "rule", sn.String())
	return nil
}

// CheckSNAT reports whether sn is present as given: nil, or an error that
// wraps ErrNotFound, as DeleteSNAT would.
func (s *Service) CheckSNAT(_ context.Context, sn SNAT) error {
	if err := sn.Validate(); err != nil {
		return err
	}
	defer s.lock()()
	return s.findSNAT(sn)
}

func (s *Service) findSNAT(sn SNAT) error {
	if old, ok := s.snats[sn.ID()]; !ok || old != sn {
		return fmt.Errorf("no %s: %w", sn, ErrNotFound)
	}
	return nil
}

// AddPolicyRoute installs p. The same route again is a no-op; a table
// that routes via another gateway is a conflict; a gateway on no
// directly connected network is refused.
func (s *Service) AddPolicyRoute(p PolicyRoute) (changed bool, err error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	defer s.lock()()
	if reason, ok := s.routes[p]; ok && reason == "" {
		return false, nil
	}
	if err := tableClash(p, maps.Keys(s.routes)); err != nil {
		return false, err
	}
	if err := s.router.CheckGateway(p.Via); err != nil {
		return false, err
	}
	if err := s.router.AddPolicyRoute(p); err != nil {
		return false, fmt.Errorf("adding %s: %w", p, err)
	}
	reason, had := s.routes[p]
	s.routes[p] = ""
	if err := s.persist(Delta{Add: State{PolicyRoutes: []PolicyRoute{p}}}); err != nil {
		if had {
			s.routes[p] = reason
		} else {
			delete(s.routes, p)
			if uerr := s.router.DeletePolicyRoute(p, s.lastInTable(p)); uerr != nil {
				s.log.Error("rolling back a policy route", "route", p.String(), "err", uerr)
			}
		}
		return false, err
	}
	s.changes++
	s.log.Info("policy route added", "route", p.String())
	return true, nil
}

// DeletePolicyRoute removes p: its rule, and its table's routes when no
// other policy route uses the table.
func (s *Service) DeletePolicyRoute(p PolicyRoute) error {
	if err := p.Validate(); err != nil {
		return err
	}
	defer s.lock()()
	reason, err := s.findPolicyRoute(p)
	if err != nil {
		return err
	}
	if reason == "" {
		if err := s.router.DeletePolicyRoute(p, s.lastInTable(p)); err != nil {
			return fmt.Errorf("deleting %s: %w", p, err)
		}
	}
	delete(s.routes, p)
	if err := s.persist(Delta{Del: State{PolicyRoutes: []PolicyRoute{p}}}); err != nil {
		s.routes[p] = reason
		if reason == "" {
			if uerr := s.router.AddPolicyRoute(p); uerr != nil {
				s.log.Error("rolling back a policy route deletion", "route", p.String(), "err", uerr)
			}
		}
		return err
	}
	s.changes++
	s.log.Info("policy route deleted", "route", p.String())
	return nil
}

// CheckPolicyRoute reports whether p is one of natmap's policy routes:
// nil, or an error that wraps ErrNotFound, as DeletePolicyRoute would.
func (s *Service) CheckPolicyRoute(p PolicyRoute) error {
	if err := p.Validate(); err != nil {
		return err
	}
	defer s.lock()()
	_, err := s.findPolicyRoute(p)
	return err
}

// findPolicyRoute returns why p is not installed ("" when it is).
func (s *Service) findPolicyRoute(p PolicyRoute) (reason string, err error) {
	reason, ok := s.routes[p]
	if !ok {
		return "", fmt.Errorf("no %s: %w", p, ErrNotFound)
	}
	return reason, nil
}

// lastInTable reports whether p is the only policy route using its table.
func (s *Service) lastInTable(p PolicyRoute) bool {
	for q := range s.routes {
		if q != p && q.Table == p.Table {
			return false
		}
	}
	return true
}

// rules are the SNAT and masquerade rules of the model for Apply and
// Check, in evaluation order (the most specific source first), without
// the hairpins (the backend keeps those as elements).
func (s *Service) rules() Rules { return s.rulesWith(false) }

// rulesWith are the rules, with the hairpins or without.
func (s *Service) rulesWith(hairpins bool) Rules {
	var r Rules
	r.SNATs = slices.SortedFunc(maps.Values(s.snats), compareSNAT)
	if hairpins {
		for _, h := range slices.SortedFunc(maps.Values(s.hairpins), compareHairpin) {
			r.Hairpinned = append(r.Hairpinned, h.hairpinned(h.dnat().Forwards())...)
		}
		r.Hairpinned = append(r.Hairpinned, s.derivedHP...)
	}
	for _, m := range s.mappings {
		if m.net.IsValid() && !slices.Contains(r.SameNet, m.net) {
			r.SameNet = append(r.SameNet, m.net)
		}
	}
	slices.SortFunc(r.SameNet, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return r
}

func (s *Service) activeRuleset() Ruleset {
	rs := Ruleset{Forwards: make([]Forward, 0, len(s.forwards)+len(s.derived)), Rules: s.rulesWith(true)}
	rs.Forwards = append(rs.Forwards, s.derived...)
	for ep, e := range s.forwards {
		_, off := s.inactive[ep]
		_, down := s.parked[ep]
		if !off && !down {
			rs.Forwards = append(rs.Forwards, e.f)
		}
	}
	return rs
}

// Ruleset returns what natmap has installed in the kernel.
func (s *Service) Ruleset() Ruleset {
	defer s.lock()()
	return s.activeRuleset()
}

// State returns the desired state as it would be persisted.
func (s *Service) State() State {
	defer s.lock()()
	return s.snapshot()
}

// snapshot is the persisted form of the current model, rules sorted.
func (s *Service) snapshot() State {
	return sortedState(s.dnats, s.hairpins, s.snats, slices.Collect(maps.Keys(s.routes)), s.mappings,
		State{NextMappingID: s.nextID, IPForward: s.state.IPForward, IPv6Forward: s.state.IPv6Forward})
}

// compareSNAT orders SNAT rules as they are evaluated: the most specific
// source first.
func compareSNAT(a, b SNAT) int {
	return cmp.Or(b.IntNet.Bits()-a.IntNet.Bits(), a.IntNet.Addr().Compare(b.IntNet.Addr()), strings.Compare(a.ExtIf, b.ExtIf))
}

func compareHairpin(a, b Hairpin) int { return compareDNAT(a.dnat(), b.dnat()) }

func comparePolicyRoute(a, b PolicyRoute) int {
	return cmp.Or(cmp.Compare(a.Table, b.Table), a.SrcIP.Compare(b.SrcIP), a.Via.Compare(b.Via))
}

// Status is a rule with whether it is in the kernel.
type Status[R any] struct {
	// Rule is the rule as stored.
	Rule R
	// Status is "active", "inactive" (nothing installed) or "partial".
	Status string
	// Reason says why the rule, or some of its forwards, is not installed.
	Reason string
	// Inactive lists the external ports that are not installed.
	Inactive []uint16
	// Counter is what the kernel counted for the rule's forwards (set by
	// ListCounted, with a backend that counts).
	Counter *Counter
}

// Listing is every rule with its status, each kind sorted.
type Listing struct {
	// Dnats are the DNAT rules.
	Dnats []Status[DNAT]
	// Hairpins are the hairpin rules.
	Hairpins []Status[Hairpin]
	// Snats are the SNAT rules (always active).
	Snats []SNAT
	// PolicyRoutes are the policy routes.
	PolicyRoutes []Status[PolicyRoute]
	// Mappings are the Docker mappings.
	Mappings []Status[Mapping]
}

// List returns every rule with its status.
func (s *Service) List() Listing {
	defer s.lock()()
	return s.list()
}

// EachExtAddr calls f with the external address of every dnat, hairpin
// and snat rule (the zero Addr for one by interface, or a masquerade), in
// no order, under the lock: a count over them (status's standby rules)
// needs no sorted listing.
func (s *Service) EachExtAddr(f func(netip.Addr)) {
	defer s.lock()()
	for _, d := range s.dnats {
		f(d.ExtIP)
	}
	for _, h := range s.hairpins {
		f(h.ExtIP)
	}
	for _, sn := range s.snats {
		f(sn.ExtIP)
	}
}

// ListCounted is List with each forwarding rule's kernel counters: the
// packets and bytes its clients sent, summed over its forwards (a dnat
// and a hairpin of the same forward share them). It reads every counter
// from the kernel, so it costs more than List.
func (s *Service) ListCounted(ctx context.Context) (Listing, error) {
	s.mu.Lock()
	l := s.list()
	installed := s.activeRuleset().Forwards
	s.mu.Unlock()
	counts, err := s.backend.Counters(ctx, installed)
	if err != nil {
		return l, fmt.Errorf("reading the kernel's counters: %w", err)
	}
	if counts == nil {
		return l, nil
	}
	sum := func(fs []Forward) *Counter {
		var c Counter
		for _, f := range fs {
			n := counts[f.Endpoint()]
			c.Packets += n.Packets
			c.Bytes += n.Bytes
		}
		return &c
	}
	for i := range l.Dnats {
		l.Dnats[i].Counter = sum(l.Dnats[i].Rule.Forwards())
	}
	for i := range l.Hairpins {
		l.Hairpins[i].Counter = sum(l.Hairpins[i].Rule.dnat().Forwards())
	}
	for i := range l.Mappings {
		l.Mappings[i].Counter = sum([]Forward{l.Mappings[i].Rule.forward()})
	}
	return l, nil
}

func (s *Service) list() Listing {
	st := s.snapshot()
	var l Listing
	for _, d := range st.Dnats {
		l.Dnats = append(l.Dnats, forwardStatus(d, d.Forwards(), s.inactive))
	}
	for _, h := range st.Hairpins {
		l.Hairpins = append(l.Hairpins, forwardStatus(h, h.dnat().Forwards(), s.inactive))
	}
	l.Snats = st.Snats
	for _, m := range st.Mappings {
		ms := forwardStatus(m, []Forward{m.forward()}, s.inactive)
		if why, down := s.parked[m.forward().Endpoint()]; down {
			ms.Status, ms.Reason = "inactive", why
		}
		l.Mappings = append(l.Mappings, ms)
	}
	for _, p := range st.PolicyRoutes {
		ps := Status[PolicyRoute]{Rule: p, Status: "active"}
		if reason := s.routes[p]; reason != "" {
			ps.Status, ps.Reason = "inactive", reason
		}
		l.PolicyRoutes = append(l.PolicyRoutes, ps)
	}
	return l
}

func forwardStatus[R any](rule R, fs []Forward, inactive map[Endpoint]string) Status[R] {
	var reasons []string
	var ports []uint16
	for _, f := range fs {
		if why, off := inactive[f.Endpoint()]; off {
			reasons = append(reasons, why)
			ports = append(ports, f.Ext.Port())
		}
	}
	st := Status[R]{Rule: rule, Status: "active", Inactive: ports}
	switch {
	case len(reasons) == len(fs):
		st.Status = "inactive"
	case len(reasons) > 0:
		st.Status = "partial"
	}
	sort.Strings(reasons)
	st.Reason = strings.Join(reasons, "; ")
	return st
}

// Stats are counts for the status report.
type Stats struct {
	// Dnats is the number of DNAT rules.
	Dnats int `json:"dnat"`
	// Hairpins is the number of hairpin rules.
	Hairpins int `json:"hairpin"`
	// Snats is the number of SNAT rules.
	Snats int `json:"snat"`
	// PolicyRoutes is the number of policy routes.
	PolicyRoutes int `json:"policy_route"`
	// Mappings is the number of Docker mappings.
	Mappings int `json:"mapping"`
	// Forwards is the number of forwarded ports.
	Forwards int `json:"forwards"`
	// Inactive is how many forwards wait for their port.
	Inactive int `json:"inactive"`
	// Reservations is how many ports are held.
	Reservations int `json:"reservations"`
	// Changes counts changes applied since the daemon started.
	Changes int `json:"changes"`
	// IPForward reports that natmap enabled IPv4 forwarding.
	IPForward bool `json:"ip_forward"`
	// Repairs counts the times natmap restored its rules after somebody
	// else changed them.
	Repairs int `json:"repairs"`
	// ReserveFailures counts the port reservations refused since start
	// (another program held the port, or descriptors ran out).
	ReserveFailures int `json:"reserve_failures"`
	// ByState counts the rules of each kind ("dnat", "hairpin", "snat",
	// "policy_route", "mapping") by status ("active", "partial",
	// "inactive").
	ByState map[string]map[string]int `json:"by_state"`
	// LastRepair is when it last did, if ever.
	LastRepair *time.Time `json:"last_repair,omitempty"`
}

// Stats returns counts of what the service holds.
func (s *Service) Stats() Stats {
	defer s.lock()()
	return s.stats()
}

// PublishStats keeps what PublishedStats returns up to date until ctx
// ends: after a change it counts once under the lock, then waits at
// least interval before counting again, however many changes come.
func (s *Service) PublishStats(ctx context.Context, interval time.Duration) {
	for {
		s.mu.Lock() // not s.lock: counting is no change to count again
		st := s.stats()
		s.mu.Unlock()
		s.published.Store(&st)
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		select {
		case <-ctx.Done():
			return
		case <-s.counted:
		}
	}
}

// PublishedStats are the counts PublishStats last made, read without the
// service lock (for a metrics scrape, which must never hold up a change);
// before PublishStats ran they are counted now.
func (s *Service) PublishedStats() Stats {
	if st := s.published.Load(); st != nil {
		return *st
	}
	return s.Stats()
}

func (s *Service) stats() Stats {
	var lastRepair *time.Time
	if s.repairs > 0 {
		t := s.lastRepair
		lastRepair = &t
	}
	return Stats{
		ByState:         s.byState(),
		Dnats:           len(s.dnats),
		Hairpins:        len(s.hairpins),
		Snats:           len(s.snats),
		PolicyRoutes:    len(s.routes),
		Mappings:        len(s.mappings),
		Forwards:        len(s.forwards),
		Inactive:        len(s.inactive),
		Reservations:    len(s.holds),
		Changes:         s.changes,
		IPForward:       s.state.IPForward,
		Repairs:         s.repairs,
		ReserveFailures: s.reserveFailures,
		LastRepair:      lastRepair,
	}
}

// byState counts the rules of each kind by status, as a listing shows
// them, from the rules themselves: the counting runs under the lock after
// changes (PublishStats) and on every status request, and building the
// sorted listing of 10,000 rules for it held up the changes behind it.
func (s *Service) byState() map[string]map[string]int {
	out := map[string]map[string]int{}
	count := func(kind, status string) {
		if out[kind] == nil {
			out[kind] = map[string]int{}
		}
		out[kind][status]++
	}
	// statusOf is forwardStatus's Status, without its reasons and ports.
	statusOf := func(forwards func() []Forward) string {
		fs, off := forwards(), 0
		for _, f := range fs {
			if _, ok := s.inactive[f.Endpoint()]; ok {
				off++
			}
		}
		switch {
		case off == len(fs):
			return "inactive"
		case off > 0:
			return "partial"
		}
		return "active"
	}
	if len(s.inactive) == 0 && len(s.parked) == 0 {
		// Every forward is installed: every rule that has one is active.
		for kind, n := range map[string]int{"dnat": len(s.dnats), "hairpin": len(s.hairpins), "snat": len(s.snats), "mapping": len(s.mappings)} {
			if n > 0 {
				out[kind] = map[string]int{"active": n}
			}
		}
	} else {
		for _, d := range s.dnats {
			count("dnat", statusOf(d.Forwards))
		}
		for _, h := range s.hairpins {
			count("hairpin", statusOf(h.dnat().Forwards))
		}
		for range s.snats {
			count("snat", "active")
		}
		for _, m := range s.mappings {
			status := statusOf(func() []Forward { return []Forward{m.forward()} })
			if _, down := s.parked[m.forward().Endpoint()]; down {
				status = "inactive"
			}
			count("mapping", status)
		}
	}
	for _, reason := range s.routes {
		status := "active"
		if reason != "" {
			status = "inactive"
		}
		count("policy_route", status)
	}
	return out
}

// Summary is a one-line account of the counts, for a service manager's
// status line.
func (st Stats) Summary() string {
	return fmt.Sprintf("%d forwards (%d inactive): %d dnat, %d hairpin, %d snat, %d policy routes, %d docker mappings",
		st.Forwards, st.Inactive, st.Dnats, st.Hairpins, st.Snats, st.PolicyRoutes, st.Mappings)
}
