package main

import (
	"context"
	"net"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// maxConns bounds the API's concurrent connections.
const maxConns = 128

// limitListener refuses (closes at once) connections beyond max, so a flood
// of clients cannot starve the daemon; the others are served as usual.
type limitListener struct {
	net.Listener
	max    int64
	active atomic.Int64
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.active.Add(1) > l.max {
			l.active.Add(-1)
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

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
	unknown := nat.WithPeer(ctx, nat.Peer{UID: -1})
	cc, ok := c.(*countedConn)
	if !ok {
		return unknown
	}
	uc, ok := cc.Conn.(*net.UnixConn)
	if !ok {
		return unknown
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return unknown
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred == nil {
		return unknown
	}
	return nat.WithPeer(ctx, nat.Peer{UID: int(cred.Uid), PID: int(cred.Pid)})
}
