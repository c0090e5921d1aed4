// Package route programs natmap's policy routes over netlink: for a source
// address, an `ip rule from SRC lookup TABLE` and, in TABLE, a default route
// via the gateway plus copies of the main table's directly connected routes
// (so the LAN stays reachable without the gateway). Every route natmap puts
// in a table, and every rule natmap adds, carries the routing protocol
// number Proto, and only such routes and rules are ever replaced or
// removed. A table that holds a route of another owner (wg-quick's 51820,
// tailscale's 52, an admin's) is refused: natmap never adds to, replaces
// or deletes another tool's routes. The connected routes are copied when
// the policy route is installed (and again at every daemon start).
package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// Proto marks the routes natmap installs (`ip route show proto 212`).
const Proto = 212

// RulePriority is the priority of natmap's policy rules: before the main
// table (32766).
const RulePriority = 1000

// Netlink implements nat.Router in the caller's network namespace.
type Netlink struct{}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// connected lists the main table's directly connected routes of a's
// family: routes without a gateway, of scope link (IPv4) or of the
// kernel's own prefix routes (IPv6, whose connected routes have scope
// global).
func connected(a netip.Addr) ([]netlink.Route, error) {
	var routes []netlink.Route
	var err error
	for range 3 {
		routes, err = netlink.RouteListFiltered(family(a), &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	var out []netlink.Route
	for _, r := range routes {
		if r.Dst == nil || r.Gw != nil || r.Type != unix.RTN_UNICAST {
			continue
		}
		if r.Scope == netlink.SCOPE_LINK || (a.Is6() && r.Protocol == unix.RTPROT_KERNEL) {
			out = append(out, r)
		}
	}
	return out, nil
}

// onLink returns the most specific connected route that holds a.
func onLink(a netip.Addr) (netlink.Route, netip.Prefix, bool, error) {
	routes, err := connected(a)
	if err != nil {
		return netlink.Route{}, netip.Prefix{}, false, err
	}
	var best netlink.Route
	var bestP netip.Prefix
	found := false
	for _, r := range routes {
		p, ok := prefixOf(r.Dst)
		if ok && p.Contains(a) && (!found || p.Bits() > bestP.Bits()) {
			best, bestP, found = r, p, true
		}
	}
	return best, bestP, found, nil
}

// PrunePolicyRoutes implements nat.Router: natmap's rules (protocol
// Proto, priority RulePriority) of no kept policy route go, and so do
// natmap's routes in tables no kept policy route uses.
func (Netlink) PrunePolicyRoutes(keep []nat.PolicyRoute) error {
	tables := map[int]bool{}
	for _, p := range keep {
		tables[int(p.Table)] = true
	}
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := netlink.RuleListFiltered(fam, &netlink.Rule{Priority: RulePriority}, netlink.RT_FILTER_PRIORITY)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("listing rules: %w", err)
		}
		for _, r := range rules {
			if r.Protocol != Proto || kept(r, keep) {
				continue
			}
			if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("deleting an orphan rule lookup %d: %w", r.Table, err))
			}
		}
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: Proto},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if tables[r.Table] || r.Protocol != Proto {
				continue
			}
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("deleting an orphan route %s from table %d: %w", describe(r), r.Table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// kept reports whether r is the rule of one of keep.
func kept(r netlink.Rule, keep []nat.PolicyRoute) bool {
	src, ok := prefixOf(r.Src)
	if !ok {
		return false
	}
	for _, p := range keep {
		if int(p.Table) == r.Table && src == netip.PrefixFrom(p.SrcIP, p.SrcIP.BitLen()) {
			return true
		}
	}
	return false
}

// InterfaceAddrs implements nat.Router.
func (Netlink) InterfaceAddrs(ifname string) ([]netip.Addr, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("finding interface %s: %w", ifname, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing the addresses of %s: %w", ifname, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// CheckGateway implements nat.Router.
func (Netlink) CheckGateway(via netip.Addr) error {
	_, _, ok, err := onLink(via)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("via: %s is not on any directly connected network of this host: %w", via, nat.ErrInvalid)
	}
	return nil
}

// ConnectedPrefix implements nat.Router.
func (Netlink) ConnectedPrefix(ip netip.Addr) (netip.Prefix, error) {
	_, p, ok, err := onLink(ip)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !ok {
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	return p, nil
}

func rule(p nat.PolicyRoute) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family(p.SrcIP)
	r.Src = ipNet(netip.PrefixFrom(p.SrcIP, p.SrcIP.BitLen()))
	r.Table = int(p.Table)
	r.Priority = RulePriority
	r.Protocol = Proto
	return r
}

// foreignRoutes describes the routes in table that natmap did not put
// there.
func foreignRoutes(fam int, table uint32) ([]string, error) {
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: int(table)}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("listing table %d: %w", table, err)
	}
	var out []string
	for _, r := range routes {
		if r.Protocol != Proto {
			out = append(out, describe(r))
		}
	}
	return out, nil
}

// describe is a route as `ip route` shows it, near enough to find it.
func describe(r netlink.Route) string {
	s := "default"
	if p, ok := prefixOf(r.Dst); ok && p.Bits() > 0 {
		s = p.String()
	}
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	if link, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
		s += " dev " + link.Attrs().Name
	}
	return s + " proto " + r.Protocol.String()
}

// AddPolicyRoute implements nat.Router; it is idempotent. A table holding
// routes natmap did not put there is refused (nat.ErrConflict) before
// anything changes.
func (Netlink) AddPolicyRoute(p nat.PolicyRoute) error {
	gw, _, ok, err := onLink(p.Via)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("via: %s is not on any directly connected network of this host: %w", p.Via, nat.ErrInvalid)
	}
	foreign, err := foreignRoutes(family(p.SrcIP), p.Table)
	if err != nil {
		return err
	}
	if len(foreign) > 0 {
		return fmt.Errorf("table: routing table %d holds routes natmap did not create (%s); natmap never changes another tool's table: choose another --table: %w",
			p.Table, strings.Join(foreign, "; "), nat.ErrConflict)
	}
	routes, err := connected(p.Via)
	if err != nil {
		return err
	}
	for _, r := range routes {
		cp := netlink.Route{LinkIndex: r.LinkIndex, Dst: r.Dst, Src: r.Src, Scope: netlink.SCOPE_LINK, Table: int(p.Table), Protocol: Proto}
		if err := netlink.RouteReplace(&cp); err != nil {
			return fmt.Errorf("copying route %s into table %d: %w", r.Dst, p.Table, err)
		}
	}
	def := netlink.Route{LinkIndex: gw.LinkIndex, Gw: p.Via.AsSlice(), Table: int(p.Table), Protocol: Proto}
	if p.Via.Is6() {
		def.Dst = ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
	}
	if err := netlink.RouteReplace(&def); err != nil {
		return fmt.Errorf("adding default via %s to table %d: %w", p.Via, p.Table, err)
	}
	exists, err := ruleExists(p)
	if err != nil || exists {
		return err
	}
	if err := netlink.RuleAdd(rule(p)); err != nil {
		return fmt.Errorf("adding rule from %s lookup %d: %w", p.SrcIP, p.Table, err)
	}
	return nil
}

func ruleExists(p nat.PolicyRoute) (bool, error) {
	rules, err := netlink.RuleListFiltered(family(p.SrcIP), &netlink.Rule{Table: int(p.Table)}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return false, fmt.Errorf("listing rules: %w", err)
	}
	want := netip.PrefixFrom(p.SrcIP, p.SrcIP.BitLen())
	for _, r := range rules {
		if got, ok := prefixOf(r.Src); !ok || got != want || r.Priority != RulePriority {
			continue
		}
		if r.Protocol == Proto {
			return true, nil
		}
		if r.Protocol == unix.RTPROT_UNSPEC {
			// natmap's rule from before it marked its rules: mark it now,
			// so that a delete finds it.
			old := rule(p)
			old.Protocol = 0
			if err := netlink.RuleDel(old); err != nil && !errors.Is(err, unix.ENOENT) {
				return false, fmt.Errorf("replacing rule from %s lookup %d: %w", p.SrcIP, p.Table, err)
			}
		}
	}
	return false, nil
}

// DeletePolicyRoute implements nat.Router. A missing rule is not an error;
// with lastInTable the routes natmap put in the table go too.
func (Netlink) DeletePolicyRoute(p nat.PolicyRoute, lastInTable bool) error {
	if err := netlink.RuleDel(rule(p)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting rule from %s lookup %d: %w", p.SrcIP, p.Table, err)
	}
	if !lastInTable {
		return nil
	}
	routes, err := netlink.RouteListFiltered(family(p.SrcIP), &netlink.Route{Table: int(p.Table), Protocol: Proto},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("listing table %d: %w", p.Table, err)
	}
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("deleting route %s from table %d: %w", r.Dst, p.Table, err)
		}
	}
	return nil
}
