package nat

// The strict fakes of the Service's other dependencies, for tests here and
// in the api package (a package of their own would import nat, which
// nat's own tests may not import back).

import (
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"
)

// FakeReserver holds endpoints in memory; busy ones fail like a port that
// another program holds.
type FakeReserver struct {
	held map[Endpoint]bool
	busy map[Endpoint]bool
}

// NewFakeReserver returns a reserver that holds nothing yet.
func NewFakeReserver() *FakeReserver {
	return &FakeReserver{held: map[Endpoint]bool{}, busy: map[Endpoint]bool{}}
}

// Reserve implements Reserver.
func (r *FakeReserver) Reserve(e Endpoint) (io.Closer, error) {
	if r.busy[e] || r.held[e] || r.overlaps(e) {
		return nil, fmt.Errorf("%s is in use by another program: %w", e, ErrPortInUse)
	}
	r.held[e] = true
	return closer(func() error {
		if !r.held[e] {
			return fmt.Errorf("double release of %s", e)
		}
		delete(r.held, e)
		return nil
	}), nil
}

// overlaps is the kernel's rule without SO_REUSEADDR: a socket on the
// wildcard address and one on a single address of the same family, port
// and protocol exclude each other.
func (r *FakeReserver) overlaps(e Endpoint) bool {
	for h := range r.held {
		if h.Proto == e.Proto && h.Addr.Port() == e.Addr.Port() && h.Addr.Addr().Is4() == e.Addr.Addr().Is4() &&
			h.Addr.Addr().IsUnspecified() != e.Addr.Addr().IsUnspecified() {
			return true
		}
	}
	return false
}

type closer func() error

// Close implements io.Closer.
func (c closer) Close() error { return c() }

// Dump lists the endpoints held.
func (r *FakeReserver) Dump() string {
	var eps []string
	for e := range r.held {
		eps = append(eps, e.String())
	}
	slices.Sort(eps)
	return strings.Join(eps, " ")
}

// MemStore keeps the state in memory as a journalling store does: a whole
// state at the first record, then each Delta replayed onto it. Every
// record checks that the replay equals the service's whole state, so
// every test that changes the state also tests its deltas.
type MemStore struct {
	saves    int
	last     State
	based    bool
	failNext error
}

// Save implements Store.
func (m *MemStore) Save(s State) error {
	if err := m.failNext; err != nil {
		m.failNext = nil
		return err
	}
	m.saves++
	m.last, m.based = s, true
	return nil
}

// Record implements Store.
func (m *MemStore) Record(d Delta, whole func() State) error {
	if !m.based {
		return m.Save(whole())
	}
	if err := m.failNext; err != nil {
		m.failNext = nil
		return err
	}
	m.saves++
	m.last = m.last.Replay(d)
	if want := whole(); !reflect.DeepEqual(m.last, want) {
		panic(fmt.Sprintf("replaying the delta %+v gave\n%+v\nthe whole state is\n%+v", d, m.last, want))
	}
	return nil
}

// Compact implements Store.
func (m *MemStore) Compact(time.Duration, func() State) error { return nil }

// Saves counts the states and deltas stored.
func (m *MemStore) Saves() int { return m.saves }

// Last is the state stored last (deltas replayed).
func (m *MemStore) Last() State { return m.last }

// NoSystem changes no host setting; it records what it was asked.
type NoSystem struct {
	enabled int
	flushed []Forward
	settled []HostNeeds // every Settle, in order
	flushes int         // calls of FlushConntrack
	onFlush func()      // called by FlushConntrack, when set
	// ephemeral is the ephemeral port range; zero means Linux's default.
	ephemeral [2]uint16
}

// EphemeralPorts implements System.
func (n *NoSystem) EphemeralPorts() (uint16, uint16, error) {
	if n.ephemeral == [2]uint16{} {
		return 32768, 60999, nil
	}
	return n.ephemeral[0], n.ephemeral[1], nil
}

// EnableForwarding implements System.
func (n *NoSystem) EnableForwarding(bool) ([]string, error) { n.enabled++; return nil, nil }

// Settle implements System.
func (n *NoSystem) Settle(need HostNeeds) error {
	n.settled = append(n.settled, need)
	return nil
}

// FlushConntrack implements System.
func (n *NoSystem) FlushConntrack(fs []Forward) error {
	n.flushed = append(n.flushed, fs...)
	n.flushes++
	if n.onFlush != nil {
		n.onFlush()
	}
	return nil
}

// FakeRouter keeps policy routes in memory; 10.0.0.0/24 and fd00::/64 are
// its connected networks.
type FakeRouter struct {
	routes map[PolicyRoute]bool
	tables map[uint32]bool
	// ifaddrs are the interfaces' addresses.
	ifaddrs map[string][]netip.Addr
}

// InterfaceAddrs implements Router.
func (f *FakeRouter) InterfaceAddrs(ifname string) ([]netip.Addr, error) {
	return f.ifaddrs[ifname], nil
}

// PrunePolicyRoutes implements Router.
func (f *FakeRouter) PrunePolicyRoutes(keep []PolicyRoute) error {
	for p := range f.routes {
		if !slices.Contains(keep, p) {
			delete(f.routes, p)
		}
	}
	return nil
}

// NewFakeRouter returns a router with no policy routes.
func NewFakeRouter() *FakeRouter {
	return &FakeRouter{routes: map[PolicyRoute]bool{}, tables: map[uint32]bool{}}
}

var connected = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("fd00::/64")}

// CheckGateway implements Router.
func (f *FakeRouter) CheckGateway(via netip.Addr) error {
	for _, p := range connected {
		if p.Contains(via) {
			return nil
		}
	}
	return fmt.Errorf("via %s is on no directly connected network: %w", via, ErrInvalid)
}

// ConnectedPrefix implements Router.
func (f *FakeRouter) ConnectedPrefix(ip netip.Addr) (netip.Prefix, error) {
	for _, p := range connected {
		if p.Contains(ip) {
			return p, nil
		}
	}
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}

// AddPolicyRoute implements Router.
func (f *FakeRouter) AddPolicyRoute(p PolicyRoute) error {
	f.routes[p] = true
	f.tables[p.Table] = true
	return nil
}

// DeletePolicyRoute implements Router.
func (f *FakeRouter) DeletePolicyRoute(p PolicyRoute, last bool) error {
	if !f.routes[p] {
		return fmt.Errorf("deleting absent %s", p)
	}
	delete(f.routes, p)
	if last {
		delete(f.tables, p.Table)
	}
	return nil
}

// Dump lists the policy routes and tables.
func (f *FakeRouter) Dump() string {
	var out []string
	for p := range f.routes {
		out = append(out, p.String())
	}
	for t := range f.tables {
		out = append(out, fmt.Sprint("table ", t))
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

// FakePolicy is the policy of a router: 203.0.113.43 and 203.0.113.1 on vmbr0, 10.0.0.1
// on the LAN, 100.64.0.10 on tailscale0.
func FakePolicy() Policy {
	return Policy{
		ExtAllowed: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/28")},
		Addrs: func() (map[netip.Addr]string, error) {
			return map[netip.Addr]string{
				netip.MustParseAddr("203.0.113.43"): "vmbr0", netip.MustParseAddr("203.0.113.1"): "vmbr0",
				netip.MustParseAddr("10.0.0.1"): "br0", netip.MustParseAddr("10.0.1.1"): "lan0",
				netip.MustParseAddr("100.64.0.10"): "tailscale0", netip.MustParseAddr("127.0.0.1"): "lo",
			}, nil
		},
	}
}
