package nft

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// Hairpins are a hash set per LAN, not a rule each: a change adds or
// removes elements (and a LAN's set and rule come and go with its first
// and last hairpin), whatever the number of hairpins, and a new connection
// costs a prefix test per LAN and one lookup. The set holds the forwards'
// external keys. In prerouting, before the DNAT, a connection from the LAN
// whose key is in the set gets MarkHairpin; postrouting masquerades
// connections with both marks.
//
//	ip saddr LAN ip daddr . meta l4proto . th dport @hairpin4_LAN ct mark set ct mark | HAIRPIN
//	ct mark & (DNAT|HAIRPIN) == (DNAT|HAIRPIN) masquerade

// MarkHairpin is nat.MarkHairpin.
const MarkHairpin = nat.MarkHairpin

// lanKey is one hairpin set: the hairpins of one LAN to one address each,
// or (any) to every local address.
type lanKey struct {
	lan netip.Prefix
	any bool
}

func lanKeyOf(h nat.Hairpinned) lanKey {
	return lanKey{lan: h.LAN.Masked(), any: h.Addr.Addr().IsUnspecified()}
}

func (k lanKey) lookup() lookup { return lookup{fam: famOf(k.lan.Addr()), any: k.any} }

// name is the set's name: hairpin4_0a000000_24 for 10.0.0.0/24.
func (k lanKey) name() string {
	l := k.lookup()
	kind := "hairpin"
	if k.any {
		kind = "hairpinany"
	}
	return fmt.Sprintf("%s%s_%x_%d", kind, l.fam.suffix, k.lan.Addr().AsSlice(), k.lan.Bits())
}

func (k lanKey) set(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: k.name(), Concatenation: true, KeyType: k.lookup().keyType()}
}

// rule marks the connections from the LAN whose key is in the set.
func (k lanKey) rule(t *nftables.Table, c *nftables.Chain, s *nftables.Set) *nftables.Rule {
	l := k.lookup()
	exprs := matchFamily(l.fam)
	exprs = append(exprs, matchPrefix(l.fam.daddr-l.fam.addrLen, k.lan)...)
	exprs = append(exprs, l.loadKey()...)
	exprs = append(exprs, &expr.Lookup{SourceRegister: uint32(unix.NFT_REG32_00), SetName: s.Name, SetID: s.ID})
	exprs = append(exprs, setMark(MarkHairpin)...)
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment(k.comment())}
}

func (k lanKey) comment() string { return "natmap: mark hairpin connections from " + k.lan.String() }

// lanKeys are the sets hs need, in a stable order.
func lanKeys(hs []nat.Hairpinned) []lanKey {
	seen := map[lanKey]bool{}
	for _, h := range hs {
		seen[lanKeyOf(h)] = true
	}
	return slices.SortedFunc(maps.Keys(seen), compareLANs)
}

func compareLANs(a, b lanKey) int {
	return cmp.Or(a.lan.Addr().Compare(b.lan.Addr()), cmp.Compare(a.lan.Bits(), b.lan.Bits()), boolCompare(a.any, b.any))
}

func boolCompare(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

func hairpinElement(h nat.Hairpinned) nftables.SetElement {
	return nftables.SetElement{Key: key(nat.Forward{Proto: h.Proto, Ext: h.Addr})}
}

// changeHairpins adds (or, with del, deletes) hs in their LANs' sets, a
// chunk a message.
func changeHairpins(c *nftables.Conn, t *nftables.Table, hs []nat.Hairpinned, del bool) error {
	groups := map[lanKey][]nat.Hairpinned{}
	for _, h := range hs {
		groups[lanKeyOf(h)] = append(groups[lanKeyOf(h)], h)
	}
	for k, khs := range groups {
		s := k.set(t)
		for start := 0; start < len(khs); start += chunkSize {
			part := khs[start:min(start+chunkSize, len(khs))]
			els := make([]nftables.SetElement, len(part))
			for i, h := range part {
				els[i] = hairpinElement(h)
			}
			op, what := c.SetAddElements, "adding to"
			if del {
				op, what = c.SetDeleteElements, "deleting from"
			}
			if err := op(s, els); err != nil {
				return fmt.Errorf("%s %s: %w", what, s.Name, err)
			}
		}
	}
	return nil
}

// preroutingRules are the prerouting chain's rules: a hairpin rule per
// LAN set, then the DNAT lookups. set finds each set (one made in the same
// batch, or the kernel's by name).
func preroutingRules(t *nftables.Table, ch *nftables.Chain, lans []lanKey, set func(*nftables.Set) *nftables.Set) []*nftables.Rule {
	var out []*nftables.Rule
	lans = slices.Clone(lans)
	slices.SortFunc(lans, compareLANs)
	for _, k := range lans {
		out = append(out, k.rule(t, ch, set(k.set(t))))
	}
	for _, l := range lookups {
		keys, targets := l.sets(t)
		out = append(out, l.dnatRule(t, ch, set(keys), set(targets), MarkDNAT))
	}
	return out
}

// byName finds a set among those made in this batch, or else names the
// kernel's.
func byName(made map[string]*nftables.Set) func(*nftables.Set) *nftables.Set {
	return func(s *nftables.Set) *nftables.Set {
		if m, ok := made[s.Name]; ok {
			return m
		}
		return s
	}
}

// hairpinMasq masquerades the connections marked as hairpin and DNATed.
func hairpinMasq(t *nftables.Table, c *nftables.Chain) *nftables.Rule {
	exprs := append(hasMark(MarkDNAT|MarkHairpin), &expr.Masq{})
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment(hairpinMasqComment)}
}

const hairpinMasqComment = "natmap: masquerade hairpin connections"
