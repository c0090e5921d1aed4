package nat

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
)

// ContainerChanged brings the mappings of the container named name in line
// with c (found reports whether a container has the name): they follow a
// new address, are withdrawn (ports kept) while it does not run, and come
// back when it runs again.
func (s *Service) ContainerChanged(ctx context.Context, name string, c Container, found bool) error {
	defer s.lock()()
	tx := &txn{}
	var e edit
	var moved []Mapping
	for _, m := range s.mappings {
		if m.Local() || m.Container != name {
			continue
		}
		next := m
		next.ContainerIP = netip.Addr{}
		if found {
			next.ContainerID = c.ID
			next.ContainerIP = c.addrFor(m.HostIP)
		}
		next.net = s.netOf(next.ContainerIP)
		if next == m {
			continue
		}
		ep := m.forward().Endpoint()
		_, wasDown := s.parked[ep]
		if !wasDown {
			e.swapDel = append(e.swapDel, m.forward())
		}
		if next.ContainerIP.IsValid() {
			drop(tx, s.parked, ep)
			e.swapAdd = append(e.swapAdd, next.forward())
		} else {
			put(tx, s.parked, ep, fmt.Sprintf("container %s is not running", name))
		}
		put(tx, s.forwards, ep, fwdEntry{f: next.forward(), owners: s.forwards[ep].owners})
		put(tx, s.mappings, m.ID, next)
		moved = append(moved, next)
	}
	if len(moved) == 0 {
		return nil
	}
	// Only installed forwards are swapped; the inactive (port taken) stay out.
	e.swapDel, e.swapAdd = s.withoutInactive(e.swapDel), s.withoutInactive(e.swapAdd)
	e.rules = true
	if err := s.commit(ctx, tx, e); err != nil {
		return fmt.Errorf("following container %s: %w", name, err)
	}
	for _, m := range moved {
		s.log.Info("mapping follows its container", "mapping", m.String(), "target", m.ContainerIP, "running", m.ContainerIP.IsValid())
	}
	return nil
}

// netOf is the directly connected network of a container address (its
// bridge's), for masquerading container-to-container flows through the
// host's address; invalid when unknown.
func (s *Service) netOf(ip netip.Addr) netip.Prefix {
	if !ip.IsValid() || s.router == nil {
		return netip.Prefix{}
	}
	p, err := s.router.ConnectedPrefix(ip)
	if err != nil || p.IsSingleIP() {
		return netip.Prefix{}
	}
	return p
}

func (s *Service) withoutInactive(fs []Forward) []Forward {
	return slices.DeleteFunc(fs, func(f Forward) bool {
		_, off := s.inactive[f.Endpoint()]
		return off
	})
}

// ContainerNames lists the names of the containers that have mappings.
func (s *Service) ContainerNames() []string {
	defer s.lock()()
	var names []string
	for _, m := range s.mappings {
		if !m.Local() && !slices.Contains(names, m.Container) {
			names = append(names, m.Container)
		}
	}
	slices.Sort(names)
	return names
}
