package nft

import (
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/lab-ops/natmap/nat"
)

// The regular chains for the few one-rule-each NAT rules (and the one
// hairpin masquerade); postrouting jumps to them. Both are flushed and
// refilled in the transaction of any change to them.
const (
	hairpinChain = "hairpin_masq"
	snatChain    = "snat_out"
)

func famOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

func regularChain(t *nftables.Table, name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: t}
}

func jump(t *nftables.Table, from *nftables.Chain, to string) *nftables.Rule {
	return &nftables.Rule{Table: t, Chain: from, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: to}}}
}

// matchFamily is `meta nfproto ipv4|ipv6`.
func matchFamily(f family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

// matchPrefix is `ip saddr|daddr PREFIX` at the given header offset.
func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n}}
	if !p.IsSingleIP() {
		mask := make([]byte, n)
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()})
}

func ifnameBytes(name string) []byte {
	b := make([]byte, 16)
	copy(b, name)
	return b
}

// snatRule: oifname IF ip saddr NET snat ip to EXT, or masquerade.
func snatRule(t *nftables.Table, c *nftables.Chain, s nat.SNAT) *nftables.Rule {
	f := famOf(s.IntNet.Addr())
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameBytes(s.ExtIf)},
	}
	exprs = append(exprs, matchFamily(f)...)
	exprs = append(exprs, matchPrefix(f.daddr-f.addrLen, s.IntNet)...)
	if s.Masquerade() {
		exprs = append(exprs, &expr.Masq{})
	} else {
		exprs = append(exprs,
			&expr.Immediate{Register: 1, Data: s.ExtIP.AsSlice()},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.nfproto), RegAddrMin: 1},
		)
	}
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs}
}

// sameNetRule: ct mark & DNAT == DNAT ip saddr NET ip daddr NET
// masquerade.
func sameNetRule(t *nftables.Table, c *nftables.Chain, p netip.Prefix) *nftables.Rule {
	f := famOf(p.Addr())
	exprs := hasMark(MarkDNAT)
	exprs = append(exprs, matchFamily(f)...)
	exprs = append(exprs, matchPrefix(f.daddr-f.addrLen, p)...)
	exprs = append(exprs, matchPrefix(f.daddr, p)...)
	exprs = append(exprs, &expr.Masq{})
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs}
}

// hairpinRules are the hairpin chain's rules: the hairpins' masquerade,
// then a rule per SameNet network.
func hairpinRules(t *nftables.Table, hc *nftables.Chain, r nat.Rules) []*nftables.Rule {
	out := []*nftables.Rule{hairpinMasq(t, hc)}
	for _, p := range r.SameNet {
		out = append(out, sameNetRule(t, hc, p))
	}
	return out
}

// snatRules are the SNAT chain's rules, in evaluation order.
func snatRules(t *nftables.Table, sc *nftables.Chain, r nat.Rules) []*nftables.Rule {
	var out []*nftables.Rule
	for _, s := range r.SNATs {
		out = append(out, snatRule(t, sc, s))
	}
	return out
}

// addRules fills the hairpin and SNAT chains.
func addRules(c *nftables.Conn, t *nftables.Table, r nat.Rules) {
	hc, sc := regularChain(t, hairpinChain), regularChain(t, snatChain)
	for _, rule := range append(hairpinRules(t, hc, r), snatRules(t, sc, r)...) {
		c.AddRule(rule)
	}
}
