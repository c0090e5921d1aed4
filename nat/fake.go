package nat

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
)

// Fake is a strict in-memory Backend for tests: adding a forward whose
// endpoint is present, or deleting one that is absent, fails the whole
// transaction and changes nothing, as the kernel does.
type Fake struct {
	mu       sync.Mutex
	forwards map[Endpoint]Forward
	rules    Rules
	// hairpinned are the hairpin elements, changed one at a time by Apply
	// (rules holds none).
	hairpinned map[Hairpinned]bool
	// FailNext, when set, makes the next Apply or Replace return it and
	// change nothing. It is cleared when used.
	FailNext error
	// Transactions counts successful Apply and Replace calls.
	Transactions int
}

// Hairpinned returns the hairpin elements the fake holds.
func (f *Fake) Hairpinned() map[Hairpinned]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.hairpinned)
}

// NewFake returns an empty Fake.
func NewFake() *Fake {
	return &Fake{forwards: map[Endpoint]Forward{}, hairpinned: map[Hairpinned]bool{}}
}

// Name implements Backend.
func (f *Fake) Name() string { return "fake" }

// Replace implements Backend.
func (f *Fake) Replace(_ context.Context, rs Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeFailure(); err != nil {
		return err
	}
	next := map[Endpoint]Forward{}
	for _, fw := range rs.Forwards {
		if _, dup := next[fw.Endpoint()]; dup {
			return fmt.Errorf("fake replace: %s twice", fw.Endpoint())
		}
		next[fw.Endpoint()] = fw
	}
	hp := map[Hairpinned]bool{}
	for _, h := range rs.Hairpinned {
		if hp[h] {
			return fmt.Errorf("fake replace: %s twice", h)
		}
		hp[h] = true
	}
	f.forwards, f.hairpinned = next, hp
	f.rules = rs.Rules
	f.rules.Hairpinned = nil
	f.Transactions++
	return nil
}

// Apply implements Backend.
func (f *Fake) Apply(_ context.Context, c Change) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeFailure(); err != nil {
		return err
	}
	next := make(map[Endpoint]Forward, len(f.forwards))
	for k, v := range f.forwards {
		next[k] = v
	}
	for _, fw := range c.Del {
		if cur, ok := next[fw.Endpoint()]; !ok || cur != fw {
			return fmt.Errorf("fake apply: deleting absent %s", fw)
		}
		delete(next, fw.Endpoint())
	}
	for _, fw := range c.Add {
		if _, ok := next[fw.Endpoint()]; ok {
			return fmt.Errorf("fake apply: adding present %s", fw)
		}
		next[fw.Endpoint()] = fw
	}
	hp := maps.Clone(f.hairpinned)
	for _, h := range c.HairpinDel {
		if !hp[h] {
			return fmt.Errorf("fake apply: deleting absent %s", h)
		}
		delete(hp, h)
	}
	for _, h := range c.HairpinAdd {
		if hp[h] {
			return fmt.Errorf("fake apply: adding present %s", h)
		}
		hp[h] = true
	}
	if c.Rules != nil && len(c.Rules.Hairpinned) > 0 {
		return errors.New("fake apply: hairpins in the rules (they come as HairpinDel and HairpinAdd)")
	}
	f.forwards, f.hairpinned = next, hp
	if c.Rules != nil {
		f.rules = *c.Rules
	}
	f.Transactions++
	return nil
}

func setOf[K comparable](ks []K) map[K]bool {
	m := make(map[K]bool, len(ks))
	for _, k := range ks {
		m[k] = true
	}
	return m
}

func (f *Fake) takeFailure() error {
	err := f.FailNext
	f.FailNext = nil
	if err != nil {
		return errors.Join(errors.New("fake backend failure"), err)
	}
	return nil
}

// Check implements Backend: a fake's kernel is never changed from
// outside (heal_test's brokenFake is).
func (f *Fake) Check(context.Context, Rules) error { return nil }

// Counters implements Backend: a fake counts nothing.
func (f *Fake) Counters(context.Context, []Forward) (map[Endpoint]Counter, error) { return nil, nil }

// Dump renders what the fake holds, like Ruleset.String.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	rs := Ruleset{Rules: f.rules}
	for _, fw := range f.forwards {
		rs.Forwards = append(rs.Forwards, fw)
	}
	for h := range f.hairpinned {
		rs.Hairpinned = append(rs.Hairpinned, h)
	}
	return rs.String()
}
