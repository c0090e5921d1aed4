package compat

import (
	"context"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/nat"
)

// packet is what the walk below matches rules against.
type packet struct {
	proto string
	dst   netip.Addr
	port  uint16
	iif   string
}

// walk follows a new connection through chain as iptables would (jumps
// into natmap's chains, back at a chain's end, stop at the first DNAT) and
// returns the DNAT target and how many rules it passed.
func walk(t *testing.T, l *layout, chain string, p packet) (target string, passed int) {
	t.Helper()
	c, _ := l.chain(chain)
	for _, line := range c.lines {
		passed++
		f := strings.Fields(line)
		if !matches(t, f, p) {
			continue
		}
		j := f[indexOf(f, "-j")+1]
		switch {
		case j == "DNAT":
			return f[indexOf(f, "--to-destination")+1], passed
		case strings.HasPrefix(j, "NATMAP-T"):
			to, n := walk(t, l, j, p)
			passed += n
			if to != "" {
				return to, passed
			}
		}
	}
	return "", passed
}

func indexOf(f []string, s string) int {
	for i, x := range f {
		if x == s {
			return i
		}
	}
	return -1
}

func matches(t *testing.T, f []string, p packet) bool {
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "-p":
			if f[i+1] != p.proto {
				return false
			}
		case "-d":
			if !netip.MustParsePrefix(f[i+1]).Contains(p.dst) {
				return false
			}
		case "-i":
			if f[i+1] != p.iif {
				return false
			}
		case "--dport", "--dports":
			in := false
			for _, r := range strings.Split(f[i+1], ",") {
				lo, hi, isRange := strings.Cut(r, ":")
				a, _ := strconv.Atoi(lo)
				b := a
				if isRange {
					b, _ = strconv.Atoi(hi)
				}
				in = in || (int(p.port) >= a && int(p.port) <= b)
			}
			if !in {
				return false
			}
		case "--dst-type":
			t.Fatalf("a wildcard rule in the walk: %s", strings.Join(f, " "))
		}
	}
	return true
}

// randomForwards are n forwards on a few addresses of family v4 (or v6):
// single ports (translated or not) and ranges, on tcp and udp.
func randomForwards(n int, six bool) []nat.Forward {
	rng := rand.New(rand.NewPCG(7, uint64(n)))
	var out []nat.Forward
	seen := map[string]bool{}
	for len(out) < n {
		ext := netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + rng.IntN(40))})
		in := netip.AddrFrom4([4]byte{10, 0, byte(rng.IntN(4)), byte(1 + rng.IntN(200))})
		if six {
			ext = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", 1+rng.IntN(40)))
			in = netip.MustParseAddr(fmt.Sprintf("fd00::%x", 1+rng.IntN(800)))
		}
		proto := nat.ProtoTCP
		if rng.IntN(4) == 0 {
			proto = nat.ProtoUDP
		}
		port := uint16(1 + rng.IntN(65000))
		to := port
		if rng.IntN(2) == 0 {
			to = uint16(1 + rng.IntN(65000))
		}
		key := fmt.Sprint(proto, ext, port)
		if seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, nat.Forward{Proto: proto, Ext: netip.AddrPortFrom(ext, port), Int: netip.AddrPortFrom(in, to)})
	}
	return out
}

// Every forward of a large layout is reached by its own packets through
// the tree, passing about 2·log2(n/leafSize) jumps and a leaf, and no
// other forward's DNAT comes first; a port no forward has reaches no DNAT.
func TestTreeReachesEveryForward(t *testing.T) {
	for _, six := range []bool{false, true} {
		f := v4
		if six {
			f = v6
		}
		const n = 3000
		fs := randomForwards(n, six)
		over, err := regroup(nil, nil, nil, fs)
		if err != nil {
			t.Fatal(err)
		}
		l := buildLayout(f, nil, over, nat.Rules{}, nil, sameAs{}, newItemCache(), nil)
		most := 0
		for _, fw := range fs {
			p := packet{proto: fw.Proto.String(), dst: fw.Ext.Addr(), port: fw.Ext.Port()}
			got, passed := walk(t, l, ChainPre, p)
			want := fw.Int.Addr().String()
			if six {
				want = "[" + want + "]"
			}
			if fw.Int.Port() != fw.Ext.Port() {
				want += fmt.Sprintf(":%d", fw.Int.Port())
			}
			if six && fw.Int.Port() == fw.Ext.Port() {
				want = fw.Int.Addr().String()
			}
			if got != want {
				t.Fatalf("%s: the walk reached DNAT %q, want %q", fw, got, want)
			}
			most = max(most, passed)
		}
		// Two rules a level, a leaf of leafSize entries of two rules each.
		bound := 2*bits.Len(uint(n)) + 2*2*leafSize + 8
		chains, _ := l.count()
		t.Logf("IPv6 %v: %d forwards, %d chains; a new connection passes at most %d rules of NATMAP-PRE's tree (bound %d)", six, n, chains, most, bound)
		if most > bound {
			t.Errorf("a packet passed %d rules, want at most %d", most, bound)
		}
		if got, _ := walk(t, l, ChainPre, packet{proto: "tcp", dst: fs[0].Ext.Addr(), port: 65535}); got != "" {
			t.Errorf("a port no forward has reached DNAT %s", got)
		}
	}
}

// A change to one forward of 10,000 rewrites a few chains of each tree,
// and what it writes, applied to the old layout, is the layout built from
// scratch.
func TestTreeChangeIsSmallAndExact(t *testing.T) {
	fs := randomForwards(10001, false)
	base := groups{}
	eps := map[nat.Endpoint]nat.Forward{}
	over, err := regroup(nil, nil, nil, fs[:10000])
	if err != nil {
		t.Fatal(err)
	}
	for k, g := range over {
		base[k] = g
	}
	for _, f := range fs[:10000] {
		eps[f.Endpoint()] = f
	}
	cache := newItemCache()
	old := buildLayout(v4, base, nil, nat.Rules{}, nil, sameAs{}, cache, nil)
	change, err := regroup(base, eps, []nat.Forward{fs[17]}, []nat.Forward{fs[10000]})
	if err != nil {
		t.Fatal(err)
	}
	now := buildLayout(v4, base, change, nat.Rules{}, nil, sameAs{rules: true}, cache, old)
	text, changed := diffScript(old, now)
	if !changed {
		t.Fatal("the change wrote nothing")
	}
	lines := strings.Count(text, "\n")
	chains, _ := now.count()
	t.Logf("one forward deleted and one added among 10,000: %d lines of restore script, %d chains in all", lines, chains)
	if lines > 400 {
		t.Errorf("the change wrote %d lines:\n%s", lines, text)
	}

	// The script applied to the old chains gives the new ones, exactly.
	applied := map[string][]string{}
	for _, table := range tables {
		for _, name := range old.names(table) {
			c, _ := old.chain(name)
			applied[name] = c.lines
		}
	}
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			applied[strings.Fields(line)[0][1:]] = nil
		case strings.HasPrefix(line, "-A "):
			name, rule, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
			applied[name] = append(applied[name], rule)
		case strings.HasPrefix(line, "-X "):
			delete(applied, strings.TrimPrefix(line, "-X "))
		}
	}
	for k, g := range change {
		if len(g) == 0 {
			delete(base, k)
		} else {
			base[k] = g
		}
	}
	fresh := buildLayout(v4, base, nil, nat.Rules{}, nil, sameAs{}, newItemCache(), nil)
	if n, _ := fresh.count(); len(applied) != n {
		t.Fatalf("after the change %d chains, built from scratch %d", len(applied), n)
	}
	for name := range applied {
		c, ok := fresh.chain(name)
		if !ok {
			t.Fatalf("chain %s after the change is not in the layout built from scratch", name)
		}
		if strings.Join(applied[name], "\n") != strings.Join(c.lines, "\n") {
			t.Fatalf("chain %s after the change:\n%s\nbuilt from scratch:\n%s", name, strings.Join(applied[name], "\n"), strings.Join(c.lines, "\n"))
		}
	}
}

// BenchmarkTreeChange is the backend's own work for one change among
// 10,000 forwards (the restore it then runs is measured by the benchmark
// table).
func BenchmarkTreeChange(b *testing.B) {
	fs := randomForwards(10001, false)
	over, _ := regroup(nil, nil, nil, fs[:10000])
	base := groups{}
	eps := map[nat.Endpoint]nat.Forward{}
	for k, g := range over {
		base[k] = g
	}
	for _, f := range fs[:10000] {
		eps[f.Endpoint()] = f
	}
	cache := syncedCache()
	cache.commit(base)
	old := buildLayout(v4, base, nil, nat.Rules{}, nil, sameAs{}, cache, nil)
	b.ResetTimer()
	for i := range b.N {
		del, add := []nat.Forward{fs[10000]}, []nat.Forward{fs[10000]}
		if i%2 == 0 {
			del = nil
		} else {
			add = nil
		}
		change, err := regroup(base, eps, del, add)
		if err != nil {
			b.Fatal(err)
		}
		now := buildLayout(v4, base, change, nat.Rules{}, nil, sameAs{rules: true}, cache, old)
		diffScript(old, now)
		now.from = nil
		cache.commit(change)
		for k, g := range change {
			if len(g) == 0 {
				delete(base, k)
			} else {
				base[k] = g
			}
		}
		for _, f := range del {
			delete(eps, f.Endpoint())
		}
		for _, f := range add {
			eps[f.Endpoint()] = f
		}
		old = now
	}
}

// natmapLines is natmap's part of an iptables-save listing, sorted: the
// chains it declares and the rules in them or jumping to them.
func natmapLines(text string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "NATMAP") {
			out = append(out, strings.TrimSuffix(l, " [0:0]"))
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// In the kernel, on both iptables variants: 3,000 forwards install as
// trees that Check accepts; changes (one forward, many, rules) leave the
// kernel exactly as a fresh install of the same forwards would; a Replace
// with other forwards leaves no chain of the old trees behind; traffic
// reaches what the tree dispatches; Remove leaves nothing.
func TestIntegrationTreesInTheKernel(t *testing.T) {
	for _, mode := range []Mode{Legacy, NFT} {
		t.Run(string(mode), func(t *testing.T) {
			netnstest.RequirePrivileges(t, "iptables-"+string(mode)+"-restore")
			ns := netnstest.New(t, "nmtree")
			fresh := netnstest.New(t, "nmtref")
			ctx := context.Background()
			fs := randomForwards(3100, false)
			b := New(mode)
			// Hairpins of forwards 0-99 (5 among them goes, its element
			// stays), then of 100-149 too, then not of 0-49.
			lan := netip.MustParsePrefix("10.0.0.0/22")
			hairpinned := func(fs []nat.Forward) []nat.Hairpinned {
				var out []nat.Hairpinned
				for _, f := range fs {
					out = append(out, nat.Hairpinned{LAN: lan, Endpoint: f.Endpoint()})
				}
				return out
			}
			rules := nat.Rules{SameNet: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")}}
			hps := hairpinned(fs[:100])
			if err := ns.Do(func() error {
				return b.Replace(ctx, nat.Ruleset{Forwards: fs[:3000], Rules: nat.Rules{SameNet: rules.SameNet, Hairpinned: hps}})
			}); err != nil {
				t.Fatal(err)
			}
			installed := slices.Clone(fs[:3000])
			steps := []nat.Change{
				{Add: fs[3000:3001]},
				{Del: fs[5:6]},
				{Del: fs[10:60], Add: fs[3001:3100]},
				{HairpinAdd: hairpinned(fs[100:150])},
				{HairpinDel: hairpinned(fs[:50])},
				{Rules: &nat.Rules{}},
			}
			for i, ch := range steps {
				if err := ns.Do(func() error { return b.Apply(ctx, ch) }); err != nil {
					t.Fatalf("change %d: %v", i, err)
				}
				installed = slices.DeleteFunc(installed, func(f nat.Forward) bool { return slices.Contains(ch.Del, f) })
				installed = append(installed, ch.Add...)
				hps = slices.DeleteFunc(hps, func(h nat.Hairpinned) bool { return slices.Contains(ch.HairpinDel, h) })
				hps = append(hps, ch.HairpinAdd...)
				if ch.Rules != nil {
					rules = *ch.Rules
				}
				if err := ns.Do(func() error { return b.Check(ctx, rules) }); err != nil {
					t.Fatalf("check after change %d: %v", i, err)
				}
			}
			ref := New(mode)
			rules.Hairpinned = hps
			if err := fresh.Do(func() error { return ref.Replace(ctx, nat.Ruleset{Forwards: installed, Rules: rules}) }); err != nil {
				t.Fatal(err)
			}
			got, want := natmapLines(save(t, ns, mode, false)), natmapLines(save(t, fresh, mode, false))
			if got != want {
				t.Fatalf("after the changes the kernel differs from a fresh install of the same forwards (%d lines vs %d)", strings.Count(got, "\n"), strings.Count(want, "\n"))
			}
			if n := strings.Count(got, ":NATMAP-T"); n < 100 {
				t.Errorf("%d tree chains for 3,000 forwards", n)
			}

			// Other forwards: the old trees' chains go.
			if err := ns.Do(func() error { return b.Replace(ctx, nat.Ruleset{Forwards: fs[:20]}) }); err != nil {
				t.Fatal(err)
			}
			other := New(mode)
			if err := fresh.Do(func() error { return other.Replace(ctx, nat.Ruleset{Forwards: fs[:20]}) }); err != nil {
				t.Fatal(err)
			}
			if got, want := natmapLines(save(t, ns, mode, false)), natmapLines(save(t, fresh, mode, false)); got != want {
				t.Errorf("after a Replace with 20 forwards:\n%s\nwant\n%s", got, want)
			}
			// None at all (clear).
			if err := ns.Do(func() error { return b.Replace(ctx, nat.Ruleset{}) }); err != nil {
				t.Fatal(err)
			}
			if got := save(t, ns, mode, false); strings.Contains(got, "DNAT") {
				t.Errorf("after a Replace with no forwards:\n%s", got)
			}
			if err := ns.Do(b.Remove); err != nil {
				t.Fatal(err)
			}
			if got := save(t, ns, mode, false); strings.Contains(got, "NATMAP") {
				t.Errorf("after Remove:\n%s", got)
			}
		})
	}
}
