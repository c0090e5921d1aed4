// Package compat is natmap's iptables backend, for hosts that run
// iptables-legacy or tools that only understand iptables. It programs
// chains of natmap's own — NATMAP-PRE, NATMAP-OUT, NATMAP-POST,
// NATMAP-HAIRPIN and NATMAP-SNAT in the nat table, NATMAP-FWD in the filter
// table, NATMAP-COUNT (counting only) in the mangle table — reached by one
// jump each, inserted at the top of PREROUTING, OUTPUT, POSTROUTING and
// FORWARD (and DOCKER-USER when it exists). It
// never appends rules to built-in chains.
//
// Every change is one `iptables-restore --noflush` per address family
// (with the lock wait): deletions by rule specification and additions in
// one atomic commit, never one process per rule, never deletion by rule
// number. IPv6 goes through ip6tables-restore. Each forward is two rules
// (mark, then DNAT), and the chains that hold them (NATMAP-PRE, NATMAP-OUT,
// NATMAP-COUNT, NATMAP-HAIRPIN) dispatch through a tree of chains
// (NATMAP-T*: tree.go), so a packet passes about 2·log2(n/32) jump rules
// and a leaf of at most 32 entries, not n rules,
// and a change rewrites only the chains of the tree it touches.
package compat

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/lab-ops/natmap/nat"
)

// Mode is the iptables variant: legacy (x_tables) or nft (iptables-nft).
type Mode string

// The iptables variants.
const (
	Legacy Mode = "legacy"
	NFT    Mode = "nft"
)

// Chain names.
const (
	ChainPre     = "NATMAP-PRE"
	ChainOut     = "NATMAP-OUT"
	ChainPost    = "NATMAP-POST"
	ChainHairpin = "NATMAP-HAIRPIN"
	ChainSNAT    = "NATMAP-SNAT"
	ChainForward = "NATMAP-FWD"
	ChainCount   = "NATMAP-COUNT" // mangle: counts the forwards' packets
	// ChainLocalnet (raw) drops packets from the network to or from
	// 127.0.0.0/8, before any NAT.
	ChainLocalnet = "NATMAP-LOCALNET"
)

// jumps are the jumps from built-in chains: table, chain, target.
var jumps = [][3]string{
	{"nat", "PREROUTING", ChainPre},
	{"nat", "OUTPUT", ChainOut},
	{"nat", "POSTROUTING", ChainPost},
	{"filter", "FORWARD", ChainForward},
	{"filter", "DOCKER-USER", ChainForward},
	{"mangle", "PREROUTING", ChainCount},
	{"raw", "PREROUTING", ChainLocalnet},
}

// Backend implements nat.Backend with iptables. It keeps the forwards it
// installed, grouped as they are written, so that a change rewrites only
// the groups it touches.
type Backend struct {
	mode Mode

	mu     sync.Mutex
	groups map[groupKey][]nat.Forward   // sorted by external port
	rules  nat.Rules                    // the SNAT and SameNet rules written last (no hairpins)
	eps    map[nat.Endpoint]nat.Forward // every forward installed, by endpoint
	// hairpins are the hairpin elements, by endpoint: the LANs of each.
	// Their masquerades are written for the forwards installed.
	hairpins map[nat.Endpoint][]netip.Prefix
	laid     map[family]*layout // what was written last, by family
	cache    *itemCache         // each group's rendered rules (synced with groups)
	// run loads a restore script into one family's tables; b.restore
	// unless a test stands in for a family that fails.
	run func(ctx context.Context, f family, text string) error
	// noIPv6: the kernel has no IPv6 (booted with ipv6.disable=1), so
	// ip6tables has no tables; the backend runs IPv4 alone.
	noIPv6 bool
}

// New returns a backend for the iptables variant mode.
func New(mode Mode) *Backend {
	b := &Backend{mode: mode, groups: map[groupKey][]nat.Forward{}, noIPv6: !KernelHasIPv6(), eps: map[nat.Endpoint]nat.Forward{},
		hairpins: map[nat.Endpoint][]netip.Prefix{}, laid: map[family]*layout{}, cache: syncedCache()}
	b.run = b.restore
	return b
}

// KernelHasIPv6 reports whether the kernel runs IPv6: a kernel booted with
// ipv6.disable=1 has no net.ipv6 sysctls (and ip6tables no tables, "Address
// family not supported by protocol"). An interface's disable_ipv6 is not
// that: the tables are there.
func KernelHasIPv6() bool {
	_, err := os.Stat("/proc/sys/net/ipv6/conf")
	return err == nil
}

// errNoIPv6 refuses an IPv6 rule on a kernel without IPv6.
var errNoIPv6 = fmt.Errorf("IPv6 is disabled in this kernel (booted with ipv6.disable=1): ip6tables has no tables for IPv6 rules: %w", nat.ErrInvalid)

// families are the address families the backend writes.
func (b *Backend) families() []family {
	if b.noIPv6 {
		return []family{v4}
	}
	return []family{v4, v6}
}

// Name implements nat.Backend.
func (b *Backend) Name() string { return "iptables-" + string(b.mode) }

// Mode is the backend's iptables variant.
func (b *Backend) Mode() Mode { return b.mode }

type family struct {
	v6   bool
	host int // prefix length of one address
}

var (
	v4 = family{host: 32}
	v6 = family{v6: true, host: 128}
)

func (f family) binary(mode Mode, tool string) string {
	name := "iptables"
	if f.v6 {
		name = "ip6tables"
	}
	return name + "-" + string(mode) + tool
}

func famOf(a netip.Addr) family {
	if a.Is4() {
		return v4
	}
	return v6
}

// Replace implements nat.Backend: natmap's chains are declared (so
// flushed) and refilled in one restore per family, then the jumps are made
// sure of. When the IPv6 half fails, the IPv4 half is put back as it was:
// both families change, or neither.
func (b *Backend) Replace(ctx context.Context, rs nat.Ruleset) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	over, err := regroup(nil, nil, nil, rs.Forwards)
	if err != nil {
		return err
	}
	hairpins, err := editHairpins(nil, nil, rs.Hairpinned)
	if err != nil {
		return err
	}
	rules, masqs := rs.Rules, rs.Masquerades()
	rules.Hairpinned = nil
	next := map[family]*layout{}
	cache := syncedCache() // of the new groups alone
	for _, f := range []family{v4, v6} {
		next[f] = buildLayout(f, nil, over, rules, masqs, sameAs{}, cache, b.laid[f])
	}
	err = b.bothFamilies(ctx, func(f family) (string, bool) { return next[f].full(), true },
		func(f family) (string, bool) { return b.layoutOf(f).full(), true })
	if err != nil {
		return err
	}
	for _, l := range next {
		l.from = nil
	}
	b.groups, b.eps, b.rules, b.hairpins, b.laid, b.cache = groups{}, map[nat.Endpoint]nat.Forward{}, rules, hairpins, next, cache
	b.commit(over, nil, rs.Forwards)
	for _, f := range b.families() {
		if err := b.ensureJumps(ctx, f); err != nil {
			return err
		}
	}
	return nil
}

// layoutOf is what was written last in family f (an empty layout before
// anything was).
func (b *Backend) layoutOf(f family) *layout {
	if l := b.laid[f]; l != nil {
		return l
	}
	return buildLayout(f, nil, nil, nat.Rules{}, nil, sameAs{}, newItemCache(), nil)
}

// bothFamilies runs the IPv4 script, then the IPv6 one (a family whose
// script says nothing to do is skipped, and IPv6 on a kernel without it). When the IPv6 half fails, the
// IPv4 half is undone with its undo script, whatever the context says: a
// change reaches both families or neither.
func (b *Backend) bothFamilies(ctx context.Context, do, undo func(family) (string, bool)) error {
	text4, change4 := do(v4)
	if change4 {
		if err := b.run(ctx, v4, text4); err != nil {
			return err
		}
	}
	text6, change6 := do(v6)
	if !change6 || b.noIPv6 {
		return nil
	}
	err := b.run(ctx, v6, text6)
	if err == nil || !change4 {
		return err
	}
	back, _ := undo(v4)
	if uerr := b.run(context.WithoutCancel(ctx), v4, back); uerr != nil {
		return fmt.Errorf("%w; and putting the IPv4 half back failed too: %v", err, uerr)
	}
	return fmt.Errorf("%w (the IPv4 half was put back: nothing changed)", err)
}

// Check implements nat.Backend: every jump is there, and each of natmap's
// chains holds as many rules as natmap wrote. It reads one iptables-save per
// family.
func (b *Backend) Check(ctx context.Context, r nat.Rules) error {
	b.mu.Lock()
	want := map[family]*layout{}
	same := reflect.DeepEqual(r, b.rules)
	var masqs []nat.Masquerade
	if !same {
		masqs = b.masquerades(b.hairpins, nil)
	}
	for _, f := range b.families() {
		want[f] = buildLayout(f, b.groups, nil, r, masqs, sameAs{forwards: true, rules: same}, b.cache, b.laid[f])
	}
	b.mu.Unlock()
	for _, f := range b.families() {
		out, err := exec.CommandContext(ctx, f.binary(b.mode, "-save")).Output()
		if err != nil {
			if f.v6 {
				continue
			}
			return fmt.Errorf("%s: %w", f.binary(b.mode, "-save"), err)
		}
		have, chains := countRules(string(out))
		for _, j := range jumps {
			if chains[j[0]+" "+j[1]] && have[j[0]+" "+j[1]+" -> "+j[2]] == 0 {
				return fmt.Errorf("the jump %s -> %s is missing", j[1], j[2])
			}
		}
		for _, table := range tables {
			for _, name := range want[f].names(table) {
				c, _ := want[f].chain(name)
				key := table + " " + name
				if !chains[key] {
					return fmt.Errorf("chain %s is missing", name)
				}
				if have[key] != len(c.lines) {
					return fmt.Errorf("chain %s holds %d rules, natmap wrote %d", name, have[key], len(c.lines))
				}
			}
		}
	}
	return nil
}

// countRules reads iptables-save (or restore) text: the rules of each
// "TABLE CHAIN", the jumps "TABLE CHAIN -> TARGET" that are a whole rule,
// and which chains exist.
func countRules(text string) (counts map[string]int, chains map[string]bool) {
	counts, chains = map[string]int{}, map[string]bool{}
	table := ""
	for _, l := range strings.Split(text, "\n") {
		fields := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":") && len(fields) > 0:
			chains[table+" "+fields[0][1:]] = true
		case len(fields) > 1 && fields[0] == "-A":
			counts[table+" "+fields[1]]++
			if len(fields) == 4 && fields[2] == "-j" {
				counts[table+" "+fields[1]+" -> "+fields[3]]++
			}
		}
	}
	return counts, chains
}

// Apply implements nat.Backend: one restore per family that rewrites the
// chains whose rules the change alters (the base chains and the nodes of
// the trees above the forwards it adds or deletes); when the IPv6 half
// fails the IPv4 half is put back, so nothing changes.
func (b *Backend) Apply(ctx context.Context, ch nat.Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.refuseIPv6(ch); err != nil {
		return err
	}
	if ch.Rules != nil && len(ch.Rules.Hairpinned) > 0 {
		return errors.New("hairpins come as Change.HairpinDel and HairpinAdd, not in the rules")
	}
	over, err := regroup(b.groups, b.eps, ch.Del, ch.Add)
	if err != nil {
		return err
	}
	hairpins, err := editHairpins(b.hairpins, ch.HairpinDel, ch.HairpinAdd)
	if err != nil {
		return err
	}
	rules := b.rules
	if ch.Rules != nil {
		rules = *ch.Rules
	}
	// The hairpins' masquerades change with the elements, and with the
	// forwards of hairpinned endpoints (one installed or withdrawn).
	same := ch.Rules == nil && len(ch.HairpinDel)+len(ch.HairpinAdd) == 0
	for _, f := range append(slices.Clone(ch.Del), ch.Add...) {
		if len(hairpins[f.Endpoint()]) > 0 {
			same = false
		}
	}
	var masqs []nat.Masquerade
	if !same {
		masqs = b.masquerades(hairpins, &ch)
	}
	laid := map[family]*layout{}
	for _, f := range []family{v4, v6} {
		if touches(f, ch) {
			laid[f] = buildLayout(f, b.groups, over, rules, masqs, sameAs{forwards: len(over) == 0, rules: same}, b.cache, b.laid[f])
		} else {
			laid[f] = b.layoutOf(f)
		}
	}
	err = b.bothFamilies(ctx, func(f family) (string, bool) { return diffScript(b.layoutOf(f), laid[f]) },
		func(f family) (string, bool) { return diffScript(laid[f], b.layoutOf(f)) })
	if err != nil {
		return err
	}
	for _, l := range laid {
		l.from = nil // only the change's own undo needed it
	}
	b.rules, b.hairpins, b.laid = rules, hairpins, laid
	b.commit(over, ch.Del, ch.Add)
	return nil
}

// editHairpins is hairpins (by endpoint, the LANs of each) with del
// removed and add added; removing what is absent or adding what is
// present is an error, as for forwards.
func editHairpins(hairpins map[nat.Endpoint][]netip.Prefix, del, add []nat.Hairpinned) (map[nat.Endpoint][]netip.Prefix, error) {
	out := maps.Clone(hairpins)
	if out == nil {
		out = map[nat.Endpoint][]netip.Prefix{}
	}
	for _, h := range del {
		i := slices.Index(out[h.Endpoint], h.LAN)
		if i < 0 {
			return nil, fmt.Errorf("deleting %s: not installed", h)
		}
		if lans := slices.Delete(slices.Clone(out[h.Endpoint]), i, i+1); len(lans) > 0 {
			out[h.Endpoint] = lans
		} else {
			delete(out, h.Endpoint)
		}
	}
	for _, h := range add {
		if slices.Contains(out[h.Endpoint], h.LAN) {
			return nil, fmt.Errorf("adding %s: already installed", h)
		}
		out[h.Endpoint] = append(slices.Clone(out[h.Endpoint]), h.LAN)
	}
	return out, nil
}

// masquerades are the masquerade rules of hairpins for the forwards
// installed, or for those ch (when set) leaves installed.
func (b *Backend) masquerades(hairpins map[nat.Endpoint][]netip.Prefix, ch *nat.Change) []nat.Masquerade {
	var hs []nat.Hairpinned
	for ep, lans := range hairpins {
		for _, lan := range lans {
			hs = append(hs, nat.Hairpinned{LAN: lan, Endpoint: ep})
		}
	}
	forwardOf := func(ep nat.Endpoint) (nat.Forward, bool) { f, ok := b.eps[ep]; return f, ok }
	if ch != nil {
		added := map[nat.Endpoint]nat.Forward{}
		for _, f := range ch.Add {
			added[f.Endpoint()] = f
		}
		gone := map[nat.Endpoint]bool{}
		for _, f := range ch.Del {
			gone[f.Endpoint()] = true
		}
		forwardOf = func(ep nat.Endpoint) (nat.Forward, bool) {
			if f, ok := added[ep]; ok {
				return f, true
			}
			if gone[ep] {
				return nat.Forward{}, false
			}
			f, ok := b.eps[ep]
			return f, ok
		}
	}
	return nat.Masquerades(hs, forwardOf)
}

// touches reports whether the change may alter family f's chains.
func touches(f family, ch nat.Change) bool {
	if ch.Rules != nil {
		return true
	}
	for _, fw := range append(slices.Clone(ch.Del), ch.Add...) {
		if famOf(fw.Ext.Addr()) == f {
			return true
		}
	}
	for _, h := range append(slices.Clone(ch.HairpinDel), ch.HairpinAdd...) {
		if famOf(h.Addr.Addr()) == f {
			return true
		}
	}
	return false
}

// refuseIPv6 refuses, on a kernel without IPv6, a change that adds an IPv6
// forward or rule. (Those a state file already holds are kept, not
// installed: a host booted without IPv6 still starts.)
func (b *Backend) refuseIPv6(ch nat.Change) error {
	if !b.noIPv6 {
		return nil
	}
	for _, f := range ch.Add {
		if famOf(f.Ext.Addr()) == v6 {
			return fmt.Errorf("forward %s: %w", f, errNoIPv6)
		}
	}
	for _, h := range ch.HairpinAdd {
		if famOf(h.Addr.Addr()) == v6 {
			return fmt.Errorf("%s: %w", h, errNoIPv6)
		}
	}
	if ch.Rules == nil {
		return nil
	}
	had := map[string]bool{}
	for _, r := range ipv6Rules(b.rules) {
		had[r] = true
	}
	for _, r := range ipv6Rules(*ch.Rules) {
		if !had[r] {
			return fmt.Errorf("%s: %w", r, errNoIPv6)
		}
	}
	return nil
}

// ipv6Rules names the IPv6 SNAT and SameNet rules of r.
func ipv6Rules(r nat.Rules) []string {
	var out []string
	for _, sn := range r.SNATs {
		if sn.IntNet.Addr().Is6() {
			out = append(out, sn.String())
		}
	}
	for _, p := range r.SameNet {
		if p.Addr().Is6() {
			out = append(out, "masquerade within "+p.String())
		}
	}
	return out
}

// groups are forwards as they are written: by everything but the port,
// each group sorted by external port.
type groups = map[groupKey][]nat.Forward

// regroup returns the groups del and add change, as they become (an
// empty group: deleted), refusing to delete what is absent or add what is
// present, as the kernel would. base and eps (every forward by endpoint)
// are only read.
func regroup(base groups, eps map[nat.Endpoint]nat.Forward, del, add []nat.Forward) (groups, error) {
	over := groups{}
	edit := func(k groupKey) []nat.Forward {
		if fs, ok := over[k]; ok {
			return fs
		}
		return slices.Clone(base[k])
	}
	gone := map[nat.Endpoint]bool{}
	for _, f := range del {
		ep := f.Endpoint()
		if cur, ok := eps[ep]; !ok || cur != f || gone[ep] {
			return nil, fmt.Errorf("deleting %s: not installed", f)
		}
		gone[ep] = true
		k := keyOf(f)
		fs := edit(k)
		over[k] = slices.DeleteFunc(fs, func(g nat.Forward) bool { return g == f })
	}
	added := map[nat.Endpoint]bool{}
	for _, f := range add {
		ep := f.Endpoint()
		if _, ok := eps[ep]; (ok && !gone[ep]) || added[ep] {
			return nil, fmt.Errorf("adding %s: its endpoint is installed", f)
		}
		added[ep] = true
		k := keyOf(f)
		over[k] = append(edit(k), f)
	}
	for k, fs := range over {
		slices.SortFunc(fs, func(a, b nat.Forward) int { return int(a.Ext.Port()) - int(b.Ext.Port()) })
		over[k] = fs
	}
	return over, nil
}

// eachGroup calls fn with every group of base as over changes it.
func eachGroup(base, over groups, fn func(groupKey, []nat.Forward)) {
	for k, fs := range base {
		if _, ok := over[k]; !ok {
			fn(k, fs)
		}
	}
	for k, fs := range over {
		if len(fs) > 0 {
			fn(k, fs)
		}
	}
}

// syncedCache is a cache that holds exactly the backend's groups.
func syncedCache() *itemCache {
	c := newItemCache()
	c.synced = true
	return c
}

// commit makes the change over (with its forwards del and add) part of
// the backend's groups.
func (b *Backend) commit(over groups, del, add []nat.Forward) {
	b.cache.commit(over)
	for k, fs := range over {
		if len(fs) == 0 {
			delete(b.groups, k)
		} else {
			b.groups[k] = fs
		}
	}
	for _, f := range del {
		delete(b.eps, f.Endpoint())
	}
	for _, f := range add {
		b.eps[f.Endpoint()] = f
	}
}

func sortedKeys[V any](m map[groupKey]V) []groupKey {
	keys := make([]groupKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b groupKey) int {
		return cmp.Or(a.ext.Compare(b.ext), strings.Compare(a.iif, b.iif), int(a.proto)-int(b.proto), a.dst.Compare(b.dst))
	})
	return keys
}

// Remove deletes natmap's jumps and chains (the trees' too), in both
// families: one iptables-save and one restore each.
func (b *Backend) Remove() error {
	for _, f := range b.families() {
		// One listing tells whether there is anything to remove: the
		// daemon calls Remove at every start for the backends it does not
		// use.
		out, err := exec.Command(f.binary(b.mode, "-save")).Output()
		if err != nil {
			if f.v6 {
				continue
			}
			return fmt.Errorf("%s: %w", f.binary(b.mode, "-save"), err)
		}
		text, n := removal(string(out), func(string) bool { return true })
		if n == 0 {
			continue
		}
		if err := b.run(context.Background(), f, text); err != nil {
			return fmt.Errorf("removing natmap's chains: %w", err)
		}
	}
	b.mu.Lock()
	b.groups, b.eps, b.laid, b.cache = groups{}, map[nat.Endpoint]nat.Forward{}, map[family]*layout{}, syncedCache()
	b.mu.Unlock()
	return nil
}

// removal is the restore script that deletes the natmap chains (NATMAP-*)
// of an iptables-save text for which gone says so, with the rules of other
// chains that jump to them, and how many chains it deletes.
func removal(save string, gone func(chain string) bool) (string, int) {
	var w script
	n := 0
	_, blocks := parseSave(save)
	for _, blk := range blocks {
		var chains, jumpsTo []string
		for _, line := range blk.lines {
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && strings.HasPrefix(f[0], ":") && strings.HasPrefix(f[0], ":NATMAP-") && gone(f[0][1:]):
				chains = append(chains, f[0][1:])
			case len(f) > 3 && f[0] == "-A" && !strings.HasPrefix(f[1], "NATMAP-") && f[len(f)-2] == "-j" &&
				strings.HasPrefix(f[len(f)-1], "NATMAP-") && gone(f[len(f)-1]):
				jumpsTo = append(jumpsTo, "-D"+strings.TrimPrefix(line, "-A"))
			}
		}
		if len(chains) == 0 && len(jumpsTo) == 0 {
			continue
		}
		w.table(blk.name)
		for _, l := range jumpsTo {
			w.line("%s", l)
		}
		for _, c := range chains {
			w.line(":%s - [0:0]", c) // flushed, so nothing of natmap's refers to another
		}
		for _, c := range chains {
			w.line("-X %s", c)
		}
		w.commit()
		n += len(chains)
	}
	return w.String(), n
}

// ensureJumps inserts each missing jump at the top of its built-in chain:
// one iptables-save to look, and one restore for what is missing (every
// iptables-nft run reads the whole ruleset, so a dozen runs to check a
// jump each took seconds at 20,000 forwards).
func (b *Backend) ensureJumps(ctx context.Context, f family) error {
	out, err := exec.CommandContext(ctx, f.binary(b.mode, "-save")).Output()
	if err != nil {
		return fmt.Errorf("%s: %w", f.binary(b.mode, "-save"), err)
	}
	have, chains := countRules(string(out))
	var w script
	missing := 0
	for _, table := range []string{"nat", "filter", "mangle", "raw"} {
		var lines []string
		for _, j := range jumps {
			// A chain that is not there (DOCKER-USER without Docker) has
			// no jump to want.
			if j[0] == table && chains[j[0]+" "+j[1]] && have[j[0]+" "+j[1]+" -> "+j[2]] == 0 {
				lines = append(lines, "-I "+j[1]+" 1 -j "+j[2])
			}
		}
		if len(lines) == 0 {
			continue
		}
		w.table(table)
		for _, l := range lines {
			w.line("%s", l)
		}
		w.commit()
		missing += len(lines)
	}
	// Chains of a tree that the layout written last has not (an earlier
	// daemon's, of other forwards) go.
	laid := b.layoutOf(f)
	stale, n := removal(string(out), func(c string) bool {
		_, ours := laid.chain(c)
		return strings.HasPrefix(c, "NATMAP-T") && !ours
	})
	if missing == 0 && n == 0 {
		return nil
	}
	if err := b.run(ctx, f, w.String()+stale); err != nil {
		return fmt.Errorf("adding %d jumps to natmap's chains and removing %d chains of natmap's no longer used: %w", missing, n, err)
	}
	return nil
}

func (b *Backend) restore(ctx context.Context, f family, text string) error {
	cmd := exec.CommandContext(ctx, f.binary(b.mode, "-restore"), "--noflush", "-w", "5")
	cmd.Stdin = strings.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", cmd.Path, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Render writes the ruleset as iptables-save files, IPv4 first, IPv6
// second: natmap's chains and the jumps to them, and nothing else (no
// built-in chain is declared, no policy set). Merge splices them into the
// host's own boot files (netfilter-persistent restores those without
// natmap).
func Render(rs nat.Ruleset) (v4text, v6text []byte) {
	over, _ := regroup(nil, nil, nil, rs.Forwards)
	out := [2][]byte{}
	for i, f := range []family{v4, v6} {
		l := buildLayout(f, nil, over, rs.Rules, rs.Masquerades(), sameAs{}, newItemCache(), nil)
		var w script
		w.line(savedHeader)
		for _, table := range tables {
			l.write(&w, table, true)
		}
		out[i] = []byte(w.String())
	}
	return out[0], out[1]
}

// Counters implements nat.Backend from the rules' counters
// (iptables-save -c): for each entry, the first packets its mark rule in
// NATMAP-PRE saw plus the rest its NATMAP-COUNT rule saw. An entry that
// covers several ports (a range, a multiport list) reports its total on
// the first of them, so sums over a rule's forwards are right.
func (b *Backend) Counters(ctx context.Context, fs []nat.Forward) (map[nat.Endpoint]nat.Counter, error) {
	want := map[nat.Endpoint]bool{}
	for _, f := range fs {
		want[f.Endpoint()] = true
	}
	b.mu.Lock()
	firstOf := map[string]nat.Endpoint{} // each entry's comment: its first forward
	for k, gfs := range b.groups {
		for _, e := range entries(k, gfs) {
			if want[e.first.Endpoint()] {
				firstOf[e.comment(k)] = e.first.Endpoint()
			}
		}
	}
	b.mu.Unlock()
	byComment := map[string]nat.Counter{}
	for _, f := range b.families() {
		for _, table := range []string{"nat", "mangle"} {
			out, err := exec.CommandContext(ctx, f.binary(b.mode, "-save"), "-c", "-t", table).Output()
			if err != nil {
				if f.v6 {
					continue
				}
				return nil, fmt.Errorf("%s -c: %w", f.binary(b.mode, "-save"), err)
			}
			for _, l := range strings.Split(string(out), "\n") {
				counted := strings.Contains(l, " -A "+ChainCount+" ") || strings.Contains(l, " -A "+treeTags[treeForwards][2]) ||
					((strings.Contains(l, " -A "+ChainPre+" ") || strings.Contains(l, " -A "+treeTags[treeForwards][0])) && strings.Contains(l, "-j CONNMARK"))
				if !counted {
					continue
				}
				var p, n uint64
				if _, err := fmt.Sscanf(l, "[%d:%d]", &p, &n); err != nil {
					continue
				}
				_, rest, _ := strings.Cut(l, `--comment "`)
				comment, _, _ := strings.Cut(rest, `"`)
				c := byComment[comment]
				c.Packets += p
				c.Bytes += n
				byComment[comment] = c
			}
		}
	}
	out := map[nat.Endpoint]nat.Counter{}
	for comment, ep := range firstOf {
		if c, ok := byComment[comment]; ok {
			out[ep] = c
		}
	}
	return out, nil
}

// LegacyInUse reports whether the host's iptables-legacy tables hold rules
// (other programs', such as Docker on iptables-legacy): the usual sign that
// the host runs iptables-legacy. It says how many rules it found.
func LegacyInUse() (bool, int) {
	n := 0
	for _, tool := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := exec.Command(tool).Output()
		if err != nil {
			continue
		}
		n += foreignRules(string(out))
	}
	return n > 0, n
}

// foreignRules counts the rules of iptables-save text that are not
// natmap's: natmap's own chains, left by an earlier run on the legacy
// variant, must not keep --backend auto on iptables-legacy forever.
func foreignRules(save string) int {
	n := 0
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A ") && !ownLine(l) {
			n++
		}
	}
	return n
}

// Available reports whether the tools of mode are installed.
func Available(mode Mode) bool {
	_, err := exec.LookPath(v4.binary(mode, "-restore"))
	return err == nil
}
