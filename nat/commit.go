package nat

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

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
			return nil, fmt.Errorf("%s: %w", forwardedElsewhere(f, e.f), ErrConflict)
		default:
			put(tx, s.forwards, f.Endpoint(), fwdEntry{f: f, owners: e.owners + 1})
		}
	}
	return fresh, nil
}

// forwardedElsewhere is the rule that an endpoint has one target: what
// to say when f's endpoint is already forwarded by have, to another place.
func forwardedElsewhere(f, have Forward) string {
	return fmt.Sprintf("%s is already forwarded to %s%s", f.Endpoint(), have.Int, ifSuffix(have.ExtIf))
}

// overlapping finds a forward of the same port, protocol and family of
// which one is for every address and the other for one.
func (s *Service) overlapping(f Forward) (Forward, bool) {
	a := f.Ext.Addr()
	if !a.IsUnspecified() {
		any := netip.IPv4Unspecified()
		if a.Is6() {
			any = netip.IPv6Unspecified()
		}
		e, ok := s.forwards[Endpoint{Addr: netip.AddrPortFrom(any, f.Ext.Port()), Proto: f.Proto}]
		return e.f, ok
	}
	for ep, e := range s.forwards {
		if ep.Proto == f.Proto && ep.Addr.Port() == f.Ext.Port() && ep.Addr.Addr().Is4() == a.Is4() && !ep.Addr.Addr().IsUnspecified() {
			return e.f, true
		}
	}
	return Forward{}, false
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
	rules            bool // the SNAT and SameNet rules changed
	// hairpinDel and hairpinAdd are the hairpinned forwards that go and
	// come.
	hairpinDel, hairpinAdd []Hairpinned
}

// commit makes the model changes recorded in tx real: it reserves the
// fresh forwards, applies the kernel change in one transaction (with the
// SNAT and masquerade rules rebuilt when e.rules is set), persists, and
// releases what the gone forwards held. On failure everything, tx
// included, is put back as it was.
func (s *Service) commit(ctx context.Context, tx *txn, e edit) error {
	if err := s.checkEphemeral(ctx, s.holds, endpoints(e.fresh)); err != nil {
		tx.rollback()
		return err
	}
	taken, err := s.takeAll(e.fresh)
	if err != nil {
		tx.rollback()
		return err
	}
	ch := Change{Del: s.installed(e.gone), Add: s.installed(e.fresh), HairpinDel: e.hairpinDel, HairpinAdd: e.hairpinAdd}
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
	if err := s.persist(s.delta(tx)); err != nil {
		tx.rollback()
		undo := Change{Del: ch.Add, Add: ch.Del, HairpinDel: ch.HairpinAdd, HairpinAdd: ch.HairpinDel}
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
	s.loopbackTargets += loopbacks(e.fresh...) + loopbacks(e.swapAdd...) - loopbacks(e.gone...) - loopbacks(e.swapDel...)
	s.settle(ctx, false)
	s.changes++
	return nil
}

func endpoints(fs []Forward) []Endpoint {
	eps := make([]Endpoint, len(fs))
	for i, f := range fs {
		eps[i] = f.Endpoint()
	}
	return eps
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

// persist records a change to the persisted rules, d, with the state's
// settings as they are now.
func (s *Service) persist(d Delta) error {
	d.Add.NextMappingID, d.Add.IPForward, d.Add.IPv6Forward = s.nextID, s.state.IPForward, s.state.IPv6Forward
	if err := s.store.Record(d, s.snapshot); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// Checkpoint has the store write the whole state when changes have been
// recorded since it last did and none for quiet (0: whenever any have),
// so the state file is the whole state again: the daemon calls it when
// idle and when it stops.
func (s *Service) Checkpoint(quiet time.Duration) error {
	defer s.lock()()
	if err := s.store.Compact(quiet, s.snapshot); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// persistAll saves the whole state, for changes that replace most of it.
func (s *Service) persistAll() error {
	if err := s.store.Save(s.snapshot()); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}
