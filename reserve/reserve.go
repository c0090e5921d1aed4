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

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// ErrPortInUse is nat.ErrPortInUse, for callers that think of it as ours.
var ErrPortInUse = nat.ErrPortInUse

// Sockets reserves ports with real sockets. The zero value is ready.
type Sockets struct{}

// Reserve implements nat.Reserver.
func (Sockets) Reserve(e nat.Endpoint) (io.Closer, error) {
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
	return socket(fd), nil
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
type socket int

// Close releases the port.
func (s socket) Close() error { return unix.Close(int(s)) }
