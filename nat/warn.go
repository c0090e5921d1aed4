package nat

import (
	"context"
	"sync"
)

// WarningHeader carries each warning of a change that went through (one
// header line each): the reply's body keeps its wire shape.
const WarningHeader = "Natmap-Warning"

// Warnings collects what a request should be warned about.
type Warnings struct {
	mu   sync.Mutex
	list []string
}

type warningsKey struct{}

// WithWarnings returns ctx carrying a collector for the request's
// warnings.
func WithWarnings(ctx context.Context) (context.Context, *Warnings) {
	w := &Warnings{}
	return context.WithValue(ctx, warningsKey{}, w), w
}

// warn tells the requester of ctx, if any, about msg.
func warn(ctx context.Context, msg string) {
	if w, ok := ctx.Value(warningsKey{}).(*Warnings); ok {
		w.mu.Lock()
		w.list = append(w.list, msg)
		w.mu.Unlock()
	}
}

// take returns the Warnings so far and forgets them.
func (w *Warnings) Take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}
