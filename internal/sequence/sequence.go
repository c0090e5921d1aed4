// Package sequence is the change sequence both backends' golden tests
// play, so that the nftables and iptables goldens show the same rules:
// forwards of every kind (by address, by interface, to every local
// address, a run of ports, IPv6), SNATs, a Docker network's SameNet,
// hairpins, a forward deleted and a hairpin deleted.
package sequence

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/lab-ops/natmap/nat"
)

// Fwd is a forward: ifname may be empty, proto "tcp" or "udp".
func Fwd(ifname, proto, ext, in string) nat.Forward {
	p, err := nat.ParseProto(proto)
	if err != nil {
		panic(err)
	}
	return nat.Forward{ExtIf: ifname, Proto: p, Ext: netip.MustParseAddrPort(ext), Int: netip.MustParseAddrPort(in)}
}

func hairpin(lan string, f nat.Forward) nat.Hairpinned {
	return nat.Hairpinned{LAN: netip.MustParsePrefix(lan), Endpoint: f.Endpoint()}
}

// The forwards of the sequence.
var (
	SMTP     = Fwd("", "tcp", "203.0.113.43:25", "10.0.0.101:25")
	SSH      = Fwd("", "tcp", "203.0.113.43:2222", "10.0.0.101:22")
	DNS      = Fwd("", "udp", "203.0.113.43:53", "10.0.0.53:53")
	Web      = Fwd("vmbr0", "tcp", "203.0.113.43:443", "10.0.0.102:443")
	V6       = Fwd("", "tcp", "[2001:db8::43]:80", "[fd00::101]:8080")
	V6If     = Fwd("tailscale0", "udp", "[2001:db8::43]:5353", "[fd00::101]:53")
	AnyAddr  = Fwd("", "tcp", "0.0.0.0:8080", "172.17.0.2:80")
	AnyAddr6 = Fwd("", "udp", "[::]:5300", "[fd00::53]:53")
	ByIf     = Fwd("vmbr0", "tcp", "0.0.0.0:8443", "10.0.0.102:443") // whatever address vmbr0 has
)

// Run is 18 single ports and a range of 10 to one host (multiport lists
// of at most 15 slots, the range as a range, for iptables).
func Run() []nat.Forward {
	var out []nat.Forward
	for p := 1000; p < 1036; p += 2 {
		out = append(out, Fwd("", "tcp", fmt.Sprintf("203.0.113.44:%d", p), fmt.Sprintf("10.0.0.103:%d", p)))
	}
	for p := 5000; p <= 5009; p++ {
		out = append(out, Fwd("", "tcp", fmt.Sprintf("203.0.113.44:%d", p), fmt.Sprintf("10.0.0.103:%d", p)))
	}
	return out
}

// Rules are the sequence's SNAT and SameNet rules (most specific source
// first).
func Rules() nat.Rules {
	return nat.Rules{
		SNATs: []nat.SNAT{
			{IntNet: netip.MustParsePrefix("10.0.0.101/32"), ExtIP: netip.MustParseAddr("203.0.113.44"), ExtIf: "vmbr0"},
			{IntNet: netip.MustParsePrefix("10.0.0.0/24"), ExtIP: netip.MustParseAddr("203.0.113.43"), ExtIf: "vmbr0"},
			{IntNet: netip.MustParsePrefix("10.1.0.0/17"), ExtIP: netip.MustParseAddr("203.0.113.43"), ExtIf: "vmbr0"},
			{IntNet: netip.MustParsePrefix("fd00::/64"), ExtIP: netip.MustParseAddr("2001:db8::43"), ExtIf: "tailscale0"},
		},
		SameNet: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")},
	}
}

// Start is what the first Replace installs; Changes are applied after it
// in order.
func Start() nat.Ruleset { return nat.Ruleset{Forwards: []nat.Forward{SMTP, DNS}} }

// Changes are the sequence's Apply calls.
func Changes() []nat.Change {
	rules := Rules()
	run := Run()
	hairpins := []nat.Hairpinned{hairpin("10.0.0.0/24", SMTP), hairpin("10.0.0.101/32", SSH), hairpin("fd00::/64", V6), hairpin("172.17.0.0/16", AnyAddr)}
	for _, f := range run[18:] {
		hairpins = append(hairpins, hairpin("10.0.0.0/24", f))
	}
	return []nat.Change{
		{Add: append([]nat.Forward{SSH, Web, V6, V6If, AnyAddr, AnyAddr6, ByIf}, run...)},
		{Del: []nat.Forward{DNS}, Rules: &rules, HairpinAdd: hairpins},
		// The last hairpin of a LAN (10.0.0.101/32) goes.
		{HairpinDel: []nat.Hairpinned{hairpin("10.0.0.101/32", SSH)}},
	}
}

// Final is the ruleset after the whole sequence: what a backend holds,
// and what Render writes.
func Final() nat.Ruleset {
	rs := Start()
	for _, ch := range Changes() {
		rs = Fold(rs, ch)
	}
	return rs
}

// Fold is rs with ch applied, as a backend applies it.
func Fold(rs nat.Ruleset, ch nat.Change) nat.Ruleset {
	out := nat.Ruleset{Forwards: slices.DeleteFunc(slices.Clone(rs.Forwards), func(f nat.Forward) bool { return slices.Contains(ch.Del, f) })}
	out.Forwards = append(out.Forwards, ch.Add...)
	out.Rules = rs.Rules
	if ch.Rules != nil {
		out.Rules = *ch.Rules
	}
	out.Hairpinned = slices.DeleteFunc(slices.Clone(rs.Hairpinned), func(h nat.Hairpinned) bool { return slices.Contains(ch.HairpinDel, h) })
	out.Hairpinned = append(out.Hairpinned, ch.HairpinAdd...)
	return out
}
