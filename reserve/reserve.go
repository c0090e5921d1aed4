// Package reserve holds forwarded ports so that no other program can take
// them. A reservation is a socket bound to exactly (address, port,
// protocol), with IP_FREEBIND so addresses that are not (yet) configured on
// the host can be held too. TCP sockets are bound but never listen, so a
// connection that misses a forwarding rule is refused, not left hanging.
//
// Sockets are made without SO_REUSEADDR, so a later bind of the same port
// by anybody, on the address or on the wildcard address, fails with
// EADDRINUSE. Each reservation costs one file descriptor.
package reserve

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// ErrPortInUse is nat.ErrPortInUse, for callers that think of it as ours.
var ErrPortInUse = nat.ErrPortInUse

// Headroom is how many file descriptors reservations leave to the rest of
// the daemon (netlink sockets, the API's connections, the state file).
const Headroom = 256

// Sockets reserves ports with real sockets, at most the open-file limit
// less Headroom of them.
type Sockets struct {
	max  int64
	held atomic.Int64
}

// New returns Sockets sized by the process's open-file limit as it is now
// (raise the limit first).
func New() *Sockets {
	var lim unix.Rlimit
	max := int64(1 << 20)
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		max = int64(lim.Cur) - Headroom
	}
	return &Sockets{max: max}
}

// Held is how many ports are reserved.
func (s *Sockets) Held() int { return int(s.held.Load()) }

// Reserve implements nat.Reserver.
func (s *Sockets) Reserve(e nat.Endpoint) (io.Closer, error) {
	if s.held.Load() >= s.max {
		return nil, fmt.Errorf("reserving %s: out of file descriptors: %d ports held, the open-file limit leaves no more (raise LimitNOFILE)", e, s.held.Load())
	}
	fd, err := bindSocket(e)
	if err != nil {
		switch {
		case errors.Is(err, unix.EADDRINUSE):
			return nil, fmt.Errorf("%s is in use by another program: %w", e, ErrPortInUse)
		case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
			return nil, fmt.Errorf("reserving %s: out of file descriptors (raise LimitNOFILE): %w", e, err)
		}
		return nil, fmt.Errorf("reserving %s: %w", e, err)
	}
	s.held.Add(1)
	return &socket{fd: fd, s: s}, nil
}

func bindSocket(e nat.Endpoint) (int, error) {
	typ := unix.SOCK_STREAM
	if e.Proto == nat.ProtoUDP {
		typ = unix.SOCK_DGRAM
	}
	addr := e.Addr.Addr()
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := configure(fd, e.Addr); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func configure(fd int, ap netip.AddrPort) error {
	addr := ap.Addr()
	var sa unix.Sockaddr
	if addr.Is4() {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1); err != nil {
			return fmt.Errorf("IP_FREEBIND: %w", err)
		}
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: addr.As4()}
	} else {
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return fmt.Errorf("IPV6_FREEBIND: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fmt.Errorf("IPV6_V6ONLY: %w", err)
		}
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: addr.As16()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}

// socket is a held reservation.
type socket struct {
	fd int
	s  *Sockets
}

// Close releases the port.
func (k *socket) Close() error {
	k.s.held.Add(-1)
	return unix.Close(k.fd)
}
