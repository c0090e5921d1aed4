package nat

import (
	"context"
	"fmt"
	"io"
)

// Reload makes the running configuration equal to st (the state file,
// read again) in one change: the kernel is replaced in one transaction,
// ports new to the configuration are reserved, those no rule uses any more
// are released, and forwards that stay keep their reservation throughout.
// As at start, a forward whose port another program holds is kept inactive
// and retried. On any failure nothing changes.
func (s *Service) Reload(ctx context.Context, st State) error {
	return s.ReloadWith(ctx, func() (State, error) { return st, nil })
}

// ReloadWith is Reload of the state load returns, read under the service
// lock: no change can be acknowledged between the read and the replace,
// so a reload never reverts a change made while it ran (the state file and
// its journal hold every acknowledged change, all written under the same
// lock).
func (s *Service) ReloadWith(ctx context.Context, load func() (State, error)) error {
	unlock := s.lock()
	st, err := load()
	if err == nil {
		err = s.replaceLocked(ctx, st, false)
	}
	unlock()
	if err != nil {
		return err
	}
	s.log.Info("configuration reloaded", s.counts()...)
	return nil
}

// replaceLocked makes the model st under the lock (Reload, Apply);
// strict refuses the whole change, listing every port it could not
// reserve, instead of keeping those forwards inactive (a reserveErrors).
// It is one piece on purpose: each step's failure undoes the steps before
// it (reservations, kernel, model), which reads best in one place.
func (s *Service) replaceLocked(ctx context.Context, st State, strict bool) error {
	if err := st.Validate(); err != nil {
		return err
	}
	next := NewService(Deps{Backend: s.backend, Reserver: s.reserver, Store: s.store, System: s.sys,
		Router: s.router, Docker: s.docker, Log: s.log})
	if err := next.build(st); err != nil {
		return err
	}
	if strict {
		kept := map[Endpoint]io.Closer{}
		var added []Endpoint
		for ep := range next.forwards {
			if h, ok := s.holds[ep]; ok {
				kept[ep] = h
			} else {
				added = append(added, ep)
			}
		}
		if err := s.checkEphemeral(ctx, kept, added); err != nil {
			return err
		}
	}
	var fresh []Endpoint
	problems := reserveErrors{}
	for ep, e := range next.forwards {
		if h, ok := s.holds[ep]; ok {
			next.holds[ep] = h
			continue
		}
		if err := next.take(ep); err != nil {
			if strict {
				problems[ep] = err
			} else {
				next.inactive[ep] = err.Error()
				s.log.Warn("forward inactive: port taken by another program", "forward", e.f.String(), "err", err)
			}
			continue
		}
		fresh = append(fresh, ep)
	}
	s.reserveFailures += next.reserveFailures
	if len(problems) > 0 {
		next.releaseAll(fresh)
		return problems
	}
	before := s.activeRuleset()
	after := next.activeRuleset()
	if err := s.backend.Replace(ctx, after); err != nil {
		next.releaseAll(fresh)
		return fmt.Errorf("installing %d forwards with %s: %w", len(after.Forwards), s.backend.Name(), err)
	}

	old, oldRoutes := s.replaced(), s.routes
	s.setReplaced(next.replaced())
	s.routes = map[PolicyRoute]string{} // with the reasons they had
	for _, p := range st.PolicyRoutes {
		s.routes[p] = oldRoutes[p]
	}
	if err := s.persistAll(); err != nil {
		s.setReplaced(old)
		if uerr := s.backend.Replace(ctx, before); uerr != nil {
			s.log.Error("restoring the rules after a failed reload", "err", uerr)
		}
		next.releaseAll(fresh)
		return err
	}
	for ep, h := range old.holds {
		if _, kept := s.holds[ep]; !kept {
			if err := h.Close(); err != nil {
				s.log.Warn("releasing a port", "endpoint", ep.String(), "err", err)
			}
		}
	}
	s.reconcileRoutes(oldRoutes)
	s.countLoopbackTargets()
	s.settle(ctx, false)
	if st.IPForward || st.IPv6Forward {
		if _, err := s.sys.EnableForwarding(st.IPv6Forward); err != nil {
			s.log.Warn("enabling IP forwarding failed", "err", err)
		}
	}
	s.flushUDP(gone(before.Forwards, after.Forwards))
	s.changes++
	return nil
}

// counts are the sizes of the model, for a log line.
func (s *Service) counts() []any {
	defer s.lock()()
	return []any{"dnats", len(s.dnats), "hairpins", len(s.hairpins), "snats", len(s.snats),
		"policy_routes", len(s.routes), "mappings", len(s.mappings), "forwards", len(s.forwards), "inactive", len(s.inactive)}
}

// replaced is the part of the Service that Reload replaces as a whole:
// the model and what is built with it.
type replaced struct {
	model
	state     State
	holds     map[Endpoint]io.Closer
	nextID    int
	followIfs bool
}

func (s *Service) replaced() replaced {
	return replaced{s.model, s.state, s.holds, s.nextID, s.followIfs}
}

func (s *Service) setReplaced(r replaced) {
	s.model, s.state, s.holds, s.nextID, s.followIfs = r.model, r.state, r.holds, r.nextID, r.followIfs
}

// reconcileRoutes brings the kernel from the policy routes in old to
// those now in s.routes: it removes the routes no longer wanted (a table's
// routes with the last rule using it) and installs the new ones, and those
// that failed before. A route that fails stays in the state with the
// reason, as at start.
func (s *Service) reconcileRoutes(old map[PolicyRoute]string) {
	tables := map[uint32]bool{}
	for p := range s.routes {
		tables[p.Table] = true
	}
	for p, reason := range old {
		if _, keep := s.routes[p]; !keep && reason != "" {
			delete(old, p) // never installed
		}
	}
	for p := range old {
		if _, keep := s.routes[p]; keep {
			continue
		}
		delete(old, p)
		last := !tables[p.Table]
		for q := range old {
			if q.Table == p.Table {
				last = false
			}
		}
		if err := s.router.DeletePolicyRoute(p, last); err != nil {
			s.log.Error("removing a policy route", "route", p.String(), "err", err)
		}
	}
	for p, reason := range s.routes {
		if _, had := old[p]; had && reason == "" {
			continue
		}
		s.routes[p] = ""
		if err := s.router.AddPolicyRoute(p); err != nil {
			s.routes[p] = err.Error()
			s.log.Warn("policy route not installed", "route", p.String(), "err", err)
		}
	}
}

// gone lists the forwards of before whose endpoint after does not forward
// the same way.
func gone(before, after []Forward) []Forward {
	now := make(map[Forward]bool, len(after))
	for _, f := range after {
		now[f] = true
	}
	var out []Forward
	for _, f := range before {
		if !now[f] {
			out = append(out, f)
		}
	}
	return out
}
