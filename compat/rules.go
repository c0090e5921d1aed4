package compat

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/lab-ops/natmap/nat"
)

// script builds an iptables-restore input.
type script struct{ b strings.Builder }

func (s *script) line(format string, args ...any) { fmt.Fprintf(&s.b, format+"\n", args...) }
func (s *script) table(name string)               { s.line("*%s", name) }
func (s *script) commit()                         { s.line("COMMIT") }
func (s *script) String() string                  { return s.b.String() }

func markMask(m uint32) string { return fmt.Sprintf("%#x/%#x", m, m) }

func hostAddr(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// groupKey is what the forwards written as one set of rules share: all
// but their ports.
type groupKey struct {
	ext   netip.Addr
	iif   string
	proto nat.Proto
	dst   netip.Addr
}

func keyOf(f nat.Forward) groupKey {
	return groupKey{ext: f.Ext.Addr(), iif: f.ExtIf, proto: f.Proto, dst: f.Int.Addr()}
}

// maxMultiport is the multiport match's limit: 15 ports, a range counting
// as two.
const maxMultiport = 15

// entry is one port match of a group with its DNAT target.
type entry struct {
	ports     string // "25", "8000:8100" or a multiport list "25,465,8000:8100"
	multiport bool
	to        string // the DNAT target: ADDR (ports kept) or ADDR:PORT
	first     nat.Forward
	lo, hi    uint16 // the lowest and highest port it matches
}

// entries packs a group's forwards (sorted by port) into as few matches as
// iptables allows: untranslated ports as ranges and multiport lists of up
// to 15 slots, each translated port on its own.
func entries(key groupKey, fs []nat.Forward) []entry {
	addr := key.dst.String()
	if key.dst.Is6() {
		addr = "[" + addr + "]"
	}
	var out []entry
	type span struct {
		from, to uint16
		first    nat.Forward
	}
	var spans []span
	for _, f := range fs {
		p, q := f.Ext.Port(), f.Int.Port()
		if p != q {
			out = append(out, entry{ports: fmt.Sprint(p), to: fmt.Sprintf("%s:%d", addr, q), first: f, lo: p, hi: p})
			continue
		}
		if n := len(spans); n > 0 && spans[n-1].to+1 == p {
			spans[n-1].to = p
			continue
		}
		spans = append(spans, span{p, p, f})
	}
	text := func(s span) string {
		if s.from == s.to {
			return fmt.Sprint(s.from)
		}
		return fmt.Sprintf("%d:%d", s.from, s.to)
	}
	for len(spans) > 0 {
		var items []string
		slots := 0
		first, lo, hi := spans[0].first, spans[0].from, spans[0].to
		for len(spans) > 0 {
			cost := 1
			if spans[0].from != spans[0].to {
				cost = 2
			}
			if slots+cost > maxMultiport {
				break
			}
			items, slots, hi, spans = append(items, text(spans[0])), slots+cost, spans[0].to, spans[1:]
		}
		out = append(out, entry{ports: strings.Join(items, ","), multiport: len(items) > 1, to: key.dst.String(), first: first, lo: lo, hi: hi})
	}
	return out
}

// groupMatch is what a group's rules match: the protocol and the
// destination, and, for traffic that arrives (in), the input interface. A
// forward by interface (no address, an interface) matches whatever address
// the input interface has (addrtype's --limit-iface-in).
func groupMatch(key groupKey) (match, in []string) {
	match = []string{"-p", key.proto.String()}
	if key.ext.IsUnspecified() {
		match = append(match, "-m", "addrtype", "--dst-type", "LOCAL")
	} else {
		match = append(match, "-d", hostAddr(key.ext))
	}
	in = match
	if key.iif != "" {
		in = append([]string{}, match...)
		if key.ext.IsUnspecified() {
			in = append(in, "--limit-iface-in")
		}
		in = append(in, "-i", key.iif)
	}
	return match, in
}

// portMatch and comment are an entry's port match and its comment, which
// names it (and by which Counters finds it).
func (e entry) portMatch(key groupKey) []string {
	if e.multiport {
		return []string{"-m", "multiport", "--dports", e.ports}
	}
	return []string{"-m", key.proto.String(), "--dport", e.ports}
}

func (e entry) comment(key groupKey) string {
	what := fmt.Sprintf("natmap:dnat %s %s port %s -> %s", key.proto, key.ext, e.ports, e.to)
	if key.iif != "" {
		what += " iif " + key.iif
	}
	return what
}
