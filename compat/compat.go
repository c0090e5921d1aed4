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
// number. IPv6 goes through ip6tables-restore. Unlike the nftables backend,
// each forward is two rules (mark, then DNAT), so a packet's cost grows with
// the number of forwards.
package compat

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"github.com/coreos/go-iptables/iptables"

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

// ownChains are natmap's chains: table, chain.
var ownChains = [][2]string{{"nat", ChainPre}, {"nat", ChainOut}, {"nat", ChainPost}, {"nat", ChainHairpin}, {"nat", ChainSNAT},
	{"filter", ChainForward}, {"mangle", ChainCount}, {"raw", ChainLocalnet}}

// Backend implements nat.Backend with iptables. It keeps the forwards it
// installed, grouped as they are written, so that a change rewrites only
// the groups it touches.
type Backend struct {
	mode Mode

	mu     sync.Mutex
	groups map[groupKey][]nat.Forward // sorted by external port
	rules  nat.Rules                  // the SNAT and hairpin rules written last
	// run loads a restore script into one family's tables; b.restore
	// unless a test stands in for a family that fails.
	run func(ctx context.Context, f family, text string) error
	// noIPv6: the kernel has no IPv6 (booted with ipv6.disable=1), so
	// ip6tables has no tables; the backend runs IPv4 alone.
	noIPv6 bool
}

// New returns a backend for the iptables variant mode.
func New(mode Mode) *Backend {
	b := &Backend{mode: mode, groups: map[groupKey][]nat.Forward{}, noIPv6: !KernelHasIPv6()}
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
	groups, err := regroup(nil, nil, rs.Forwards)
	if err != nil {
		return err
	}
	err = b.bothFamilies(ctx, func(f family) (string, bool) { return fullScript(f, groups, rs.Rules), true },
		func(f family) (string, bool) { return fullScript(f, b.groups, b.rules), true })
	if err != nil {
		return err
	}
	for _, f := range b.families() {
		if err := b.ensureJumps(ctx, f); err != nil {
			return err
		}
	}
	b.groups, b.rules = groups, rs.Rules
	return nil
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

// fullScript declares (so flushes) natmap's chains of family f and fills
// them.
func fullScript(f family, groups map[groupKey][]nat.Forward, r nat.Rules) string {
	var w script
	w.table("nat")
	for _, c := range []string{ChainPre, ChainOut, ChainPost, ChainHairpin, ChainSNAT} {
		w.line(":%s - [0:0]", c)
	}
	natHead(&w)
	for _, k := range sortedKeys(groups) {
		if famOf(k.ext) == f {
			groupRules(&w, "-A", k, groups[k])
		}
	}
	ruleLines(&w, f, r)
	w.commit()
	w.table("filter")
	w.line(":%s - [0:0]", ChainForward)
	w.rule("-A", ChainForward, "-m", "connmark", "--mark", markMask(nat.MarkForwarded), "-j", "ACCEPT")
	w.commit()
	w.table("mangle")
	w.line(":%s - [0:0]", ChainCount)
	countGuard(&w)
	for _, k := range sortedKeys(groups) {
		if famOf(k.ext) == f {
			countingRules(&w, "-A", k, groups[k])
		}
	}
	w.commit()
	localnetGuard(&w, f, false)
	return w.String()
}

// natHead writes the nat table's fixed rules: the host's own connections
// to a forward are DNATed only when it is for one of the host's own
// addresses (a forward of an address that is not the host's never takes
// over the host's own connections to that address) and are masqueraded;
// then the hairpin and SNAT chains.
func natHead(w *script) {
	w.rule("-A", ChainOut, "-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "RETURN")
	w.rule("-A", ChainPost, "-m", "connmark", "--mark", markMask(nat.MarkLocal), "-j", "MASQUERADE")
	w.rule("-A", ChainPost, "-j", ChainHairpin)
	w.rule("-A", ChainPost, "-j", ChainSNAT)
}

// localnetGuard writes the raw table's chain that drops packets from the
// network to or from 127.0.0.0/8 (IPv4 only; the chain is empty for IPv6),
// whatever route_localnet says: natmap turns it on for mappings to a
// loopback service, and others do too (CVE-2020-8558). It runs before any
// NAT, so a packet natmap DNATs to 127.0.0.1 still has the forward's own
// address there and passes. With jump, the jump from PREROUTING too.
func localnetGuard(w *script, f family, jump bool) {
	w.table("raw")
	w.line(":%s - [0:0]", ChainLocalnet)
	if jump {
		w.rule("-A", "PREROUTING", "-j", ChainLocalnet)
	}
	if !f.v6 {
		w.rule("-A", ChainLocalnet, "!", "-i", "lo", "-d", "127.0.0.0/8", "-m", "comment", "--comment", "natmap: nothing from the network to 127.0.0.0/8", "-j", "DROP")
		w.rule("-A", ChainLocalnet, "!", "-i", "lo", "-s", "127.0.0.0/8", "-m", "comment", "--comment", "natmap: nothing from the network from 127.0.0.0/8", "-j", "DROP")
	}
	w.commit()
}

// Check implements nat.Checker: every jump is there, and each of natmap's
// chains holds as many rules as natmap wrote. It reads one iptables-save per
// family.
func (b *Backend) Check(ctx context.Context, r nat.Rules) error {
	b.mu.Lock()
	groups := b.groups
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
		want, _ := countRules(fullScript(f, groups, r))
		for _, j := range jumps {
			if chains[j[0]+" "+j[1]] && have[j[0]+" "+j[1]+" -> "+j[2]] == 0 {
				return fmt.Errorf("the jump %s -> %s is missing", j[1], j[2])
			}
		}
		for _, tc := range ownChains {
			key := tc[0] + " " + tc[1]
			if !chains[key] {
				return fmt.Errorf("chain %s is missing", tc[1])
			}
			if have[key] != want[key] {
				return fmt.Errorf("chain %s holds %d rules, natmap wrote %d", tc[1], have[key], want[key])
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
// groups the change touches (-D of their old rules, -A of the new); when
// the IPv6 half fails the IPv4 half is put back, so nothing changes.
func (b *Backend) Apply(ctx context.Context, ch nat.Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.refuseIPv6(ch); err != nil {
		return err
	}
	next, err := regroup(b.groups, ch.Del, ch.Add)
	if err != nil {
		return err
	}
	touched := map[groupKey]bool{}
	for _, f := range append(append([]nat.Forward{}, ch.Del...), ch.Add...) {
		touched[keyOf(f)] = true
	}
	rules := b.rules
	if ch.Rules != nil {
		rules = *ch.Rules
	}
	err = b.bothFamilies(ctx, func(f family) (string, bool) { return changeScript(f, touched, b.groups, next, ch.Rules) },
		func(f family) (string, bool) {
			var back *nat.Rules
			if ch.Rules != nil {
				back = &b.rules
			}
			return changeScript(f, touched, next, b.groups, back)
		})
	if err != nil {
		return err
	}
	b.groups, b.rules = next, rules
	return nil
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
	if ch.Rules == nil {
		return nil
	}
	var was, now script
	ruleLines(&was, v6, b.rules)
	ruleLines(&now, v6, *ch.Rules)
	had := map[string]bool{}
	for _, l := range strings.Split(was.String(), "\n") {
		had[l] = true
	}
	for _, l := range strings.Split(now.String(), "\n") {
		if !had[l] {
			return fmt.Errorf("%s: %w", strings.TrimPrefix(l, "-A "), errNoIPv6)
		}
	}
	return nil
}

// changeScript is the restore script of family f that moves the touched
// groups from one set of forwards to another (-D of their rules, -A of the
// new), and rewrites the SNAT and hairpin chains when rules is set; false
// when the family has nothing to change.
func changeScript(f family, touched map[groupKey]bool, from, to map[groupKey][]nat.Forward, rules *nat.Rules) (string, bool) {
	var w script
	w.table("nat")
	n := 0
	for _, k := range sortedKeys(touched) {
		if famOf(k.ext) != f {
			continue
		}
		groupRules(&w, "-D", k, from[k])
		groupRules(&w, "-A", k, to[k])
		n++
	}
	if rules != nil {
		w.line("-F %s", ChainHairpin)
		w.line("-F %s", ChainSNAT)
		ruleLines(&w, f, *rules)
		n++
	}
	if n == 0 {
		return "", false
	}
	w.commit()
	w.table("mangle")
	for _, k := range sortedKeys(touched) {
		if famOf(k.ext) == f {
			countingRules(&w, "-D", k, from[k])
			countingRules(&w, "-A", k, to[k])
		}
	}
	w.commit()
	return w.String(), true
}

// regroup returns groups less del plus add, refusing to delete what is
// absent or add what is present, as the kernel would.
func regroup(groups map[groupKey][]nat.Forward, del, add []nat.Forward) (map[groupKey][]nat.Forward, error) {
	byEP := map[nat.Endpoint]nat.Forward{}
	for _, fs := range groups {
		for _, f := range fs {
			byEP[f.Endpoint()] = f
		}
	}
	for _, f := range del {
		if cur, ok := byEP[f.Endpoint()]; !ok || cur != f {
			return nil, fmt.Errorf("deleting %s: not installed", f)
		}
		delete(byEP, f.Endpoint())
	}
	for _, f := range add {
		if _, ok := byEP[f.Endpoint()]; ok {
			return nil, fmt.Errorf("adding %s: its endpoint is installed", f)
		}
		byEP[f.Endpoint()] = f
	}
	next := map[groupKey][]nat.Forward{}
	for _, f := range byEP {
		next[keyOf(f)] = append(next[keyOf(f)], f)
	}
	for k := range next {
		slices.SortFunc(next[k], func(a, b nat.Forward) int { return int(a.Ext.Port()) - int(b.Ext.Port()) })
	}
	return next, nil
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

// Remove deletes natmap's jumps and chains, in both families.
func (b *Backend) Remove() error {
	for _, f := range b.families() {
		// One listing tells whether there is anything to remove: the
		// daemon calls Remove at every start for the backends it does not
		// use, and a host without natmap's chains should not pay for a
		// dozen iptables runs.
		if out, err := exec.Command(f.binary(b.mode, "-save")).Output(); err == nil && !strings.Contains(string(out), ":NATMAP-") {
			continue
		}
		ipt, err := b.iptables(f)
		if err != nil {
			if f.v6 {
				continue
			}
			return err
		}
		for _, j := range jumps {
			from, _ := ipt.ChainExists(j[0], j[1])
			to, _ := ipt.ChainExists(j[0], j[2])
			if from && to {
				if err := ipt.DeleteIfExists(j[0], j[1], "-j", j[2]); err != nil {
					return fmt.Errorf("removing the jump %s -> %s: %w", j[1], j[2], err)
				}
			}
		}
		for _, tc := range ownChains {
			if ok, _ := ipt.ChainExists(tc[0], tc[1]); ok {
				if err := ipt.ClearAndDeleteChain(tc[0], tc[1]); err != nil {
					return fmt.Errorf("removing chain %s: %w", tc[1], err)
				}
			}
		}
	}
	return nil
}

func (b *Backend) iptables(f family) (*iptables.IPTables, error) {
	return iptables.New(iptables.Path(f.binary(b.mode, "")), iptables.Timeout(5))
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
	if missing == 0 {
		return nil
	}
	if err := b.run(ctx, f, w.String()); err != nil {
		return fmt.Errorf("adding %d jumps to natmap's chains: %w", missing, err)
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
	out := [2][]byte{}
	for i, f := range []family{v4, v6} {
		var w script
		w.line(savedHeader)
		w.table("nat")
		for _, c := range []string{ChainPre, ChainOut, ChainPost, ChainHairpin, ChainSNAT} {
			w.line(":%s - [0:0]", c)
		}
		w.rule("-A", "PREROUTING", "-j", ChainPre)
		w.rule("-A", "OUTPUT", "-j", ChainOut)
		w.rule("-A", "POSTROUTING", "-j", ChainPost)
		natHead(&w)
		groups, _ := regroup(nil, nil, rs.Forwards)
		for _, k := range sortedKeys(groups) {
			if famOf(k.ext) == f {
				groupRules(&w, "-A", k, groups[k])
			}
		}
		ruleLines(&w, f, rs.Rules)
		w.commit()
		w.table("filter")
		w.line(":%s - [0:0]", ChainForward)
		w.rule("-A", "FORWARD", "-j", ChainForward)
		w.rule("-A", ChainForward, "-m", "connmark", "--mark", markMask(nat.MarkForwarded), "-j", "ACCEPT")
		w.commit()
		w.table("mangle")
		w.line(":%s - [0:0]", ChainCount)
		w.rule("-A", "PREROUTING", "-j", ChainCount)
		countGuard(&w)
		for _, k := range sortedKeys(groups) {
			if famOf(k.ext) == f {
				countingRules(&w, "-A", k, groups[k])
			}
		}
		w.commit()
		localnetGuard(&w, f, true)
		out[i] = []byte(w.String())
	}
	return out[0], out[1]
}

// countGuard sends every packet that is not of a flow natmap forwards
// straight back, so only natmap's flows pay for the counting rules.
func countGuard(w *script) {
	w.rule("-A", ChainCount, "-m", "connmark", "!", "--mark", markMask(nat.MarkForwarded), "-j", "RETURN")
}

// Counters implements nat.Counting from the rules' counters
// (iptables-save -c): for each entry, the first packets its mark rule in
// NATMAP-PRE saw plus the rest its NATMAP-COUNT rule saw. An entry that
// covers several ports (a range, a multiport list) reports its total on
// the first of them, so sums over a rule's forwards are right.
func (b *Backend) Counters(ctx context.Context, fs []nat.Forward) (map[nat.Endpoint]nat.Counter, error) {
	b.mu.Lock()
	groups := b.groups
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
				counted := strings.Contains(l, " -A "+ChainCount+" ") ||
					(strings.Contains(l, " -A "+ChainPre+" ") && strings.Contains(l, "-j CONNMARK"))
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
	want := map[nat.Endpoint]bool{}
	for _, f := range fs {
		want[f.Endpoint()] = true
	}
	out := map[nat.Endpoint]nat.Counter{}
	for k, gfs := range groups {
		for _, e := range entries(k, gfs) {
			if c, ok := byComment[e.comment(k)]; ok && want[e.first.Endpoint()] {
				out[e.first.Endpoint()] = c
			}
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
