package nat

import (
	"context"
)

// Peer is the process at the other end of an API connection, from the
// kernel (SO_PEERCRED): who asked for a change.
type Peer struct {
	// UID is the peer's user ID.
	UID int
	// PID is the peer's process ID.
	PID int
}

type peerKey struct{}

// WithPeer returns ctx carrying p; the daemon sets it per connection.
func WithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerOf returns the peer of a request, if known.
func PeerOf(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}
