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

// rule writes one rule; arguments with spaces are quoted.
func (s *script) rule(args ...string) {
	for i, a := range args {
		if strings.ContainsAny(a, " \"") {
			args[i] = fmt.Sprintf("%q", a)
		}
	}
	s.line("%s", strings.Join(args, " "))
}

func markMask(m uint32) string { return fmt.Sprintf("%#x/%#x", m, m) }

func hostAddr(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// forwardRules writes a forward's two rules (op is -A or -D): in
// NATMAP-PRE, and, unless it is limited to an input interface, in
// NATMAP-OUT for the host's own connections.
func forwardRules(s *script, op string, f nat.Forward) {
	proto := f.Proto.String()
	match := []string{"-p", proto}
	if f.Ext.Addr().IsUnspecified() {
		match = append(match, "-m", "addrtype", "--dst-type", "LOCAL")
	} else {
		match = append(match, "-d", hostAddr(f.Ext.Addr()))
	}
	in := match
	if f.ExtIf != "" {
		in = append(append([]string{}, match...), "-i", f.ExtIf)
	}
	port := []string{"-m", proto, "--dport", fmt.Sprint(f.Ext.Port())}
	comment := []string{"-m", "comment", "--comment", "natmap:" + f.String()}
	to := f.Int.String()
	write := func(chain string, m []string, mark uint32) {
		base := append(append(append([]string{op, chain}, m...), port...), comment...)
		s.rule(append(append([]string{}, base...), "-j", "CONNMARK", "--or-mark", fmt.Sprintf("%#x", mark))...)
		s.rule(append(append([]string{}, base...), "-j", "DNAT", "--to-destination", to)...)
	}
	write(ChainPre, in, nat.MarkForwarded)
	if f.ExtIf == "" {
		write(ChainOut, match, nat.MarkForwarded|nat.MarkLocal)
	}
}

// ruleLines writes the hairpin masquerades and SNATs of family f.
func ruleLines(s *script, f family, r nat.Rules) {
	for _, m := range r.Masquerades {
		if famOf(m.Dst) != f {
			continue
		}
		ports := fmt.Sprint(m.From)
		if m.To != m.From {
			ports = fmt.Sprintf("%d:%d", m.From, m.To)
		}
		s.rule("-A", ChainHairpin, "-m", "connmark", "--mark", markMask(nat.MarkForwarded), "-s", m.Src.String(),
			"-d", hostAddr(m.Dst), "-p", m.Proto.String(), "-m", m.Proto.String(), "--dport", ports, "-j", "MASQUERADE")
	}
	for _, p := range r.SameNet {
		if famOf(p.Addr()) != f {
			continue
		}
		s.rule("-A", ChainHairpin, "-m", "connmark", "--mark", markMask(nat.MarkForwarded), "-s", p.String(), "-d", p.String(), "-j", "MASQUERADE")
	}
	for _, sn := range r.SNATs {
		if famOf(sn.ExtIP) != f {
			continue
		}
		s.rule("-A", ChainSNAT, "-s", sn.IntNet.String(), "-o", sn.ExtIf, "-j", "SNAT", "--to-source", sn.ExtIP.String())
	}
}
