package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
)

// Service owns natmap's desired state and is the one writer of the kernel,
// the reservations and the state file. Every change runs under one lock:
// validate -> reserve -> apply (one kernel transaction) -> persist. A
// failure at any step undoes the steps before it, so the kernel, the
// reservations and the state file stay exactly as they were.
type Service struct {
	backend  Backend
	reserver Reserver
	store    Store
	sys      System
	log      *slog.Logger

	mu       sync.Mutex
	state    State                // IP forwarding flags; rules live in rules
	rules    map[DNATID]DNAT      // every rule, active or not
	forwards map[Endpoint]Forward // every forward of every rule
	inactive map[Endpoint]string  // forwards not in the kernel, and why
	holds    map[Endpoint]*hold   // reservations and how many forwards use each
	changes  int                  // changes applied since start
}

type hold struct {
	c     io.Closer
	users int
}

// NewService returns a Service with no rules. Call Start to restore a
// saved state before serving requests.
func NewService(b Backend, r Reserver, st Store, sys System, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{
		backend:  b,
		reserver: r,
		store:    st,
		sys:      sys,
		log:      log,
		rules:    map[DNATID]DNAT{},
		forwards: map[Endpoint]Forward{},
		inactive: map[Endpoint]string{},
		holds:    map[Endpoint]*hold{},
	}
}

// BackendName names the backend in use.
func (s *Service) BackendName() string { return s.backend.Name() }

// Start restores st: it reserves every port still free, marks the forwards
// whose port another program holds inactive (they stay in the state and are
// retried by RetryInactive), and replaces natmap's kernel rules with the
// active forwards in one transaction.
func (s *Service) Start(ctx context.Context, st State) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("restoring state: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = State{IPForward: st.IPForward, IPv6Forward: st.IPv6Forward}
	for _, d := range st.Dnats {
		s.rules[d.ID()] = d
		for _, f := range d.Forwards() {
			s.forwards[f.Endpoint()] = f
			if err := s.take(f.Endpoint()); err != nil {
				s.inactive[f.Endpoint()] = err.Error()
				s.log.Warn("forward inactive: port taken by another program", "forward", f.String(), "err", err)
			}
		}
	}
	if err := s.backend.Replace(ctx, s.activeRuleset()); err != nil {
		s.releaseAllHolds()
		return fmt.Errorf("installing %d forwards with %s: %w", len(s.forwards)-len(s.inactive), s.backend.Name(), err)
	}
	if st.IPForward || st.IPv6Forward {
		if err := s.sys.EnableForwarding(st.IPv6Forward); err != nil {
			s.log.Warn("enabling IP forwarding again failed", "err", err)
		}
	}
	s.log.Info("state restored", "rules", len(s.rules), "forwards", len(s.forwards), "inactive", len(s.inactive), "backend", s.backend.Name())
	return nil
}

// AddDNAT adds d, merging it into the rule with the same ID. Adding what is
// already there is a no-op reported by changed == false. The returned rule
// is the whole rule as now stored.
func (s *Service) AddDNAT(ctx context.Context, d DNAT) (rule DNAT, changed bool, err error) {
	if err := d.Validate(); err != nil {
		return DNAT{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var fresh []Forward
	for _, f := range d.Forwards() {
		cur, exists := s.forwards[f.Endpoint()]
		if !exists {
			fresh = append(fresh, f)
			continue
		}
		if cur != f {
			return DNAT{}, false, fmt.Errorf("%s is already forwarded to %s%s: %w", f.Endpoint(), cur.Int, ifSuffix(cur.ExtIf), ErrConflict)
		}
	}
	old, hadRule := s.rules[d.ID()]
	if len(fresh) == 0 {
		return old, false, nil
	}
	taken, err := s.takeAll(fresh)
	if err != nil {
		return DNAT{}, false, err
	}
	if err := s.backend.Apply(ctx, Change{Add: fresh}); err != nil {
		s.releaseAll(taken)
		return DNAT{}, false, fmt.Errorf("adding dnat %s: %w", d, err)
	}
	rule = d
	if hadRule {
		rule = old
		rule.Ports = PortListOf(append(old.Ports.Pairs(), pairsOf(fresh)...))
		rule.PreserveSrcIP = old.PreserveSrcIP || d.PreserveSrcIP
	}
	s.rules[d.ID()] = rule
	for _, f := range fresh {
		s.forwards[f.Endpoint()] = f
	}
	if err := s.persist(); err != nil {
		for _, f := range fresh {
			delete(s.forwards, f.Endpoint())
		}
		s.restoreRule(d.ID(), old, hadRule)
		s.undo(ctx, Change{Add: fresh})
		s.releaseAll(taken)
		return DNAT{}, false, err
	}
	s.changes++
	s.log.Info("dnat added", "rule", d.String())
	return rule, true, nil
}

// DeleteDNAT removes d's ports from the rule with d's ID. Every port of d
// must be forwarded by that rule, or nothing is changed and the error wraps
// ErrNotFound. Only the reservations of the removed ports are released.
func (s *Service) DeleteDNAT(ctx context.Context, d DNAT) error {
	if err := d.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.rules[d.ID()]
	if !ok {
		return fmt.Errorf("no dnat rule %s -> %s (%s%s): %w", d.ExtIP, d.IntIP, d.Proto, ifSuffix(d.ExtIf), ErrNotFound)
	}
	gone := d.Forwards()
	var active []Forward
	for _, f := range gone {
		if cur, ok := s.forwards[f.Endpoint()]; !ok || cur != f {
			return fmt.Errorf("port %d/%s is not forwarded by dnat %s: %w", f.Ext.Port(), f.Proto, old, ErrNotFound)
		}
		if _, off := s.inactive[f.Endpoint()]; !off {
			active = append(active, f)
		}
	}
	if err := s.backend.Apply(ctx, Change{Del: active}); err != nil {
		return fmt.Errorf("deleting dnat %s: %w", d, err)
	}
	left := slices.DeleteFunc(old.Ports.Pairs(), func(p PortPair) bool { return d.Ports.Has(p.Ext) })
	if len(left) == 0 {
		delete(s.rules, d.ID())
	} else {
		rule := old
		rule.Ports = PortListOf(left)
		s.rules[d.ID()] = rule
	}
	for _, f := range gone {
		delete(s.forwards, f.Endpoint())
	}
	if err := s.persist(); err != nil {
		for _, f := range gone {
			s.forwards[f.Endpoint()] = f
		}
		s.rules[d.ID()] = old
		s.undo(ctx, Change{Del: active})
		return err
	}
	for _, f := range gone {
		if _, off := s.inactive[f.Endpoint()]; off {
			delete(s.inactive, f.Endpoint())
			continue
		}
		s.release(f.Endpoint())
	}
	s.changes++
	s.log.Info("dnat deleted", "rule", d.String())
	return nil
}

// Clear removes every rule from the kernel and the state and releases every
// reservation. IP forwarding settings stay.
func (s *Service) Clear(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	before := s.activeRuleset()
	if err := s.backend.Replace(ctx, Ruleset{}); err != nil {
		return fmt.Errorf("clearing rules: %w", err)
	}
	rules, forwards, inactive := s.rules, s.forwards, s.inactive
	s.rules, s.forwards, s.inactive = map[DNATID]DNAT{}, map[Endpoint]Forward{}, map[Endpoint]string{}
	if err := s.persist(); err != nil {
		s.rules, s.forwards, s.inactive = rules, forwards, inactive
		if uerr := s.backend.Replace(ctx, before); uerr != nil {
			s.log.Error("restoring rules after a failed clear", "err", uerr)
		}
		return err
	}
	s.releaseAllHolds()
	s.changes++
	s.log.Info("all rules cleared", "rules", len(rules))
	return nil
}

// EnableForwarding turns IP forwarding on now and at every later start.
func (s *Service) EnableForwarding(ipv6 bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.sys.EnableForwarding(ipv6); err != nil {
		return fmt.Errorf("enabling IP forwarding: %w", err)
	}
	prev := s.state
	s.state.IPForward = true
	s.state.IPv6Forward = s.state.IPv6Forward || ipv6
	if s.state.IPForward == prev.IPForward && s.state.IPv6Forward == prev.IPv6Forward {
		return nil
	}
	if err := s.persist(); err != nil {
		s.state = prev
		return err
	}
	return nil
}

// RetryInactive tries again to reserve the ports of inactive forwards and
// installs those it gets, in one transaction. It returns how many came back.
func (s *Service) RetryInactive(ctx context.Context) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var back []Forward
	for ep := range s.inactive {
		if err := s.take(ep); err != nil {
			s.inactive[ep] = err.Error()
			continue
		}
		back = append(back, s.forwards[ep])
	}
	if len(back) == 0 {
		return 0
	}
	if err := s.backend.Apply(ctx, Change{Add: back}); err != nil {
		for _, f := range back {
			s.release(f.Endpoint())
		}
		s.log.Error("installing forwards whose ports came free", "err", err)
		return 0
	}
	for _, f := range back {
		delete(s.inactive, f.Endpoint())
		s.log.Info("forward active again: its port came free", "forward", f.String())
	}
	return len(back)
}

// Close releases every reservation. Kernel rules stay in place so traffic
// keeps flowing while the daemon restarts.
func (s *Service) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseAllHolds()
}

func (s *Service) activeRuleset() Ruleset {
	rs := Ruleset{Forwards: make([]Forward, 0, len(s.forwards))}
	for ep, f := range s.forwards {
		if _, off := s.inactive[ep]; !off {
			rs.Forwards = append(rs.Forwards, f)
		}
	}
	return rs
}

// snapshot is the persisted form of the current model, rules sorted.
func (s *Service) snapshot() State {
	st := s.state
	st.Dnats = slices.SortedFunc(maps.Values(s.rules), compareDNAT)
	return st
}

func (s *Service) persist() error {
	if err := s.store.Save(s.snapshot()); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// undo reverts a kernel change after a later step failed.
func (s *Service) undo(ctx context.Context, c Change) {
	if err := s.backend.Apply(ctx, c.Inverse()); err != nil {
		s.log.Error("rolling back a kernel change failed; restoring the whole table", "change", c.String(), "err", err)
		if err := s.backend.Replace(ctx, s.activeRuleset()); err != nil {
			s.log.Error("restoring the whole table failed", "err", err)
		}
	}
}

func (s *Service) restoreRule(id DNATID, old DNAT, had bool) {
	if had {
		s.rules[id] = old
	} else {
		delete(s.rules, id)
	}
}

// take reserves ep, or adds a user to its reservation.
func (s *Service) take(ep Endpoint) error {
	if h, ok := s.holds[ep]; ok {
		h.users++
		return nil
	}
	c, err := s.reserver.Reserve(ep)
	if err != nil {
		return err
	}
	s.holds[ep] = &hold{c: c, users: 1}
	return nil
}

// takeAll reserves every forward's endpoint, or none of them.
func (s *Service) takeAll(fs []Forward) ([]Endpoint, error) {
	taken := make([]Endpoint, 0, len(fs))
	for _, f := range fs {
		if err := s.take(f.Endpoint()); err != nil {
			s.releaseAll(taken)
			return nil, fmt.Errorf("reserving %s: %w", f.Endpoint(), err)
		}
		taken = append(taken, f.Endpoint())
	}
	return taken, nil
}

func (s *Service) release(ep Endpoint) {
	h, ok := s.holds[ep]
	if !ok {
		return
	}
	if h.users--; h.users > 0 {
		return
	}
	delete(s.holds, ep)
	if err := h.c.Close(); err != nil {
		s.log.Warn("releasing a port", "endpoint", ep.String(), "err", err)
	}
}

func (s *Service) releaseAll(eps []Endpoint) {
	for _, ep := range eps {
		s.release(ep)
	}
}

func (s *Service) releaseAllHolds() {
	for ep, h := range s.holds {
		if err := h.c.Close(); err != nil {
			s.log.Warn("releasing a port", "endpoint", ep.String(), "err", err)
		}
	}
	s.holds = map[Endpoint]*hold{}
}

func pairsOf(fs []Forward) []PortPair {
	out := make([]PortPair, len(fs))
	for i, f := range fs {
		out[i] = PortPair{Ext: f.Ext.Port(), Int: f.Int.Port()}
	}
	return out
}

func ifSuffix(ifname string) string {
	if ifname == "" {
		return ""
	}
	return " on " + ifname
}

// RuleStatus is a rule with whether its forwards are in the kernel.
type RuleStatus struct {
	// Rule is the rule as stored.
	Rule DNAT
	// Status is "active", "inactive" (no forward installed) or "partial".
	Status string
	// Reason says why forwards are not installed, when some are not.
	Reason string
	// Inactive lists the external ports that are not installed.
	Inactive []uint16
}

// List returns every rule with its status, sorted.
func (s *Service) List() []RuleStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	rules := s.snapshot().Dnats
	out := make([]RuleStatus, len(rules))
	for i, d := range rules {
		var reasons []string
		var ports []uint16
		fs := d.Forwards()
		for _, f := range fs {
			if why, off := s.inactive[f.Endpoint()]; off {
				reasons = append(reasons, why)
				ports = append(ports, f.Ext.Port())
			}
		}
		st := RuleStatus{Rule: d, Status: "active", Inactive: ports}
		switch {
		case len(reasons) == len(fs):
			st.Status = "inactive"
		case len(reasons) > 0:
			st.Status = "partial"
		}
		sort.Strings(reasons)
		st.Reason = strings.Join(reasons, "; ")
		out[i] = st
	}
	return out
}

// Stats are counts for the status report.
type Stats struct {
	// Dnats is the number of DNAT rules.
	Dnats int `json:"dnat"`
	// Forwards is the number of forwarded ports (one per port and rule).
	Forwards int `json:"forwards"`
	// Inactive is how many forwards wait for their port.
	Inactive int `json:"inactive"`
	// Reservations is how many ports are held.
	Reservations int `json:"reservations"`
	// Changes counts changes applied since the daemon started.
	Changes int `json:"changes"`
	// IPForward reports that natmap enabled IPv4 forwarding.
	IPForward bool `json:"ip_forward"`
}

// Stats returns counts of what the service holds.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{
		Dnats:        len(s.rules),
		Forwards:     len(s.forwards),
		Inactive:     len(s.inactive),
		Reservations: len(s.holds),
		Changes:      s.changes,
		IPForward:    s.state.IPForward,
	}
}

// ErrStatus is how the API reports err: the HTTP status of its kind.
func ErrStatus(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return 400
	case errors.Is(err, ErrNotFound):
		return 404
	case errors.Is(err, ErrConflict), errors.Is(err, ErrPortInUse):
		return 409
	case errors.Is(err, ErrUnavailable):
		return 503
	}
	return 500
}
