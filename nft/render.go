package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/lab-ops/natmap/nat"
)

// Render writes rs as an nft script that replaces `inet natmap` with
// exactly what Replace would install: `nft -f FILE` loads it at boot
// without the daemon. (Port reservations and policy routes need the
// daemon; the script holds only the NAT table.)
func Render(rs nat.Ruleset) []byte {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# natmap's NAT table, written by `lab-ops natmap save`. Load with: nft -f FILE")
	w("table inet %s", TableName)
	w("delete table inet %s", TableName)
	w("table inet %s {", TableName)
	renderSets(&b, w, rs)
	renderRuleChains(w, rs)
	renderBaseChains(w, lanKeys(rs.Hairpinned))
	w("}")
	return []byte(b.String())
}

// renderSets writes the forwards' sets and maps, a lookup's pair each,
// and the hairpins' LAN sets.
func renderSets(b *strings.Builder, w func(string, ...any), rs nat.Ruleset) {
	groups := groupByLookup(rs.Forwards)
	for _, l := range lookups {
		key := keyTypeName(l)
		fs := slices.Clone(groups[l])
		slices.SortFunc(fs, func(a, b nat.Forward) int { return a.Ext.Compare(b.Ext) })
		keys := make([]string, len(fs))
		pairs := make([]string, len(fs))
		for i, f := range fs {
			keys[i] = keyText(f)
			pairs[i] = keyText(f) + " : " + f.Int.Addr().String() + " . " + fmt.Sprint(f.Int.Port())
		}
		w("\tset match%s {\n\t\ttype %s\n\t\tcounter", l.suffix(), key)
		writeElements(b, keys)
		w("\t}")
		w("\tmap dnat%s {\n\t\ttype %s : %s . inet_service", l.suffix(), key, addrTypeName(l.fam))
		writeElements(b, pairs)
		w("\t}")
	}
	hairpins := map[lanKey][]string{}
	for _, h := range rs.Hairpinned {
		hairpins[lanKeyOf(h)] = append(hairpins[lanKeyOf(h)], keyText(nat.Forward{Proto: h.Proto, Ext: h.Addr}))
	}
	for _, k := range lanKeys(rs.Hairpinned) {
		w("\tset %s {\n\t\ttype %s", k.name(), keyTypeName(k.lookup()))
		writeElements(b, hairpins[k])
		w("\t}")
	}
}

// renderRuleChains writes the hairpin and SNAT chains.
func renderRuleChains(w func(string, ...any), rs nat.Ruleset) {
	w("\tchain %s {", hairpinChain)
	w("\t\tct mark & %#08x == %#08x masquerade comment %q", MarkDNAT|MarkHairpin, MarkDNAT|MarkHairpin, hairpinMasqComment)
	for _, p := range rs.SameNet {
		fam := famWord(p.Addr())
		w("\t\tct mark & %#08x == %#08x %s saddr %s %s daddr %s masquerade", MarkDNAT, MarkDNAT, fam, p, fam, p)
	}
	w("\t}")
	w("\tchain %s {", snatChain)
	for _, s := range rs.SNATs {
		fam := famWord(s.IntNet.Addr())
		if s.Masquerade() {
			w("\t\toifname %q %s saddr %s masquerade", s.ExtIf, fam, s.IntNet)
			continue
		}
		w("\t\toifname %q %s saddr %s snat %s to %s", s.ExtIf, fam, s.IntNet, fam, s.ExtIP)
	}
	w("\t}")
}

// renderBaseChains writes the chains on the hooks: the hairpin marks and
// DNAT lookups, the host's own connections, postrouting, forward, the
// counters and the loopback guard.
func renderBaseChains(w func(string, ...any), lans []lanKey) {
	w("\tchain prerouting {\n\t\ttype nat hook prerouting priority %d; policy accept;", prioDNAT)
	for _, k := range lans {
		key, fam, _ := lookupText(k.lookup())
		w("\t\t%s saddr %s %s @%s ct mark set ct mark | %#08x comment %q", fam, k.lan, key, k.name(), MarkHairpin, k.comment())
	}
	for _, l := range lookups {
		w("\t\t%s", dnatText(l, MarkDNAT))
	}
	w("\t}")
	w("\tchain output {\n\t\ttype nat hook output priority %d; policy accept;", prioDNAT)
	for _, l := range lookups {
		if !l.iif {
			w("\t\t%s", dnatText(l, MarkDNAT|MarkLocal))
		}
	}
	w("\t}")
	w("\tchain postrouting {\n\t\ttype nat hook postrouting priority %d; policy accept;", prioSNAT)
	w("\t\tct mark & %#08x == %#08x counter masquerade comment %q", MarkLocal, MarkLocal, "natmap: masquerade the host's own forwarded connections")
	w("\t\tjump %s\n\t\tjump %s\n\t}", hairpinChain, snatChain)
	w("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;")
	w("\t\tct mark & %#08x == %#08x counter accept comment %q\n\t}", MarkDNAT, MarkDNAT, "natmap: accept forwarded flows")
	w("\tchain count_in {\n\t\ttype filter hook prerouting priority mangle; policy accept;")
	for _, l := range lookups {
		w("\t\t%s", countText(l))
	}
	w("\t}")
	w("\tchain count_out {\n\t\ttype filter hook output priority mangle; policy accept;")
	for _, l := range lookups {
		if !l.iif {
			w("\t\t%s", countText(l))
		}
	}
	w("\t}")
	w("\tchain localnet {\n\t\ttype filter hook prerouting priority raw; policy accept;")
	w("\t\tiifname != \"lo\" ip daddr 127.0.0.0/8 counter drop comment %q", localnetComment("to"))
	w("\t\tiifname != \"lo\" ip saddr 127.0.0.0/8 counter drop comment %q", localnetComment("from"))
	w("\t}")
}

func writeElements(b *strings.Builder, els []string) {
	if len(els) == 0 {
		return
	}
	fmt.Fprintf(b, "\t\telements = {\n")
	for i, e := range els {
		sep := ","
		if i == len(els)-1 {
			sep = ""
		}
		fmt.Fprintf(b, "\t\t\t%s%s\n", e, sep)
	}
	fmt.Fprintf(b, "\t\t}\n")
}

func addrTypeName(f family) string {
	if f.nfproto == ipv4.nfproto {
		return "ipv4_addr"
	}
	return "ipv6_addr"
}

func keyTypeName(l lookup) string {
	s := "inet_proto . inet_service"
	if !l.any {
		s = addrTypeName(l.fam) + " . " + s
	}
	if l.iif {
		s = "ifname . " + s
	}
	return s
}

func keyText(f nat.Forward) string {
	s := fmt.Sprintf("%s . %d", f.Proto, f.Ext.Port())
	if !f.Ext.Addr().IsUnspecified() {
		s = f.Ext.Addr().String() + " . " + s
	}
	if f.ExtIf != "" {
		s = fmt.Sprintf("%q . %s", f.ExtIf, s)
	}
	return s
}

func famWord(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

// lookupText is the lookup's key as nft writes it, its address family word,
// and the test that goes before it for forwards to every local address.
func lookupText(l lookup) (key, fam, fib string) {
	fam = "ip"
	if l.fam.nfproto != ipv4.nfproto {
		fam = "ip6"
	}
	key = fam + " daddr . meta l4proto . th dport"
	switch {
	case l.iif && l.any:
		key = "iifname . meta l4proto . th dport"
		fib = "fib daddr . iif type local "
	case l.iif:
		key = "iifname . " + key
	case l.any:
		key = "meta l4proto . th dport"
		fib = "fib daddr type local "
	}
	return key, fam, fib
}

func countText(l lookup) string {
	key, _, fib := lookupText(l)
	return fmt.Sprintf("ct mark & %#08x == %#08x meta nfproto ipv%s ct state established ct direction original %s%s @match%s comment %q",
		MarkDNAT, MarkDNAT, l.fam.suffix, fib, key, l.suffix(), "natmap: count"+strings.TrimPrefix(l.comment(), "natmap: dnat"))
}

func dnatText(l lookup, mark uint32) string {
	key, fam, fib := lookupText(l)
	guard := ""
	if l.localOnly(mark) {
		if fib == "" {
			fib = "fib daddr type local "
		}
		guard = "meta nfproto ipv" + l.fam.suffix + " " + fib
	}
	return fmt.Sprintf("%s%s @match%s ct mark set ct mark | %#08x dnat %s to %s map @dnat%s comment %q",
		guard, key, l.suffix(), mark, fam, key, l.suffix(), l.comment())
}
