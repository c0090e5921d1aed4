package nat

import (
	"context"
	"time"
)

// Heal checks the kernel against what natmap installed and, if somebody
// removed or changed natmap's rules, installs them again in one
// transaction. It reports whether it repaired anything. Backends that
// cannot check are left alone.
func (s *Service) Heal(ctx context.Context) bool {
	checker, ok := s.backend.(Checker)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := s.activeRuleset()
	problem := checker.Check(ctx, rs)
	if problem == nil {
		return false
	}
	if err := s.backend.Replace(ctx, rs); err != nil {
		s.log.Error("natmap's rules were changed from outside and could not be restored", "problem", problem, "err", err)
		return false
	}
	s.repairs++
	s.lastRepair = time.Now()
	s.log.Warn("natmap's rules were changed from outside; restored them", "problem", problem.Error())
	return true
}
