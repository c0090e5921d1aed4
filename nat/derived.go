package nat

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
)

// A hairpin of a forward by interface lets internal hosts reach the
// service through whatever addresses the interface has. Their packets come
// in by another interface, so the forward by interface (keyed on the input
// interface) does not take them: for each address the interface has now,
// the service installs a derived forward of that address (and its hairpin
// element), and RefreshInterfaces keeps them in line as addresses come and
// go. Derived forwards are neither reserved (the forward by interface
// holds the port on the wildcard address) nor persisted.

// derive computes the derived forwards and hairpin elements of the
// hairpins by interface, from the addresses their interfaces have now.
func (s *Service) derive() ([]Forward, []Hairpinned, error) {
	var fs []Forward
	var hs []Hairpinned
	addrs := map[string][]netip.Addr{}
	for _, h := range s.hairpins {
		d := h.dnat()
		if !d.ByInterface() {
			continue
		}
		if _, seen := addrs[h.ExtIf]; !seen {
			list, err := s.router.InterfaceAddrs(h.ExtIf)
			if err != nil {
				return nil, nil, err
			}
			addrs[h.ExtIf] = list
		}
		for _, a := range addrs[h.ExtIf] {
			if a.Is4() != h.IntIP.Is4() {
				continue
			}
			for _, f := range d.Forwards() {
				f.ExtIf, f.Ext = "", netip.AddrPortFrom(a, f.Ext.Port())
				fs = append(fs, f)
				hs = append(hs, Hairpinned{LAN: h.LanCIDR, Endpoint: f.Endpoint()})
			}
		}
	}
	slices.SortFunc(fs, compareForwards)
	slices.SortFunc(hs, func(a, b Hairpinned) int { return compareEndpoint(a.Endpoint, b.Endpoint) })
	return fs, hs, nil
}

// refreshDerived brings the derived forwards in the kernel in line with
// the interfaces' addresses, in one transaction; nothing changes on
// failure (it is tried again at the next refresh).
func (s *Service) refreshDerived(ctx context.Context) error {
	fs, hs, err := s.derive()
	if err != nil {
		return fmt.Errorf("finding the addresses of hairpinned interfaces: %w", err)
	}
	if slices.Equal(fs, s.derived) && slices.Equal(hs, s.derivedHP) {
		return nil
	}
	ch := Change{Del: s.derived, Add: fs, HairpinDel: s.derivedHP, HairpinAdd: hs}
	oldFs, oldHs := s.derived, s.derivedHP
	s.derived, s.derivedHP = fs, hs
	if err := s.backend.Apply(ctx, ch); err != nil {
		s.derived, s.derivedHP = oldFs, oldHs
		return fmt.Errorf("following the addresses of hairpinned interfaces: %w", err)
	}
	return nil
}

// RefreshInterfaces follows the addresses of the interfaces that hairpins
// by interface use (the daemon calls it every second).
func (s *Service) RefreshInterfaces(ctx context.Context) {
	defer s.lock()()
	if !s.followIfs {
		return
	}
	if err := s.refreshDerived(ctx); err != nil {
		s.log.Warn("hairpin by interface", "err", err)
	}
}
