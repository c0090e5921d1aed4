package nat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
	router   Router
	log      *slog.Logger

	mu       sync.Mutex
	state    State // IP forwarding flags; rules live in the maps below
	dnats    map[DNATID]DNAT
	hairpins map[HairpinID]Hairpin
	snats    map[SNATID]SNAT
	routes   map[PolicyRoute]string // value: why the route is not installed, or ""
	forwards map[Endpoint]fwdEntry  // every forward of every dnat and hairpin
	inactive map[Endpoint]string    // forwards neither reserved nor in the kernel, and why
	parked   map[Endpoint]string    // forwards reserved but not in the kernel (container down), and why
	holds    map[Endpoint]io.Closer // one reservation per forward, but the inactive
	mappings map[int]Mapping        // Docker mappings by ID
	targets  map[int]Container      // what each mapping's container resolved to
	nextID   int                    // the next mapping ID
	docker   Containers
	changes  int // changes applied since start
}

// fwdEntry is a forward and how many rules (a dnat, a hairpin) use it.
type fwdEntry struct {
	f      Forward
	owners int
}

// Deps are the Service's collaborators.
type Deps struct {
	// Backend programs the NAT rules.
	Backend Backend
	// Reserver holds ports.
	Reserver Reserver
	// Store persists the state.
	Store Store
	// System changes host settings.
	System System
	// Router programs policy routes.
	Router Router
	// Docker finds containers; nil means Docker is not available.
	Docker Containers
	// Log receives the service's log lines; nil discards them.
	Log *slog.Logger
}

// NewService returns a Service with no rules. Call Start to restore a
// saved state before serving requests.
func NewService(d Deps) *Service {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{
		backend:  d.Backend,
		reserver: d.Reserver,
		store:    d.Store,
		sys:      d.System,
		router:   d.Router,
		log:      d.Log,
		dnats:    map[DNATID]DNAT{},
		hairpins: map[HairpinID]Hairpin{},
		snats:    map[SNATID]SNAT{},
		routes:   map[PolicyRoute]string{},
		forwards: map[Endpoint]fwdEntry{},
		inactive: map[Endpoint]string{},
		parked:   map[Endpoint]string{},
		holds:    map[Endpoint]io.Closer{},
		mappings: map[int]Mapping{},
		targets:  map[int]Container{},
		nextID:   1,
		docker:   d.Docker,
	}
}

// BackendName names the backend in use.
func (s *Service) BackendName() string { return s.backend.Name() }

// Start restores st: it reserves every port still free, marks the forwards
// whose port another program holds inactive (they stay in the state and are
// retried by RetryInactive), replaces natmap's kernel rules with the active
// ones in one transaction, and installs the policy routes.
func (s *Service) Start(ctx context.Context, st State) error {
	if err := st.Validate(); err != nil {
		return fmt.Errorf("restoring state: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = State{IPForward: st.IPForward, IPv6Forward: st.IPv6Forward}
	tx := &txn{} // never rolled back: Start builds from nothing
	for _, d := range st.Dnats {
		s.dnats[d.ID()] = d
		if _, err := s.own(tx, d.Forwards()); err != nil {
			return err
		}
	}
	for _, h := range st.Hairpins {
		s.hairpins[h.ID()] = h
		if _, err := s.own(tx, h.dnat().Forwards()); err != nil {
			return err
		}
	}
	for _, sn := range st.Snats {
		s.snats[sn.ID()] = sn
	}
	for _, m := range st.Mappings {
		m.net = s.netOf(m.ContainerIP)
		s.mappings[m.ID] = m
		s.nextID = max(s.nextID, m.ID+1)
		if _, err := s.own(tx, []Forward{m.forward()}); err != nil {
			return err
		}
		if !m.target().IsValid() {
			s.parked[m.forward().Endpoint()] = fmt.Sprintf("container %s is not running", m.Container)
		}
	}
	s.nextID = max(s.nextID, st.NextMappingID)
	for ep, e := range s.forwards {
		if err := s.take(ep); err != nil {
			s.inactive[ep] = err.Error()
			s.log.Warn("forward inactive: port taken by another program", "forward", e.f.String(), "err", err)
		}
	}
	if err := s.backend.Replace(ctx, s.activeRuleset()); err != nil {
		s.releaseAllHolds()
		return fmt.Errorf("installing %d forwards with %s: %w", len(s.forwards)-len(s.inactive), s.backend.Name(), err)
	}
	for _, m := range s.mappings {
		s.afterInstall(m)
	}
	for _, p := range st.PolicyRoutes {
		s.routes[p] = ""
		if err := s.router.AddPolicyRoute(p); err != nil {
			s.routes[p] = err.Error()
			s.log.Warn("policy route not installed", "route", p.String(), "err", err)
		}
	}
	if st.IPForward || st.IPv6Forward {
		if err := s.sys.EnableForwarding(st.IPv6Forward); err != nil {
			s.log.Warn("enabling IP forwarding again failed", "err", err)
		}
	}
	s.log.Info("state restored", "dnats", len(s.dnats), "hairpins", len(s.hairpins), "snats", len(s.snats),
		"policy_routes", len(s.routes), "forwards", len(s.forwards), "inactive", len(s.inactive), "backend", s.backend.Name())
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
	old, had := s.dnats[d.ID()]
	add := missingFrom(old.Ports, d)
	if len(add) == 0 {
		return old, false, nil
	}
	rule = d
	if had {
		rule = old
		rule.Ports = PortListOf(append(old.Ports.Pairs(), pairsOf(add)...))
		rule.PreserveSrcIP = old.PreserveSrcIP || d.PreserveSrcIP
	}
	tx := &txn{}
	fresh, err := s.own(tx, add)
	if err != nil {
		tx.rollback()
		return DNAT{}, false, err
	}
	put(tx, s.dnats, d.ID(), rule)
	if err := s.commit(ctx, tx, edit{fresh: fresh}); err != nil {
		return DNAT{}, false, fmt.Errorf("adding dnat %s: %w", d, err)
	}
	s.log.Info("dnat added", "rule", d.String())
	return rule, true, nil
}

// DeleteDNAT removes d's ports from the rule with d's ID. Every port of d
// must be forwarded by that rule, or nothing is changed and the error wraps
// ErrNotFound. Only the reservations of forwards no rule uses any more are
// released.
func (s *Service) DeleteDNAT(ctx context.Context, d DNAT) error {
	if err := d.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.dnats[d.ID()]
	if !ok {
		return fmt.Errorf("no dnat rule %s -> %s (%s%s): %w", d.ExtIP, d.IntIP, d.Proto, ifSuffix(d.ExtIf), ErrNotFound)
	}
	if miss := missingFrom(old.Ports, d); len(miss) > 0 {
		return fmt.Errorf("port %d/%s is not forwarded by dnat %s: %w", miss[0].Ext.Port(), d.Proto, old, ErrNotFound)
	}
	tx := &txn{}
	gone := s.disown(tx, d.Forwards())
	if left := old.Ports.Without(d.Ports); len(left) == 0 {
		drop(tx, s.dnats, d.ID())
	} else {
		rule := old
		rule.Ports = left
		put(tx, s.dnats, d.ID(), rule)
	}
	if err := s.commit(ctx, tx, edit{gone: gone}); err != nil {
		return fmt.Errorf("deleting dnat %s: %w", d, err)
	}
	s.log.Info("dnat deleted", "rule", d.String())
	return nil
}

// Clear removes every rule and policy route from the kernel and the state
// and releases every reservation. IP forwarding settings stay.
func (s *Service) Clear(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	before := s.activeRuleset()
	if err := s.backend.Replace(ctx, Ruleset{}); err != nil {
		return fmt.Errorf("clearing rules: %w", err)
	}
	dnats, hairpins, snats, routes := s.dnats, s.hairpins, s.snats, s.routes
	forwards, inactive, parked, mappings := s.forwards, s.inactive, s.parked, s.mappings
	s.dnats, s.hairpins, s.snats = map[DNATID]DNAT{}, map[HairpinID]Hairpin{}, map[SNATID]SNAT{}
	s.forwards, s.inactive, s.routes = map[Endpoint]fwdEntry{}, map[Endpoint]string{}, map[PolicyRoute]string{}
	s.parked, s.mappings = map[Endpoint]string{}, map[int]Mapping{}
	if err := s.persist(); err != nil {
		s.dnats, s.hairpins, s.snats, s.routes = dnats, hairpins, snats, routes
		s.forwards, s.inactive, s.parked, s.mappings = forwards, inactive, parked, mappings
		if uerr := s.backend.Replace(ctx, before); uerr != nil {
			s.log.Error("restoring rules after a failed clear", "err", uerr)
		}
		return err
	}
	s.releaseAllHolds()
	lastUse := map[uint32]int{}
	for p := range routes {
		lastUse[p.Table]++
	}
	for p, reason := range routes {
		lastUse[p.Table]--
		if reason != "" {
			continue
		}
		if err := s.router.DeletePolicyRoute(p, lastUse[p.Table] == 0); err != nil {
			s.log.Error("removing a policy route while clearing", "route", p.String(), "err", err)
		}
	}
	s.changes++
	var udp []Forward
	for _, e := range forwards {
		udp = append(udp, e.f)
	}
	s.flushUDP(udp)
	s.log.Info("all rules cleared", "dnats", len(dnats), "hairpins", len(hairpins), "snats", len(snats), "policy_routes", len(routes), "mappings", len(mappings))
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
		if _, down := s.parked[ep]; down {
			// Reserved now, installed when its container runs.
			delete(s.inactive, ep)
			continue
		}
		back = append(back, s.forwards[ep].f)
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

// own adds a user to each forward. A forward whose endpoint another rule
// sends elsewhere is a conflict. It returns the forwards new to the model.
func (s *Service) own(tx *txn, fs []Forward) ([]Forward, error) {
	var fresh []Forward
	for _, f := range fs {
		e, ok := s.forwards[f.Endpoint()]
		switch {
		case !ok:
			fresh = append(fresh, f)
			put(tx, s.forwards, f.Endpoint(), fwdEntry{f: f, owners: 1})
		case e.f != f:
			return nil, fmt.Errorf("%s is already forwarded to %s%s: %w", f.Endpoint(), e.f.Int, ifSuffix(e.f.ExtIf), ErrConflict)
		default:
			put(tx, s.forwards, f.Endpoint(), fwdEntry{f: f, owners: e.owners + 1})
		}
	}
	return fresh, nil
}

// disown removes a user from each forward and returns those left with none.
func (s *Service) disown(tx *txn, fs []Forward) []Forward {
	var gone []Forward
	for _, f := range fs {
		e := s.forwards[f.Endpoint()]
		if e.owners <= 1 {
			drop(tx, s.forwards, f.Endpoint())
			gone = append(gone, f)
			continue
		}
		put(tx, s.forwards, f.Endpoint(), fwdEntry{f: f, owners: e.owners - 1})
	}
	return gone
}

// edit is what a model change does to the kernel and the reservations.
type edit struct {
	fresh []Forward // new endpoints: reserve, and install unless parked
	gone  []Forward // endpoints no rule uses any more: uninstall, release
	// swapDel and swapAdd change the target of kept endpoints (a container
	// with a new address): kernel only.
	swapDel, swapAdd []Forward
	rules            bool // the SNAT and masquerade rules changed
}

// commit makes the model changes recorded in tx real: it reserves the
// fresh forwards, applies the kernel change in one transaction (with the
// SNAT and masquerade rules rebuilt when e.rules is set), persists, and
// releases what the gone forwards held. On failure everything, tx
// included, is put back as it was.
func (s *Service) commit(ctx context.Context, tx *txn, e edit) error {
	taken, err := s.takeAll(e.fresh)
	if err != nil {
		tx.rollback()
		return err
	}
	ch := Change{Del: s.installed(e.gone), Add: s.installed(e.fresh)}
	ch.Del = append(ch.Del, e.swapDel...)
	ch.Add = append(ch.Add, e.swapAdd...)
	if e.rules {
		r := s.rules()
		ch.Rules = &r
	}
	if err := s.backend.Apply(ctx, ch); err != nil {
		tx.rollback()
		s.releaseAll(taken)
		return err
	}
	if err := s.persist(); err != nil {
		tx.rollback()
		undo := Change{Del: ch.Add, Add: ch.Del}
		if e.rules {
			r := s.rules()
			undo.Rules = &r
		}
		s.revert(ctx, undo)
		s.releaseAll(taken)
		return err
	}
	for _, f := range e.gone {
		ep := f.Endpoint()
		delete(s.parked, ep)
		if _, off := s.inactive[ep]; off {
			delete(s.inactive, ep)
			continue
		}
		s.release(ep)
	}
	s.flushUDP(ch.Del)
	s.changes++
	return nil
}

// installed keeps the forwards that are (or are to be) in the kernel:
// neither inactive nor parked.
func (s *Service) installed(fs []Forward) []Forward {
	var out []Forward
	for _, f := range fs {
		_, off := s.inactive[f.Endpoint()]
		_, down := s.parked[f.Endpoint()]
		if !off && !down {
			out = append(out, f)
		}
	}
	return out
}

// revert undoes a kernel change after a later step failed.
func (s *Service) revert(ctx context.Context, undo Change) {
	if err := s.backend.Apply(ctx, undo); err != nil {
		s.log.Error("rolling back a kernel change failed; restoring the whole table", "change", undo.String(), "err", err)
		if err := s.backend.Replace(ctx, s.activeRuleset()); err != nil {
			s.log.Error("restoring the whole table failed", "err", err)
		}
	}
}

func (s *Service) persist() error {
	if err := s.store.Save(s.snapshot()); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// take reserves ep.
func (s *Service) take(ep Endpoint) error {
	c, err := s.reserver.Reserve(ep)
	if err != nil {
		return err
	}
	s.holds[ep] = c
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
	c, ok := s.holds[ep]
	if !ok {
		return
	}
	delete(s.holds, ep)
	if err := c.Close(); err != nil {
		s.log.Warn("releasing a port", "endpoint", ep.String(), "err", err)
	}
}

func (s *Service) releaseAll(eps []Endpoint) {
	for _, ep := range eps {
		s.release(ep)
	}
}

func (s *Service) releaseAllHolds() {
	for ep := range s.holds {
		s.release(ep)
	}
}

// missingFrom returns d's forwards whose port is not in have with the same
// target.
func missingFrom(have PortList, d DNAT) []Forward {
	var out []Forward
	for _, f := range d.Forwards() {
		if t, ok := have.Target(f.Ext.Port()); !ok || t != f.Int.Port() {
			out = append(out, f)
		}
	}
	return out
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

// txn records how to undo changes to the model's maps.
type txn struct{ undo []func() }

// rollback undoes every recorded change, newest first.
func (t *txn) rollback() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		t.undo[i]()
	}
	t.undo = nil
}

// put sets m[k] = v, recording the undo in t.
func put[K comparable, V any](t *txn, m map[K]V, k K, v V) {
	old, had := m[k]
	m[k] = v
	t.undo = append(t.undo, func() {
		if had {
			m[k] = old
		} else {
			delete(m, k)
		}
	})
}

// drop deletes m[k], recording the undo in t.
func drop[K comparable, V any](t *txn, m map[K]V, k K) {
	old, had := m[k]
	if !had {
		return
	}
	delete(m, k)
	t.undo = append(t.undo, func() { m[k] = old })
}
