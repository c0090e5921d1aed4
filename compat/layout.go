package compat

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lab-ops/natmap/nat"
)

// layout is everything natmap writes into one family's tables: each of
// its chains with its rules, and the trees that dispatch the forwards.
type layout struct {
	f     family
	base  map[string]chainContent // natmap's fixed chains
	trees map[string]*tree        // treeForwards and treeHairpin
	// from is the layout this one was built from, and fresh and gone its
	// trees' chains built anew and gone since.
	from        *layout
	fresh, gone []string
}

type chainContent struct {
	table string
	lines []string // each rule's text after "-A CHAIN "
}

// The trees: the forwards' (one tree written as three: NATMAP-PRE's,
// NATMAP-OUT's and NATMAP-COUNT's chains), and the hairpins'.
const (
	treeForwards = "forwards"
	treeHairpin  = "hairpin"
)

// treeBases are the base chains each tree hangs from, and treeTags its
// chains' name prefixes, in the same order.
var (
	treeBases = map[string][]string{treeForwards: {ChainPre, ChainOut, ChainCount}, treeHairpin: {ChainHairpin}}
	treeTags  = map[string][]string{treeForwards: {"NATMAP-TP-", "NATMAP-TO-", "NATMAP-TC-"}, treeHairpin: {"NATMAP-TH-"}}
)

// baseChains are natmap's fixed chains, by table, in the order they are
// written.
var baseChains = []struct{ table, chain string }{
	{"nat", ChainPre}, {"nat", ChainOut}, {"nat", ChainPost}, {"nat", ChainHairpin}, {"nat", ChainSNAT},
	{"filter", ChainForward}, {"mangle", ChainCount}, {"raw", ChainLocalnet},
}

var tables = []string{"nat", "filter", "mangle", "raw"}

// groupItems are a group's entries as the forwards tree's items, rendered
// once for as long as the group's forwards stay the same.
type groupItems struct {
	fs    []nat.Forward
	items []*item
}

func renderGroup(key groupKey, fs []nat.Forward) *groupItems {
	g := &groupItems{fs: fs}
	match, in := groupMatch(key)
	for _, e := range entries(key, fs) {
		comment := []string{"-m", "comment", "--comment", e.comment(key)}
		pair := func(m []string, mark uint32) []string {
			base := append(append(slices.Clone(m), e.portMatch(key)...), comment...)
			return []string{
				ruleText(append(slices.Clone(base), "-j", "CONNMARK", "--or-mark", fmt.Sprintf("%#x", mark))...),
				ruleText(append(slices.Clone(base), "-j", "DNAT", "--to-destination", e.to)...),
			}
		}
		var out []string // a forward limited to an input interface is not for the host's own connections
		if key.iif == "" {
			out = pair(match, nat.MarkForwarded|nat.MarkLocal)
		}
		count := append(append(slices.Clone(in), e.portMatch(key)...), "-m", "conntrack", "--ctstate", "ESTABLISHED", "--ctdir", "ORIGINAL")
		g.items = append(g.items, newItem(key.proto, key.ext, e.lo, e.hi, pair(in, nat.MarkForwarded), out, []string{ruleText(append(count, comment...)...)}))
	}
	return g
}

// itemCache keeps each group's items between changes. The backend's own
// cache holds exactly its groups (synced): a change then walks the cache
// instead of looking every group up.
type itemCache struct {
	m       map[groupKey]*groupItems
	pending map[groupKey]*groupItems // rendered for a change not committed yet
	synced  bool
}

func newItemCache() *itemCache {
	return &itemCache{m: map[groupKey]*groupItems{}, pending: map[groupKey]*groupItems{}}
}

func (c *itemCache) get(key groupKey, fs []nat.Forward) *groupItems {
	for _, m := range []map[groupKey]*groupItems{c.m, c.pending} {
		if g, ok := m[key]; ok && len(g.fs) == len(fs) && (len(fs) == 0 || &g.fs[0] == &fs[0]) {
			return g
		}
	}
	g := renderGroup(key, fs)
	if c.synced {
		c.pending[key] = g
	} else {
		c.m[key] = g
	}
	return g
}

// commit makes the groups over changed part of a synced cache.
func (c *itemCache) commit(over groups) {
	for k, fs := range over {
		if len(fs) == 0 {
			delete(c.m, k)
		} else {
			c.m[k] = c.get(k, fs)
		}
	}
	clear(c.pending)
}

// each calls fn with every group of base as over changes it, and its
// items.
func (c *itemCache) each(base, over groups, fn func(groupKey, *groupItems)) {
	if !c.synced {
		eachGroup(base, over, func(k groupKey, fs []nat.Forward) { fn(k, c.get(k, fs)) })
		return
	}
	for k, g := range c.m {
		if _, changed := over[k]; !changed {
			fn(k, g)
		}
	}
	for k, fs := range over {
		if len(fs) > 0 {
			fn(k, c.get(k, fs))
		}
	}
}

// buildLayout is family f's whole content for the groups of base as over
// changes them, and rules, its trees built from old's where their items
// did not change. Built from old (not nil), the forwards' chains are
// old's when same.forwards says the groups are those old was built from,
// and the rules' chains are old's when same.rules says r is.
func buildLayout(f family, base, over groups, r nat.Rules, masqs []nat.Masquerade, same sameAs, cache *itemCache, old *layout) *layout {
	l := &layout{f: f, base: map[string]chainContent{}, trees: map[string]*tree{}, from: old}
	grow := func(name string, items []*item) [][]string {
		var prev *tree
		if old != nil {
			prev = old.trees[name]
		}
		root, t, fresh, gone := buildTree(treeTags[name], f, items, prev)
		l.trees[name] = t
		for _, tag := range t.tags {
			for _, id := range fresh {
				l.fresh = append(l.fresh, tag+id)
			}
			for _, id := range gone {
				l.gone = append(l.gone, tag+id)
			}
		}
		return root
	}
	keep := func(tree string, chains ...string) {
		for _, c := range chains {
			l.base[c] = old.base[c]
		}
		l.trees[tree] = old.trees[tree]
	}
	if old != nil && same.forwards {
		keep(treeForwards, ChainPre, ChainOut, ChainCount)
	} else {
		l.forwards(base, over, cache, grow)
	}
	if old != nil && same.rules {
		keep(treeHairpin, ChainHairpin, ChainSNAT)
	} else {
		l.rules(r, masqs, grow)
	}
	l.base[ChainPost] = chainContent{"nat", []string{
		ruleText("-m", "connmark", "--mark", markMask(nat.MarkLocal), "-j", "MASQUERADE"),
		ruleText("-j", ChainHairpin),
		ruleText("-j", ChainSNAT),
	}}
	l.base[ChainForward] = chainContent{"filter", []string{ruleText("-m", "connmark", "--mark", markMask(nat.MarkForwarded), "-j", "ACCEPT")}}
	var localnet []string
	if !f.v6 {
		localnet = []string{
			ruleText("!", "-i", "lo", "-d", "127.0.0.0/8", "-m", "comment", "--comment", "natmap: nothing from the network to 127.0.0.0/8", "-j", "DROP"),
			ruleText("!", "-i", "lo", "-s", "127.0.0.0/8", "-m", "comment", "--comment", "natmap: nothing from the network from 127.0.0.0/8", "-j", "DROP"),
		}
	}
	l.base[ChainLocalnet] = chainContent{"raw", localnet}
	return l
}

// sameAs says which inputs of a layout are those of the layout it is
// built from.
type sameAs struct{ forwards, rules bool }

// forwards lays out the forwards' chains: NATMAP-PRE, NATMAP-OUT and
// NATMAP-COUNT, each a head of forwards of every local address and a
// tree of the others.
func (l *layout) forwards(base, over groups, cache *itemCache, grow func(string, []*item) [][]string) {
	hint := 16
	if l.from != nil {
		if t := l.from.trees[treeForwards]; t != nil {
			hint = t.items + 16
		}
	}
	items := make([]*item, 0, hint)
	wildcards := map[groupKey]*groupItems{}
	cache.each(base, over, func(k groupKey, g *groupItems) {
		if famOf(k.ext) != l.f {
			return
		}
		if k.ext.IsUnspecified() {
			wildcards[k] = g
			return
		}
		items = append(items, g.items...)
	})
	// Each base chain: its fixed head, the forwards of every local address
	// (in a fixed order), then the tree of the others.
	head := [][]string{
		nil,
		{ruleText("-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "RETURN")},
		{ruleText("-m", "connmark", "!", "--mark", markMask(nat.MarkForwarded), "-j", "RETURN")},
	}
	for _, k := range sortedKeys(wildcards) {
		for _, it := range wildcards[k].items {
			for v := range head {
				head[v] = append(head[v], it.lines[v]...)
			}
		}
	}
	root := grow(treeForwards, items)
	for v, base := range treeBases[treeForwards] {
		l.base[base] = chainContent{tableOf(base), append(head[v], root[v]...)}
	}
}

// rules lays out the hairpins' masquerades (a tree) and the SNATs.
func (l *layout) rules(r nat.Rules, masqs []nat.Masquerade, grow func(string, []*item) [][]string) {
	var hairpins []*item
	for _, m := range masqs {
		if famOf(m.Dst) != l.f {
			continue
		}
		ports := fmt.Sprint(m.From)
		if m.To != m.From {
			ports = fmt.Sprintf("%d:%d", m.From, m.To)
		}
		hairpins = append(hairpins, newItem(m.Proto, m.Dst, m.From, m.To, []string{ruleText("-m", "connmark", "--mark", markMask(nat.MarkForwarded),
			"-s", m.Src.String(), "-d", hostAddr(m.Dst), "-p", m.Proto.String(), "-m", m.Proto.String(), "--dport", ports,
			"-m", "comment", "--comment", "natmap:"+m.String(), "-j", "MASQUERADE")}))
	}
	var sameNet, snats []string
	for _, p := range r.SameNet {
		if famOf(p.Addr()) == l.f {
			sameNet = append(sameNet, ruleText("-m", "connmark", "--mark", markMask(nat.MarkForwarded), "-s", p.String(), "-d", p.String(), "-j", "MASQUERADE"))
		}
	}
	for _, sn := range r.SNATs {
		if famOf(sn.IntNet.Addr()) != l.f {
			continue
		}
		target := []string{"-j", "SNAT", "--to-source", sn.ExtIP.String()}
		if sn.Masquerade() {
			target = []string{"-j", "MASQUERADE"}
		}
		snats = append(snats, ruleText(append([]string{"-s", sn.IntNet.String(), "-o", sn.ExtIf, "-m", "comment", "--comment", "natmap:" + sn.String()}, target...)...))
	}
	l.base[ChainHairpin] = chainContent{"nat", append(grow(treeHairpin, hairpins)[0], sameNet...)}
	l.base[ChainSNAT] = chainContent{"nat", snats}
}

// chain is the content of natmap's chain name in the layout.
func (l *layout) chain(name string) (chainContent, bool) {
	if c, ok := l.base[name]; ok {
		return c, true
	}
	for tr, t := range l.trees {
		for v, tag := range t.tags {
			if id, ok := strings.CutPrefix(name, tag); ok {
				if n := t.nodes[id]; n != nil {
					return chainContent{tableOf(treeBases[tr][v]), n.lines[v]}, true
				}
				return chainContent{}, false
			}
		}
	}
	return chainContent{}, false
}

func tableOf(base string) string {
	for _, b := range baseChains {
		if b.chain == base {
			return b.table
		}
	}
	return ""
}

// names are the layout's chains of table: the base chains in their order,
// then the trees' sorted.
func (l *layout) names(table string) []string {
	var base, rest []string
	for _, b := range baseChains {
		if b.table == table {
			base = append(base, b.chain)
		}
	}
	for tr, t := range l.trees {
		for v, b := range treeBases[tr] {
			if tableOf(b) == table {
				rest = append(rest, t.names(v)...)
			}
		}
	}
	slices.Sort(rest)
	return append(base, rest...)
}

// count is how many chains and rules the layout has.
func (l *layout) count() (chains, rules int) {
	for _, table := range tables {
		for _, name := range l.names(table) {
			c, _ := l.chain(name)
			chains, rules = chains+1, rules+len(c.lines)
		}
	}
	return chains, rules
}

// write writes the layout's chains of table (declared, so created or
// flushed, then filled), with jumps to the base chains when jumps is set
// (a file the host restores at boot).
func (l *layout) write(w *script, table string, jumpsToo bool) {
	w.table(table)
	names := l.names(table)
	for _, name := range names {
		w.line(":%s - [0:0]", name)
	}
	if jumpsToo {
		for _, j := range jumps {
			if j[0] == table && j[1] != "DOCKER-USER" {
				w.line("-A %s -j %s", j[1], j[2])
			}
		}
	}
	for _, name := range names {
		c, _ := l.chain(name)
		for _, line := range c.lines {
			w.line("-A %s %s", name, line)
		}
	}
	w.commit()
}

// full is the restore script that makes the kernel hold the layout:
// every chain declared (created, or flushed) and filled. (Chains of an
// earlier layout that this one has not are removed by ensureJumps.)
func (l *layout) full() string {
	var w script
	for _, table := range tables {
		l.write(&w, table, false)
	}
	return w.String()
}

// diffScript is the restore script that takes the kernel from old to now:
// each chain whose rules differ is declared (created or flushed) and
// filled, each chain old has and now has not is flushed and deleted.
// False when nothing differs. When one layout was built from the other,
// only the chains the build touched are compared.
func diffScript(old, now *layout) (string, bool) {
	if old == now {
		return "", false
	}
	var candidates []string
	switch {
	case now.from == old:
		candidates = append(slices.Clone(now.fresh), now.gone...)
	case old.from == now:
		candidates = append(slices.Clone(old.fresh), old.gone...)
	default:
		for _, table := range tables {
			candidates = append(candidates, old.names(table)...)
			candidates = append(candidates, now.names(table)...)
		}
	}
	for _, b := range baseChains {
		candidates = append(candidates, b.chain)
	}
	slices.Sort(candidates)
	candidates = slices.Compact(candidates)
	fill, drop := map[string][]string{}, map[string][]string{}
	for _, name := range candidates {
		o, had := old.chain(name)
		n, has := now.chain(name)
		switch {
		case has && (!had || !slices.Equal(o.lines, n.lines)):
			fill[n.table] = append(fill[n.table], name)
		case had && !has:
			drop[o.table] = append(drop[o.table], name)
		}
	}
	var w script
	changed := false
	for _, table := range tables {
		if len(fill[table])+len(drop[table]) == 0 {
			continue
		}
		changed = true
		w.table(table)
		for _, name := range append(slices.Clone(fill[table]), drop[table]...) {
			w.line(":%s - [0:0]", name)
		}
		for _, name := range fill[table] {
			c, _ := now.chain(name)
			for _, line := range c.lines {
				w.line("-A %s %s", name, line)
			}
		}
		for _, name := range drop[table] {
			w.line("-X %s", name)
		}
		w.commit()
	}
	return w.String(), changed
}

// ruleText is a rule's arguments as restore text; arguments with spaces
// are quoted.
func ruleText(args ...string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \"") {
			a = fmt.Sprintf("%q", a)
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
