package compat

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/lab-ops/natmap/nat"
)

// A chain that would hold thousands of forwards is written as a tree of
// chains instead, so that a packet passes about 2·log2(n/leafSize) jump
// rules and one leaf, not n rules.
// Each rule to dispatch (an item) has a key interval: protocol, then
// destination address, then destination port, as one bit string. A node
// of the tree is a chain covering a prefix of that bit string: the
// longest prefix its items share. A node with more than leafSize items is
// split at the next bit into two children, each matched by one jump rule
// (-p, -d ADDR/LEN, --dport LO:HI for the child's prefix); the others hold
// their items' own rules. An item whose port range straddles a split is
// written on both sides (a packet reaches one of them).
//
// The tree follows from the items alone, so a change rebuilds only the
// nodes whose items changed: a node whose items are those it had keeps
// its chain, untouched (its name is its prefix, its fingerprint its
// items).

// leafSize is the most items a chain of the tree holds without splitting.
// Smaller leaves make a packet's path shorter but the chains more (a
// third as many chains as items at 8), and iptables-legacy's restore
// time grows with the chains as well as the rules.
const leafSize = 32

// item is one dispatched entry: its key interval and its rules' text
// (after "-A CHAIN "), for each chain the tree writes (the forwards' tree
// writes three: NATMAP-PRE's, NATMAP-OUT's, NATMAP-COUNT's, over the same
// keys).
type item struct {
	lo, hi key
	lines  [][]string // by chain
	id     uint64
}

// key is a bit string of keyBits bits (at most 192), from the first bit of
// its first word: the protocol (a byte: 0 tcp, 1 udp), the destination
// address, the destination port.
type key [3]uint64

const keyBits = 192

func newItem(proto nat.Proto, addr netip.Addr, from, to uint16, lines ...[]string) *item {
	h := fnv.New64a()
	for _, ls := range lines {
		for _, l := range ls {
			h.Write([]byte(l))
			h.Write([]byte{'\n'})
		}
		h.Write([]byte{0})
	}
	return &item{lo: itemKey(proto, addr, from), hi: itemKey(proto, addr, to), lines: lines, id: h.Sum64()}
}

func itemKey(proto nat.Proto, addr netip.Addr, port uint16) key {
	var k key
	b := []byte{0}
	if proto == nat.ProtoUDP {
		b[0] = 1
	}
	b = append(b, addr.AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, port)
	for i, x := range b {
		k[i/8] |= uint64(x) << (56 - 8*(i%8))
	}
	return k
}

func (k key) bit(i int) uint64 { return k[i/64] >> (63 - i%64) & 1 }

func (k key) cmp(o key) int {
	for i := range k {
		if k[i] != o[i] {
			return cmp.Compare(k[i], o[i])
		}
	}
	return 0
}

// lcp is how many leading bits a and b share.
func lcp(a, b key) int {
	for i := range a {
		if x := a[i] ^ b[i]; x != 0 {
			return i*64 + bits.LeadingZeros64(x)
		}
	}
	return keyBits
}

// bounds are the first and last keys with the first plen bits of k.
func bounds(k key, plen int) (lo, hi key) {
	lo, hi = k, k
	for i := range k {
		from := max(plen-64*i, 0) // the first free bit of this word
		if from >= 64 {
			continue
		}
		mask := ^uint64(0) >> from
		lo[i] &^= mask
		hi[i] |= mask
	}
	return lo, hi
}

// field is n bits of k from bit at (n <= 64).
func (k key) field(at, n int) uint64 {
	var v uint64
	for i := 0; i < n; i++ {
		v = v<<1 | k.bit(at+i)
	}
	return v
}

// span is the items' key interval clipped to the node's [lo, hi], and
// their fingerprint.
func span(items []*item, lo, hi key) (from, to key, fp uint64) {
	from, to = items[0].lo, items[0].hi
	for _, it := range items {
		fp ^= it.id*0x9E3779B97F4A7C15 + 1
		if it.lo.cmp(from) < 0 {
			from = it.lo
		}
		if it.hi.cmp(to) > 0 {
			to = it.hi
		}
	}
	if from.cmp(lo) < 0 {
		from = lo
	}
	if to.cmp(hi) > 0 {
		to = hi
	}
	return from, to, fp
}

// tree is the nodes of a dispatch, by id: each node is a chain of every
// chain the tree writes (tags[i]+id), with the same jumps.
type tree struct {
	tags  []string // the chains' name prefixes, such as NATMAP-TP-
	f     family
	nodes map[string]*treeNode
	roots []string // the nodes the base chains jump to
	items int      // how many items it dispatches
}

type treeNode struct {
	fp    uint64 // the items' ids, combined
	n     int
	lines [][]string // by chain
	kids  []string
}

// treeBuild builds a tree, reusing the nodes of old whose items did not
// change.
type treeBuild struct {
	t     *tree
	old   *tree
	fresh []string // nodes built anew (their content may differ from old's)
}

// buildTree lays out items (a node covering every key) and returns the
// lines of its root for each chain (they go in the base chains
// themselves), and which nodes differ from old's: built anew, and gone.
func buildTree(tags []string, f family, items []*item, old *tree) (root [][]string, t *tree, fresh, gone []string) {
	t = &tree{tags: tags, f: f, nodes: map[string]*treeNode{}, items: len(items)}
	root = make([][]string, len(tags))
	if old != nil {
		t.nodes = maps.Clone(old.nodes) // kept unless rebuilt or gone
	}
	b := &treeBuild{t: t, old: old}
	var kids []string
	if len(items) > 0 {
		lo, hi := bounds(key{}, 0)
		from, to, _ := span(items, lo, hi)
		root, kids = b.lines(items, from, to)
	}
	t.roots = kids
	if old == nil {
		return root, t, b.fresh, nil
	}
	// Old nodes no longer reached from the root are gone. Only the old
	// subtrees of nodes built anew (and of the root) can hold such nodes:
	// a kept node keeps its whole subtree. A node of the new tree hangs
	// from the root or from a node built anew, or is inside a kept one.
	reached := map[string]bool{}
	for _, k := range kids {
		reached[k] = true
	}
	for _, name := range b.fresh {
		for _, k := range t.nodes[name].kids {
			reached[k] = true
		}
	}
	rebuilt := map[string]bool{}
	for _, name := range b.fresh {
		rebuilt[name] = true
	}
	var drop func(name string)
	drop = func(name string) {
		n := old.nodes[name]
		if n == nil {
			return
		}
		if !reached[name] {
			delete(t.nodes, name)
			gone = append(gone, name)
		} else if !rebuilt[name] {
			return // kept whole
		}
		for _, k := range n.kids {
			drop(k)
		}
	}
	for _, k := range old.roots {
		drop(k)
	}
	return root, t, b.fresh, gone
}

// lines are the rules of a node holding items, whose keys span [from, to]
// within the node, and the chains of its children. (One piece: a node is
// a leaf or is split in one pass over its items, whose two sides it
// builds; the sides' state lives only here.)
func (b *treeBuild) lines(items []*item, from, to key) (lines [][]string, kids []string) {
	lines = make([][]string, len(b.t.tags))
	leaf := func() ([][]string, []string) {
		// In key order, whatever order the items came in: the tree
		// follows from the items alone.
		sorted := slices.SortedFunc(slices.Values(items), func(a, b *item) int {
			return cmp.Or(a.lo.cmp(b.lo), a.hi.cmp(b.hi), cmp.Compare(a.id, b.id))
		})
		for _, it := range sorted {
			for v := range lines {
				lines[v] = append(lines[v], it.lines[v]...)
			}
		}
		return lines, nil
	}
	if len(items) <= leafSize {
		return leaf()
	}
	p := lcp(from, to)
	if p >= keyBits {
		return leaf()
	}
	// Each side's items, and (in the same pass) their span and
	// fingerprint.
	var side [2]struct {
		items    []*item
		from, to key
		fp       uint64
	}
	add := func(s int, it *item) {
		sd := &side[s]
		if len(sd.items) == 0 {
			sd.items = make([]*item, 0, len(items))
			sd.from, sd.to = it.lo, it.hi
		}
		sd.items = append(sd.items, it)
		sd.fp ^= it.id*0x9E3779B97F4A7C15 + 1
		if it.lo.cmp(sd.from) < 0 {
			sd.from = it.lo
		}
		if it.hi.cmp(sd.to) > 0 {
			sd.to = it.hi
		}
	}
	for _, it := range items {
		if it.lo.cmp(from) <= 0 || it.lo.bit(p) == 0 {
			add(0, it)
		}
		if it.hi.cmp(to) >= 0 || it.hi.bit(p) == 1 {
			add(1, it)
		}
	}
	if len(side[0].items) == len(items) && len(side[1].items) == len(items) {
		return leaf() // every item spans the split: no split helps
	}
	for s := range side {
		sd := &side[s]
		if len(sd.items) == 0 {
			continue
		}
		k := from
		if s == 1 {
			k[p/64] |= 1 << (63 - p%64)
		} else {
			k[p/64] &^= 1 << (63 - p%64)
		}
		clo, chi := bounds(k, p+1)
		if sd.from.cmp(clo) < 0 {
			sd.from = clo
		}
		if sd.to.cmp(chi) > 0 {
			sd.to = chi
		}
		jumps, id := b.child(sd.items, sd.from, sd.to, sd.fp)
		for v := range lines {
			lines[v] = append(lines[v], jumps[v])
		}
		kids = append(kids, id)
	}
	return lines, kids
}

// child is the jump to the chain of the node holding items, whose keys
// span [from, to] within it and whose fingerprint is fp: built, or kept.
func (b *treeBuild) child(items []*item, from, to key, fp uint64) (jumps []string, id string) {
	p := lcp(from, to)
	id = nodeID(from, p)
	if old := b.old.node(id); old == nil || old.fp != fp || old.n != len(items) {
		n := &treeNode{fp: fp, n: len(items)}
		b.t.nodes[id] = n
		b.fresh = append(b.fresh, id)
		n.lines, n.kids = b.lines(items, from, to)
	}
	match := ruleText(b.t.match(from, p)...)
	for _, tag := range b.t.tags {
		jumps = append(jumps, strings.TrimPrefix(match+" -j "+tag+id, " "))
	}
	return jumps, id
}

func (t *tree) node(name string) *treeNode {
	if t == nil {
		return nil
	}
	return t.nodes[name]
}

// nodeID names the node with prefix k/plen: a hash of the prefix (its
// chains are a tag and the id, 26 characters; iptables allows 28).
func nodeID(k key, plen int) string {
	lo, _ := bounds(k, plen)
	h := fnv.New64a()
	var b [25]byte
	b[0] = byte(plen)
	for i, w := range lo {
		binary.BigEndian.PutUint64(b[1+8*i:], w)
	}
	h.Write(b[:])
	return fmt.Sprintf("%016X", h.Sum64())
}

// match is what a jump to the node with prefix k/plen matches: the
// protocol, the address prefix, the port range, as far as the prefix
// goes.
func (t *tree) match(k key, plen int) []string {
	var m []string
	proto := "tcp"
	if k.field(0, 8) == 1 {
		proto = "udp"
	}
	if plen >= 8 {
		m = append(m, "-p", proto)
	}
	addrBits := t.f.host
	if a := min(max(plen-8, 0), addrBits); a > 0 {
		raw := make([]byte, addrBits/8)
		for i := range raw {
			raw[i] = byte(k.field(8+8*i, 8))
		}
		addr, _ := netip.AddrFromSlice(raw)
		m = append(m, "-d", netip.PrefixFrom(addr, a).Masked().String())
	}
	if q := plen - 8 - addrBits; q > 0 {
		lo, hi := bounds(k, plen)
		at := 8 + addrBits
		from, to := lo.field(at, 16), hi.field(at, 16)
		ports := fmt.Sprint(from)
		if to != from {
			ports = fmt.Sprintf("%d:%d", from, to)
		}
		m = append(m, "-m", proto, "--dport", ports)
	}
	return m
}

// names are the tree's chains of its chain v, sorted.
func (t *tree) names(v int) []string {
	var out []string
	for id := range t.nodes {
		out = append(out, t.tags[v]+id)
	}
	slices.Sort(out)
	return out
}
