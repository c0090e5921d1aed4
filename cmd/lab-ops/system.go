package main

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// hostSystem changes host settings through /proc/sys and netlink.
type hostSystem struct{}

// EnableForwarding implements nat.System.
func (hostSystem) EnableForwarding(ipv6 bool) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return err
	}
	if ipv6 {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
	}
	return nil
}

// AllowLocalnet implements nat.System: route_localnet on the interface the
// host reaches dst by, so that a connection to 127.0.0.1:PORT DNATed to dst
// may leave with its loopback source (natmap masquerades it on the way).
func (hostSystem) AllowLocalnet(dst netip.Addr) error {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return fmt.Errorf("finding the route to %s: %v", dst, err)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return fmt.Errorf("finding the interface to %s: %w", dst, err)
	}
	name := link.Attrs().Name
	if name == "lo" {
		return nil
	}
	return os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/route_localnet", []byte("1\n"), 0o644)
}

// EphemeralPorts implements nat.System.
func (hostSystem) EphemeralPorts() (lo, hi uint16, err error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil {
		return 0, 0, fmt.Errorf("reading ip_local_port_range %q: %w", b, err)
	}
	return lo, hi, nil
}

// FlushConntrack implements nat.System.
func (hostSystem) FlushConntrack(e nat.Endpoint) error {
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(uint8(e.Proto)); err != nil {
		return err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, e.Addr.Port()); err != nil {
		return err
	}
	family := netlink.InetFamily(unix.AF_INET)
	if a := e.Addr.Addr(); !a.IsUnspecified() {
		if err := f.AddIP(netlink.ConntrackOrigDstIP, a.AsSlice()); err != nil {
			return err
		}
		if a.Is6() {
			family = unix.AF_INET6
		}
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
	return err
}
