package nat

import (
	"context"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Connection marks natmap sets (ct mark bits), the same in every backend,
// so that a host's other firewall rules can rely on them.
const (
	// MarkForwarded is set on every connection natmap DNATs; the forward
	// accept (and, on Docker hosts, the DOCKER-USER rule) matches it.
	MarkForwarded = 0x01000000
	// MarkLocal is set on connections the host itself makes to a forward;
	// they are masqueraded so the internal host can always answer.
	MarkLocal = 0x02000000
	// MarkHairpin is set (by the nftables backend) on connections from a
	// hairpin's LAN to one of its forwards; they are masqueraded.
	MarkHairpin = 0x04000000
)

// Backend programs the kernel. Every call is one kernel transaction: it
// takes effect whole or not at all.
type Backend interface {
	// Name is the backend's name, such as "nftables".
	Name() string
	// Replace makes the kernel hold exactly rs, in one transaction, with
	// no moment in which neither the old nor the new rules are in place.
	Replace(ctx context.Context, rs Ruleset) error
	// Apply removes c.Del and adds c.Add in one transaction. Deleting
	// something absent or adding something present is an error.
	Apply(ctx context.Context, c Change) error
	// Check returns an error saying what is missing or changed if the
	// kernel no longer holds what natmap installed (somebody flushed the
	// ruleset, deleted natmap's table or chains), given the SNAT and
	// masquerade rules natmap installed (the forwards are the backend's
	// to know). It is cheap: it looks at the structure (table, chains,
	// jumps, rule counts), not at every forward.
	Check(ctx context.Context, r Rules) error
	// Counters returns what the kernel counted for the given forwards
	// (those it has).
	Counters(ctx context.Context, fs []Forward) (map[Endpoint]Counter, error)
}

// Reserver holds ports so that no other program can take them.
type Reserver interface {
	// Reserve binds e and keeps it bound until the Closer is closed. A port
	// held by another program gives an error wrapping ErrPortInUse.
	Reserve(e Endpoint) (io.Closer, error)
}

// Store persists the desired state.
type Store interface {
	// Save replaces the stored state atomically.
	Save(s State) error
	// Record stores one change, d, to the state last saved or recorded,
	// durably before it returns. whole gives the whole state after the
	// change, for a store that writes it instead (a first change, or a
	// journal grown long).
	Record(d Delta, whole func() State) error
	// Compact writes the whole state, from whole, when changes have been
	// recorded since the last write and none for quiet, so the state
	// file alone is the whole state again.
	Compact(quiet time.Duration, whole func() State) error
}

// System changes host settings outside the NAT tables.
type System interface {
	// EnableForwarding turns on IPv4 forwarding, and IPv6 forwarding too
	// when ipv6 is set (keeping router advertisements accepted), and says
	// what it changed.
	EnableForwarding(ipv6 bool) (changed []string, err error)
	// Settle makes the host settings natmap needs true, and puts back
	// every setting natmap changed and no longer needs as it found it.
	Settle(need HostNeeds) error
	// FlushConntrack deletes the connection tracking entries of flows
	// natmap forwarded through fs (connection mark MarkForwarded, the
	// forward's external port and address, or any address for a
	// host-wide forward, and its target): one pass over each family's
	// table. Other flows to the same ports, transit traffic included,
	// are left alone.
	FlushConntrack(fs []Forward) error
	// EphemeralPorts is the kernel's range of ports for outgoing
	// connections (net.ipv4.ip_local_port_range; IPv6 uses it too).
	EphemeralPorts() (lo, hi uint16, err error)
}

// Router programs policy routes (ip rules and routing tables).
type Router interface {
	// CheckGateway fails, wrapping ErrInvalid, unless via is on a directly
	// connected network.
	CheckGateway(via netip.Addr) error
	// ConnectedPrefix is the directly connected network that holds ip, or
	// ip alone when it is reached through a gateway.
	ConnectedPrefix(ip netip.Addr) (netip.Prefix, error)
	// AddPolicyRoute installs p; installing what is there is a no-op.
	AddPolicyRoute(p PolicyRoute) error
	// DeletePolicyRoute removes p's rule, and the routes natmap put in its
	// table when lastInTable is set.
	DeletePolicyRoute(p PolicyRoute, lastInTable bool) error
	// InterfaceAddrs lists the addresses an interface has now, link-local
	// ones left out (none when it does not exist).
	InterfaceAddrs(ifname string) ([]netip.Addr, error)
	// PrunePolicyRoutes removes natmap's own rules and routes (its
	// protocol number) that belong to none of keep: what a crash between
	// a route and its rule left.
	PrunePolicyRoutes(keep []PolicyRoute) error
}

// Rules are the SNAT and masquerade rules, in the order they must be
// evaluated, and the hairpins.
type Rules struct {
	// SNATs are the SNAT rules, most specific source first.
	SNATs []SNAT
	// Hairpinned are the hairpins, a forward each. Replace gets them all;
	// Apply gets them only as Change.HairpinDel and HairpinAdd, and Check
	// never (the backend keeps its own), so a hairpin change costs the
	// same with 10 hairpins or 10,000. A backend that masquerades after
	// DNAT (iptables) makes its rules of them with Masquerades.
	Hairpinned []Hairpinned
	// SameNet are networks (such as a Docker bridge's) whose hosts reach
	// each other through natmap's forwards: such flows are masqueraded, so
	// the target answers through this host and not straight to the client.
	SameNet []netip.Prefix
}

// Ruleset is the whole kernel content natmap owns.
type Ruleset struct {
	// Forwards are the active DNAT forwards.
	Forwards []Forward
	Rules
}

// String renders the ruleset one rule a line: forwards sorted, the
// hairpins as the masquerades they make, the other rules in evaluation
// order.
func (r Ruleset) String() string {
	var b strings.Builder
	b.WriteString(renderForwards("", r.Forwards))
	for _, m := range r.Masquerades() {
		b.WriteString(m.String() + "\n")
	}
	return b.String() + r.Rules.render("")
}

// Masquerades are the ruleset's hairpins as masquerade rules (see
// Masquerades).
func (r Ruleset) Masquerades() []Masquerade { return Masquerades(r.Hairpinned, r.forwardOf()) }

// forwardOf finds the ruleset's forward of an endpoint.
func (r Ruleset) forwardOf() func(Endpoint) (Forward, bool) {
	by := make(map[Endpoint]Forward, len(r.Forwards))
	for _, f := range r.Forwards {
		by[f.Endpoint()] = f
	}
	return func(ep Endpoint) (Forward, bool) { f, ok := by[ep]; return f, ok }
}

// render is the rules but the hairpins, one a line.
func (r Rules) render(prefix string) string {
	var b strings.Builder
	for _, p := range r.SameNet {
		b.WriteString(prefix + "masquerade within " + p.String() + "\n")
	}
	for _, s := range r.SNATs {
		b.WriteString(prefix + s.String() + "\n")
	}
	return b.String()
}

// Change is one transaction's worth of kernel edits.
type Change struct {
	// Del are forwards to remove; they are removed before Add is added.
	Del []Forward
	// Add are forwards to add.
	Add []Forward
	// Rules, when set, replace every SNAT and SameNet rule (they hold no
	// hairpins).
	Rules *Rules
	// HairpinDel and HairpinAdd are the hairpinned forwards that went and
	// came: removed before they are added, after the forwards are.
	HairpinDel, HairpinAdd []Hairpinned
}

// Empty reports whether the change does nothing.
func (c Change) Empty() bool {
	return len(c.Add) == 0 && len(c.Del) == 0 && c.Rules == nil && len(c.HairpinDel) == 0 && len(c.HairpinAdd) == 0
}

// String renders the change as "-" and "+" lines, and "=" lines for the
// rules that replace the old ones.
func (c Change) String() string {
	s := renderForwards("- ", c.Del) + renderForwards("+ ", c.Add)
	for _, h := range c.HairpinDel {
		s += "- " + h.String() + "\n"
	}
	for _, h := range c.HairpinAdd {
		s += "+ " + h.String() + "\n"
	}
	if c.Rules != nil {
		s += c.Rules.render("= ")
	}
	return s
}

func renderForwards(prefix string, fs []Forward) string {
	sorted := slices.Clone(fs)
	slices.SortFunc(sorted, compareForwards)
	var b strings.Builder
	for _, f := range sorted {
		b.WriteString(prefix)
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// Counter is what the kernel counted for a forward: the packets and
// bytes the client side sent (the first packet of each connection
// included).
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}
