package nat

import (
	"context"
	"time"
)

// Heal checks the kernel against what natmap installed and, if somebody
// removed or changed natmap's rules, installs them again in one
// transaction. It reports whether it repaired anything.
func (s *Service) Heal(ctx context.Context) bool {
	// The look runs without the lock, so that a slow check (the iptables
	// backend lists whole tables) does not hold up requests; a difference
	// is confirmed under the lock, as a change may have raced the look.
	s.mu.Lock()
	rules := s.rules()
	s.mu.Unlock()
	if s.backend.Check(ctx, rules) == nil || ctx.Err() != nil {
		return false // intact, or the daemon is stopping (the check was cut short)
	}
	defer s.lock()()
	problem := s.backend.Check(ctx, s.rules())
	if problem == nil || ctx.Err() != nil {
		return false
	}
	if err := s.backend.Replace(ctx, s.activeRuleset()); err != nil {
		s.log.Error("natmap's rules were changed from outside and could not be restored", "problem", problem, "err", err)
		return false
	}
	s.repairs++
	s.lastRepair = time.Now()
	s.log.Warn("natmap's rules were changed from outside; restored them", "problem", problem.Error())
	return true
}
