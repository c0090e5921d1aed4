package nat

import (
	"context"
	"errors"
	"testing"
)

// brokenFake is a Fake whose integrity check reports a problem, or the
// context's error when it is done.
type brokenFake struct{ *Fake }

func (b brokenFake) Check(ctx context.Context, _ Rules) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("table inet natmap is missing")
}

func TestHealRepairsButNotWhenStopping(t *testing.T) {
	r := &rig{fake: NewFake(), res: NewFakeReserver(), store: &MemStore{}}
	d := r.deps()
	d.Backend = brokenFake{r.fake}
	r.svc = NewService(d)
	if err := r.svc.Start(ctx, State{Dnats: []DNAT{dnat(t, "203.0.113.43", "10.0.0.101", "25", "tcp", "")}}); err != nil {
		t.Fatal(err)
	}
	stopping, cancel := context.WithCancel(ctx)
	cancel()
	txns := r.fake.Transactions
	if r.svc.Heal(stopping) || r.fake.Transactions != txns || r.svc.Stats().Repairs != 0 {
		t.Fatalf("a check cut short by a stopping daemon was taken for damage")
	}
	if !r.svc.Heal(ctx) || r.fake.Transactions != txns+1 || r.svc.Stats().Repairs != 1 {
		t.Fatalf("damage was not repaired")
	}
}
