package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// hostSystem changes host settings through /proc/sys, netlink and
// iptables. What it changes it remembers (hostSettings), so that it puts
// back what it found when nothing needs the change any more, after a
// restart or a crash too.
type hostSystem struct {
	settings *hostSettings
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

// FlushConntrack implements nat.System: one dump and delete per family
// that fs use, matched by natmapFlows.
func (hostSystem) FlushConntrack(fs []nat.Forward) error {
	byFamily := map[netlink.InetFamily]natmapFlows{}
	for _, f := range fs {
		family := netlink.InetFamily(unix.AF_INET6)
		if f.Int.Addr().Is4() {
			family = unix.AF_INET
		}
		if byFamily[family] == nil {
			byFamily[family] = natmapFlows{}
		}
		byFamily[family][flowKey{f.Proto, f.Ext, f.Int}] = true
	}
	var errs []error
	for family, flows := range byFamily {
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, flows); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// flowKey is what a forwarded flow's conntrack entry shows of its forward:
// the protocol, the original destination and the target it was sent to.
type flowKey struct {
	proto    nat.Proto
	ext, int netip.AddrPort
}

// natmapFlows matches the conntrack entries of flows natmap forwarded
// through a set of forwards: marked as forwarded, to the forward's
// external port (and address, unless the forward takes every address),
// answered by its target.
type natmapFlows map[flowKey]bool

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (m natmapFlows) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	if f.Mark&nat.MarkForwarded == 0 {
		return false
	}
	dst, ok1 := netip.AddrFromSlice(f.Forward.DstIP)
	target, ok2 := netip.AddrFromSlice(f.Reverse.SrcIP)
	if !ok1 || !ok2 {
		return false
	}
	proto := nat.Proto(f.Forward.Protocol)
	to := netip.AddrPortFrom(target.Unmap(), f.Reverse.SrcPort)
	if m[flowKey{proto, netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort), to}] {
		return true
	}
	any := netip.IPv4Unspecified()
	if dst.Unmap().Is6() {
		any = netip.IPv6Unspecified()
	}
	return m[flowKey{proto, netip.AddrPortFrom(any, f.Forward.DstPort), to}]
}
