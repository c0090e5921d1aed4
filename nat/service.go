package nat

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
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

	mu    sync.Mutex // the one writer; take it with lock
	state State      // IP forwarding flags; rules live in the model
	model
	holds   map[Endpoint]io.Closer // one reservation per forward, but the inactive
	nextID  int                    // the next mapping ID
	docker  Containers
	changes int // changes applied since start

	reserveFailures int // reservations refused since start

	repairs    int       // times Heal restored the kernel rules
	lastRepair time.Time // when it last did

	// loopbackTargets counts the forwards to 127.0.0.0/8; settled is
	// what System.Settle last made true (nil: not yet, or it failed).
	loopbackTargets int
	settled         *HostNeeds
	followIfs       bool // a hairpin by interface was seen: RefreshInterfaces looks
	dockerSeen      bool // Docker answered since start (ResettleHost)

	flushMu sync.Mutex
	toFlush []Forward // UDP forwards removed, whose conntrack entries go when the lock is released

	// published are the counts PublishedStats serves without the lock;
	// counted is signalled at each unlock (PublishStats counts anew).
	published atomic.Pointer[Stats]
	counted   chan struct{}
	countedFP [13]int // fingerprint's value at the last unlock
}

// model is the rules the Service holds, which Clear empties at once: made
// in one place (newModel), so that no field is forgotten.
type model struct {
	dnats    map[DNATID]DNAT
	hairpins map[HairpinID]Hairpin
	snats    map[SNATID]SNAT
	routes   map[PolicyRoute]string // value: why the route is not installed, or ""
	forwards map[Endpoint]fwdEntry  // every forward of every dnat and hairpin
	inactive map[Endpoint]string    // forwards neither reserved nor in the kernel, and why
	parked   map[Endpoint]string    // forwards reserved but not in the kernel (container down), and why
	mappings map[int]Mapping        // Docker mappings by ID
	// derived and derivedHP are the forwards and hairpin elements
	// installed for hairpins by interface (derived.go).
	derived   []Forward
	derivedHP []Hairpinned
}

func newModel() model {
	return model{
		dnats:    map[DNATID]DNAT{},
		hairpins: map[HairpinID]Hairpin{},
		snats:    map[SNATID]SNAT{},
		routes:   map[PolicyRoute]string{},
		forwards: map[Endpoint]fwdEntry{},
		inactive: map[Endpoint]string{},
		parked:   map[Endpoint]string{},
		mappings: map[int]Mapping{},
	}
}

// fingerprint is what the published counts follow, cheap to take under
// the lock.
func (s *Service) fingerprint() [13]int {
	waiting := 0 // policy routes not installed (there are few)
	for _, why := range s.routes {
		if why != "" {
			waiting++
		}
	}
	return [13]int{s.changes, s.repairs, s.reserveFailures, len(s.forwards), len(s.inactive), len(s.parked),
		len(s.holds), len(s.routes), waiting, len(s.mappings), len(s.dnats), len(s.hairpins), len(s.snats)}
}

// lock takes the service lock and returns what releases it: unlock, then
// flush the conntrack entries of the UDP forwards the change removed (one
// dump of the table per family for the whole change, without holding up
// other requests), before the caller replies.
func (s *Service) lock() (unlock func()) {
	s.mu.Lock()
	return func() {
		// Only what changes the counts has them counted again: the
		// integrity check and listings take the lock too, often.
		fp := s.fingerprint()
		changed := fp != s.countedFP
		s.countedFP = fp
		s.mu.Unlock()
		if changed {
			select {
			case s.counted <- struct{}{}:
			default:
			}
		}
		s.flushMu.Lock()
		fs := s.toFlush
		s.toFlush = nil
		s.flushMu.Unlock()
		if len(fs) == 0 {
			return
		}
		if err := s.sys.FlushConntrack(fs); err != nil {
			s.log.Warn("flushing the conntrack entries of removed UDP forwards", "forwards", len(fs), "err", err)
		}
	}
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
		model:    newModel(),
		holds:    map[Endpoint]io.Closer{},
		nextID:   1,
		docker:   d.Docker,
		counted:  make(chan struct{}, 1),
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
	defer s.lock()()
	if err := s.build(st); err != nil {
		return err
	}
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
	s.countLoopbackTargets()
	s.settle(ctx, true)
	// A crash between a policy route's route and its rule, or before it
	// was saved, leaves natmap's routes or rules that no policy route
	// owns: they go first.
	if err := s.router.PrunePolicyRoutes(st.PolicyRoutes); err != nil {
		s.log.Warn("removing policy routes of natmap's that the state does not hold", "err", err)
	}
	for _, p := range st.PolicyRoutes {
		s.routes[p] = ""
		if err := s.router.AddPolicyRoute(p); err != nil {
			s.routes[p] = err.Error()
			s.log.Warn("policy route not installed", "route", p.String(), "err", err)
		}
	}
	if st.IPForward || st.IPv6Forward {
		if _, err := s.sys.EnableForwarding(st.IPv6Forward); err != nil {
			s.log.Warn("enabling IP forwarding again failed", "err", err)
		}
	}
	s.log.Info("state restored", "dnats", len(s.dnats), "hairpins", len(s.hairpins), "snats", len(s.snats),
		"policy_routes", len(s.routes), "forwards", len(s.forwards), "inactive", len(s.inactive), "backend", s.backend.Name())
	return nil
}

// build fills the empty model with st's rules and forwards, touching
// neither the kernel nor the reservations. Policy routes are left to the
// caller, which installs them.
func (s *Service) build(st State) error {
	s.state = State{IPForward: st.IPForward, IPv6Forward: st.IPv6Forward}
	tx := &txn{} // never rolled back: the model is thrown away on failure
	for _, d := range st.Dnats {
		s.dnats[d.ID()] = d
		if _, err := s.own(tx, d.Forwards()); err != nil {
			return err
		}
	}
	for _, h := range st.Hairpins {
		if !h.LanCIDR.IsValid() { // migrated from the earlier natmap
			lan, err := s.router.ConnectedPrefix(h.IntIP)
			if err != nil {
				return fmt.Errorf("finding the LAN of hairpin %s: %w", h, err)
			}
			h.LanCIDR = lan
		}
		s.hairpins[h.ID()] = h
		s.followIfs = s.followIfs || h.dnat().ByInterface()
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
		if !m.Target().IsValid() {
			s.parked[m.forward().Endpoint()] = fmt.Sprintf("container %s is not running", m.Container)
		}
	}
	s.nextID = max(s.nextID, st.NextMappingID)
	if s.followIfs {
		var err error
		if s.derived, s.derivedHP, err = s.derive(); err != nil {
			s.log.Warn("hairpin by interface", "err", err) // tried again at the next refresh
		}
	}
	return nil
}

// AddDNAT adds d, merging it into the rule with the same ID. Adding what is
// already there is a no-op reported by changed == false. The returned rule
// is the whole rule as now stored.
func (s *Service) AddDNAT(ctx context.Context, d DNAT) (rule DNAT, changed bool, err error) {
	if err := d.Validate(); err != nil {
		return DNAT{}, false, err
	}
	defer s.lock()()
	old, had := s.dnats[d.ID()]
	add := missingFrom(old.Ports, d)
	if len(add) == 0 {
		return old, false, nil
	}
	rule = d
	if had {
		rule = old
		rule.Ports = old.Ports.Union(PortListOf(pairsOf(add)))
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
	defer s.lock()()
	old, err := s.findDNAT(d)
	if err != nil {
		return err
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

// CheckDNAT returns the rule that forwards every port of d, or an error
// that wraps ErrNotFound and says what is missing, as DeleteDNAT would.
func (s *Service) CheckDNAT(_ context.Context, d DNAT) (DNAT, error) {
	if err := d.Validate(); err != nil {
		return DNAT{}, err
	}
	defer s.lock()()
	return s.findDNAT(d)
}

// findDNAT is the rule with d's ID if it forwards every port of d.
func (s *Service) findDNAT(d DNAT) (DNAT, error) {
	old, ok := s.dnats[d.ID()]
	if !ok {
		return DNAT{}, fmt.Errorf("no dnat rule %s -> %s (%s%s): %w", d.ExtIP, d.IntIP, d.Proto, ifSuffix(d.ExtIf), ErrNotFound)
	}
	if miss := missingFrom(old.Ports, d); len(miss) > 0 {
		return DNAT{}, fmt.Errorf("port %d/%s is not forwarded by dnat %s: %w", miss[0].Ext.Port(), d.Proto, old, ErrNotFound)
	}
	return old, nil
}

// Clear removes every rule and policy route from the kernel and the state
// and releases every reservation. IP forwarding settings stay.
func (s *Service) Clear(ctx context.Context) error {
	defer s.lock()()
	before := s.activeRuleset()
	if err := s.backend.Replace(ctx, Ruleset{}); err != nil {
		return fmt.Errorf("clearing rules: %w", err)
	}
	old := s.model
	s.model = newModel()
	if err := s.persistAll(); err != nil {
		s.model = old
		if uerr := s.backend.Replace(ctx, before); uerr != nil {
			s.log.Error("restoring rules after a failed clear", "err", uerr)
		}
		return err
	}
	s.releaseAllHolds()
	lastUse := map[uint32]int{}
	for p := range old.routes {
		lastUse[p.Table]++
	}
	for p, reason := range old.routes {
		lastUse[p.Table]--
		if reason != "" {
			continue
		}
		if err := s.router.DeletePolicyRoute(p, lastUse[p.Table] == 0); err != nil {
			s.log.Error("removing a policy route while clearing", "route", p.String(), "err", err)
		}
	}
	s.changes++
	s.flushUDP(before.Forwards)
	s.countLoopbackTargets()
	s.settle(ctx, false)
	s.log.Info("all rules cleared", "dnats", len(old.dnats), "hairpins", len(old.hairpins), "snats", len(old.snats), "policy_routes", len(old.routes), "mappings", len(old.mappings))
	return nil
}

// EnableForwarding turns IP forwarding on now and at every later start,
// and says what it changed on the host.
func (s *Service) EnableForwarding(ipv6 bool) ([]string, error) {
	defer s.lock()()
	changed, err := s.sys.EnableForwarding(ipv6)
	if err != nil {
		return changed, fmt.Errorf("enabling IP forwarding: %w", err)
	}
	if len(changed) > 0 {
		s.log.Info("IP forwarding enabled", "changed", changed)
	}
	prev := s.state
	s.state.IPForward = true
	s.state.IPv6Forward = s.state.IPv6Forward || ipv6
	if s.state.IPForward == prev.IPForward && s.state.IPv6Forward == prev.IPv6Forward {
		return changed, nil
	}
	if err := s.persist(Delta{}); err != nil {
		s.state = prev
		return changed, err
	}
	return changed, nil
}

// RetryInactive tries again to reserve the ports of inactive forwards and
// installs those it gets, in one transaction. It returns how many came back.
func (s *Service) RetryInactive(ctx context.Context) int {
	defer s.lock()()
	s.retryRoutes()
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

// retryRoutes installs the policy routes that could not be installed yet
// (a gateway whose network was not up at boot).
func (s *Service) retryRoutes() {
	for p, reason := range s.routes {
		if reason == "" {
			continue
		}
		if err := s.router.AddPolicyRoute(p); err != nil {
			s.routes[p] = err.Error()
			continue
		}
		s.routes[p] = ""
		s.log.Info("policy route installed: it could not be before", "route", p.String(), "was", reason)
	}
}

// Close releases every reservation. Kernel rules stay in place so traffic
// keeps flowing while the daemon restarts.
func (s *Service) Close() {
	defer s.lock()()
	s.releaseAllHolds()
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
