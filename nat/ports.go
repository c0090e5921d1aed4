package nat

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Proto is a transport protocol number: ProtoTCP or ProtoUDP.
type Proto uint8

// The protocols natmap forwards.
const (
	ProtoTCP Proto = 6
	ProtoUDP Proto = 17
)

// ParseProto parses "tcp" or "udp" (any case). The empty string is TCP, the
// default of every command.
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "", "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp or udp)", s)
}

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// MarshalText writes "tcp" or "udp".
func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (p *Proto) UnmarshalText(b []byte) error {
	v, err := ParseProto(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// PortMap forwards the external ports From..To to the internal ports
// Target..Target+(To-From).
type PortMap struct {
	// From is the first external port.
	From uint16
	// To is the last external port (From for a single port).
	To uint16
	// Target is the internal port that From goes to.
	Target uint16
}

func (m PortMap) String() string {
	ext := portSpan(m.From, m.To)
	if m.Target == m.From {
		return ext
	}
	return ext + ":" + portSpan(m.Target, m.Target+(m.To-m.From))
}

func portSpan(from, to uint16) string {
	if from == to {
		return strconv.Itoa(int(from))
	}
	return strconv.Itoa(int(from)) + "-" + strconv.Itoa(int(to))
}

// PortPair is one external port and the internal port it goes to.
type PortPair struct {
	// Ext is the external port.
	Ext uint16
	// Int is the internal port.
	Int uint16
}

// PortList is a canonical list of port maps: sorted by external port, never
// overlapping, adjacent maps merged. Build one with ParsePorts or
// PortListOf; its String form parses back to the same list.
type PortList []PortMap

// ParsePorts parses a comma-separated list of ports and ranges, each
// optionally translated: "25,465,8000-8100,2222:22,5000-5009:6000-6009".
// A port is 1-65535; a range is low-high; a translated range has the same
// length on both sides; no external port may appear twice.
func ParsePorts(s string) (PortList, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("the list is empty")
	}
	var maps []PortMap
	for _, item := range strings.Split(s, ",") {
		m, err := parsePortMap(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		maps = append(maps, m)
	}
	slices.SortFunc(maps, func(a, b PortMap) int { return int(a.From) - int(b.From) })
	for i := 1; i < len(maps); i++ {
		if maps[i].From <= maps[i-1].To {
			return nil, fmt.Errorf("port %d appears more than once", maps[i].From)
		}
	}
	return mergeMaps(maps), nil
}

func parsePortMap(item string) (PortMap, error) {
	if item == "" {
		return PortMap{}, fmt.Errorf("empty entry in the list")
	}
	ext, target, translated := strings.Cut(item, ":")
	from, to, err := parseSpan(ext)
	if err != nil {
		return PortMap{}, err
	}
	m := PortMap{From: from, To: to, Target: from}
	if !translated {
		return m, nil
	}
	tFrom, tTo, err := parseSpan(target)
	if err != nil {
		return PortMap{}, err
	}
	if tTo-tFrom != to-from {
		return PortMap{}, fmt.Errorf("%q maps %d ports to %d", item, to-from+1, tTo-tFrom+1)
	}
	m.Target = tFrom
	return m, nil
}

func parseSpan(s string) (from, to uint16, err error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if from, err = parsePort(lo); err != nil {
		return 0, 0, err
	}
	if !isRange {
		return from, from, nil
	}
	if to, err = parsePort(hi); err != nil {
		return 0, 0, err
	}
	if to < from {
		return 0, 0, fmt.Errorf("range %s is reversed", s)
	}
	return from, to, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, fmt.Errorf("missing port number")
	}
	n, err := strconv.Atoi(s)
	if err != nil || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d is out of range 1-65535", n)
	}
	return uint16(n), nil
}

// mergeMaps joins sorted, non-overlapping maps that continue each other.
func mergeMaps(maps []PortMap) PortList {
	var out PortList
	for _, m := range maps {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if int(last.To)+1 == int(m.From) && int(last.Target)+int(last.To-last.From)+1 == int(m.Target) {
				last.To = m.To
				continue
			}
		}
		out = append(out, m)
	}
	return out
}

// PortListOf builds the canonical list of a set of pairs, in any order.
// Pairs must not repeat an external port.
func PortListOf(pairs []PortPair) PortList {
	sorted := slices.Clone(pairs)
	slices.SortFunc(sorted, func(a, b PortPair) int { return cmp.Or(int(a.Ext)-int(b.Ext), int(a.Int)-int(b.Int)) })
	sorted = slices.Compact(sorted) // a port listed twice is one port
	maps := make([]PortMap, len(sorted))
	for i, p := range sorted {
		maps[i] = PortMap{From: p.Ext, To: p.Ext, Target: p.Int}
	}
	return mergeMaps(maps)
}

// Union is the ports of l and of more, a port given in both once: the one
// way rules' ports are merged (an add to a rule, apply, migration).
func (l PortList) Union(more PortList) PortList {
	return PortListOf(append(l.Pairs(), more.Pairs()...))
}

func (l PortList) String() string {
	parts := make([]string, len(l))
	for i, m := range l {
		parts[i] = m.String()
	}
	return strings.Join(parts, ",")
}

// first is the list's first external port, 0 for an empty list (which
// Validate refuses, but which sorting must survive: a journal line may
// hold one before the replayed state is validated).
func (l PortList) first() uint16 {
	if len(l) == 0 {
		return 0
	}
	return l[0].From
}

// Pairs lists every external port with its internal port, in order.
func (l PortList) Pairs() []PortPair {
	out := make([]PortPair, 0, l.Count())
	for _, m := range l {
		for p := int(m.From); p <= int(m.To); p++ {
			out = append(out, PortPair{Ext: uint16(p), Int: m.Target + uint16(p-int(m.From))})
		}
	}
	return out
}

// Count is the number of external ports in the list.
func (l PortList) Count() int {
	n := 0
	for _, m := range l {
		n += int(m.To-m.From) + 1
	}
	return n
}

// MarshalText writes the canonical list.
func (l PortList) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses a list written by MarshalText or by a user.
func (l *PortList) UnmarshalText(b []byte) error {
	v, err := ParsePorts(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Target returns the internal port of the external port p, if p is in the
// list.
func (l PortList) Target(p uint16) (uint16, bool) {
	i, found := slices.BinarySearchFunc(l, p, func(m PortMap, p uint16) int {
		switch {
		case m.To < p:
			return -1
		case m.From > p:
			return 1
		}
		return 0
	})
	if !found {
		return 0, false
	}
	return l[i].Target + (p - l[i].From), true
}

// Without returns the list less the external ports of other.
func (l PortList) Without(other PortList) PortList {
	left := slices.DeleteFunc(l.Pairs(), func(p PortPair) bool {
		_, drop := other.Target(p.Ext)
		return drop
	})
	return PortListOf(left)
}
