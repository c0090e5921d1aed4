package nat

import (
	"errors"
	"fmt"
)

// take reserves ep.
func (s *Service) take(ep Endpoint) error {
	c, err := s.reserver.Reserve(ep)
	if err != nil {
		s.reserveFailures++
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
			// A forward for every address (a host-wide mapping, a forward
			// by interface) and one for one address of the same port hold
			// each other's port: say it is natmap's own, not another
			// program's. (Looked for only here: the scan is O(forwards).)
			if other, clash := s.overlapping(f); clash && errors.Is(err, ErrPortInUse) {
				return nil, fmt.Errorf("%s: port %d/%s is already forwarded for %s (%s): %w", f.Endpoint(), f.Ext.Port(), f.Proto, other.Ext.Addr(), other, ErrConflict)
			}
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
