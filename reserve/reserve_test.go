package reserve

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

// Loopback is in every namespace, so these tests need no privileges.

func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

func TestReserveBlocksOthersAndReleases(t *testing.T) {
	port := freePort(t)
	ep := nat.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Proto: nat.ProtoTCP}
	s := New()
	c, err := s.Reserve(ep)
	if err != nil {
		t.Fatal(err)
	}
	if s.Held() != 1 {
		t.Fatalf("held %d", s.Held())
	}
	if l, err := net.Listen("tcp", ep.Addr.String()); err == nil {
		l.Close()
		t.Fatalf("listening on reserved %s succeeded", ep)
	}
	if l, err := net.Listen("tcp", netip.AddrPortFrom(netip.IPv4Unspecified(), port).String()); err == nil {
		l.Close()
		t.Fatalf("listening on the wildcard address of reserved %s succeeded", ep)
	}
	// Not listening: a connection is refused at once.
	if conn, err := net.Dial("tcp", ep.Addr.String()); err == nil {
		conn.Close()
		t.Fatalf("connecting to reserved %s succeeded", ep)
	}
	if _, err := New().Reserve(ep); !errors.Is(err, nat.ErrPortInUse) {
		t.Fatalf("second reservation: got %v, want ErrPortInUse", err)
	}
	// The same port over UDP is a different endpoint.
	udp := nat.Endpoint{Addr: ep.Addr, Proto: nat.ProtoUDP}
	cu, err := New().Reserve(udp)
	if err != nil {
		t.Fatalf("udp beside tcp: %v", err)
	}
	cu.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", ep.Addr.String())
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	l.Close()
}

func TestReserveTakenPortNamesEndpoint(t *testing.T) {
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ap := netip.MustParseAddrPort(l.LocalAddr().String())
	_, err = New().Reserve(nat.Endpoint{Addr: ap, Proto: nat.ProtoUDP})
	if !errors.Is(err, ErrPortInUse) {
		t.Fatalf("got %v, want ErrPortInUse", err)
	}
	if want := ap.String() + "/udp is in use"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

func TestReserveIPv6(t *testing.T) {
	probe, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ap := netip.MustParseAddrPort(probe.Addr().String())
	probe.Close()
	c, err := New().Reserve(nat.Endpoint{Addr: ap, Proto: nat.ProtoTCP})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if l, err := net.Listen("tcp", ap.String()); err == nil {
		l.Close()
		t.Fatalf("listening on reserved %s succeeded", ap)
	}
}

func TestReserveStopsBeforeTheLimit(t *testing.T) {
	s := &Sockets{max: 2}
	var held []io.Closer
	for i := 0; i < 2; i++ {
		c, err := s.Reserve(nat.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)), Proto: nat.ProtoUDP})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	_, err := s.Reserve(nat.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)), Proto: nat.ProtoUDP})
	if err == nil || !strings.Contains(err.Error(), "out of file descriptors") || !strings.Contains(err.Error(), "raise LimitNOFILE") {
		t.Fatalf("third reservation: %v", err)
	}
	held[0].Close()
	c, err := s.Reserve(nat.Endpoint{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)), Proto: nat.ProtoUDP})
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	c.Close()
	held[1].Close()
}
