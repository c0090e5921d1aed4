package nat

import (
	"context"
	"net/netip"
	"slices"
)

// HostNeeds are the host settings outside natmap's own tables that its
// rules need. System.Settle makes them true and puts back, as it found
// them, the settings natmap changed that are no longer needed.
type HostNeeds struct {
	// LocalnetAll is set while a forward sends clients from the network to
	// a service on 127.0.0.0/8 (a local service mapping such as
	// 8080:127.0.0.1:80): the kernel routes such packets only with
	// route_localnet on the interface they arrive by, any interface.
	// natmap's table drops every other packet from the network to or from
	// 127.0.0.0/8, so nothing else on loopback becomes reachable.
	LocalnetAll bool
	// LocalnetTo are the targets of host-wide mappings, which the host
	// itself reaches through 127.0.0.1:PORT: route_localnet on the
	// interface that reaches each, so the connection may leave with its
	// loopback source (natmap masquerades it on the way). Sorted.
	LocalnetTo []netip.Addr
	// ForwardHole is set while natmap forwards anything: its flows must
	// pass a DROP policy of Docker's (the DOCKER-USER rule).
	ForwardHole bool
	// Docker is set once Docker has answered since the daemon started:
	// only then is the DOCKER-USER rule looked after (asking iptables
	// about it on a host without Docker costs seconds with a large
	// iptables-nft ruleset, and a rule put there by an earlier run stays
	// until Docker is back, so a restart opens no gap).
	Docker bool
}

func (n HostNeeds) equal(o HostNeeds) bool {
	return n.LocalnetAll == o.LocalnetAll && n.ForwardHole == o.ForwardHole && n.Docker == o.Docker && slices.Equal(n.LocalnetTo, o.LocalnetTo)
}

// hostNeeds is what the rules need now.
func (s *Service) hostNeeds() HostNeeds {
	n := HostNeeds{LocalnetAll: s.loopbackTargets > 0, ForwardHole: len(s.forwards) > 0, Docker: s.dockerSeen}
	for _, m := range s.mappings {
		if t := m.Target(); t.IsValid() && t.Is4() && !t.IsLoopback() && !slices.Contains(n.LocalnetTo, t) {
			n.LocalnetTo = append(n.LocalnetTo, t)
		}
	}
	slices.SortFunc(n.LocalnetTo, netip.Addr.Compare)
	return n
}

// countLoopbackTargets counts the forwards whose target is on
// 127.0.0.0/8, from scratch (at start, reload and clear).
func (s *Service) countLoopbackTargets() {
	s.loopbackTargets = 0
	for _, e := range s.forwards {
		s.loopbackTargets += loopbacks(e.f)
	}
}

func loopbacks(fs ...Forward) int {
	n := 0
	for _, f := range fs {
		if f.Int.Addr().IsLoopback() {
			n++
		}
	}
	return n
}

// settle brings the host settings in line with what the rules need, when
// that changed since the last time (or always, with force); best effort:
// a failure is logged, told to the requester and tried again at the next
// change.
func (s *Service) settle(ctx context.Context, force bool) {
	need := s.hostNeeds()
	if !force && s.settled != nil && s.settled.equal(need) {
		return
	}
	if err := s.sys.Settle(need); err != nil {
		s.settled = nil
		s.log.Warn("host settings natmap needs", "err", err)
		warn(ctx, "host settings natmap needs: "+err.Error())
		return
	}
	s.settled = &need
}

// ResettleHost makes the host settings true again, for when another
// program may have undone them: the Docker watcher calls it each time
// Docker answers (Docker makes its DOCKER-USER chain when it starts).
func (s *Service) ResettleHost() {
	defer s.lock()()
	s.dockerSeen = true
	s.settle(context.Background(), true)
}
