package daemon

import (
	"context"
	"net"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// maxConns bounds the API's concurrent connections, of which rootConns are
// kept for root: a member of the socket group who holds every other slot
// cannot lock root's CLI out.
const (
	maxConns  = 128
	rootConns = 8
	// metricsConns bounds the --metrics-listen TCP port's connections.
	metricsConns = 16
)

// limitListener refuses (closes at once) connections beyond max, and
// beyond max-root unless the peer is root, so a flood of clients cannot
// starve the daemon or root; the others are served as usual.
type limitListener struct {
	net.Listener
	max, root int64
	active    atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := l.active.Add(1)
		if n > l.max || (n > l.max-l.root && !isRoot(peerCred(c))) {
			l.active.Add(-1)
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// peerCred is the connecting process's credentials (SO_PEERCRED), or nil
// when they cannot be read.
func peerCred(c net.Conn) *unix.Ucred {
	if cc, ok := c.(*countedConn); ok {
		c = cc.Conn
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil {
		return nil
	}
	return cred
}

func isRoot(cred *unix.Ucred) bool { return cred != nil && cred.Uid == 0 }

type countedConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.active.Add(-1)
	}
	return c.Conn.Close()
}

// peerContext puts the connecting process's credentials (SO_PEERCRED) in
// the request context, for the audit log and the group's policy. A peer
// whose credentials cannot be read counts as a member, not as root.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	cred := peerCred(c)
	if cred == nil {
		return nat.WithPeer(ctx, nat.Peer{UID: -1})
	}
	return nat.WithPeer(ctx, nat.Peer{UID: int(cred.Uid), PID: int(cred.Pid)})
}
