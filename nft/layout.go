package nft

import (
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// TableName is natmap's table, of family inet. natmap touches no other.
const TableName = "natmap"

// The connection marks, as nat defines them.
const (
	MarkDNAT  = nat.MarkForwarded
	MarkLocal = nat.MarkLocal
)

// Chain priorities: just before the standard NAT priorities, so natmap's
// forwards win over other tables' at the same hook (Docker and iptables-nft
// sit at exactly -100 and 100), and order is never left undefined.
const (
	prioDNAT = -101
	prioSNAT = 99
)

// family is IPv4 or IPv6: where the destination address sits and how long
// it is.
type family struct {
	suffix  string // set name suffix: "4" or "6"
	nfproto byte   // NFPROTO_IPV4 or NFPROTO_IPV6
	addr    nftables.SetDatatype
	addrLen uint32
	daddr   uint32 // offset of the destination address in the header
}

var (
	ipv4 = family{suffix: "4", nfproto: unix.NFPROTO_IPV4, addr: nftables.TypeIPAddr, addrLen: 4, daddr: 16}
	ipv6 = family{suffix: "6", nfproto: unix.NFPROTO_IPV6, addr: nftables.TypeIP6Addr, addrLen: 16, daddr: 24}
)

func familyOf(f nat.Forward) family {
	if f.Ext.Addr().Is4() {
		return ipv4
	}
	return ipv6
}

// lookup is one kind of forward lookup: a family, and a key of the
// destination address, protocol and port, with the input interface in
// front (iif) or without the address for forwards to every local address
// (any: the packet must be for this host, `fib daddr type local`). Both
// together are forwards by interface: for whatever address the input
// interface has (`fib daddr . iif type local`). Each kind has a set of keys
// (to mark the flow) and a map from the same keys to the target address
// and port. Lookups run in this order: the most specific first.
type lookup struct {
	fam family
	iif bool
	any bool
}

var lookups = []lookup{
	{fam: ipv4, iif: true}, {fam: ipv4}, {fam: ipv4, iif: true, any: true}, {fam: ipv4, any: true},
	{fam: ipv6, iif: true}, {fam: ipv6}, {fam: ipv6, iif: true, any: true}, {fam: ipv6, any: true},
}

func lookupOf(f nat.Forward) lookup {
	return lookup{fam: familyOf(f), iif: f.ExtIf != "", any: f.Ext.Addr().IsUnspecified()}
}

func (l lookup) suffix() string {
	s := l.fam.suffix
	if l.any {
		s = "any" + s
	}
	if l.iif {
		s += "if"
	}
	return s
}

func (l lookup) keyType() nftables.SetDatatype {
	types := []nftables.SetDatatype{nftables.TypeInetProto, nftables.TypeInetService}
	if !l.any {
		types = append([]nftables.SetDatatype{l.fam.addr}, types...)
	}
	if l.iif {
		types = append([]nftables.SetDatatype{nftables.TypeIFName}, types...)
	}
	return nftables.MustConcatSetType(types...)
}

// sets returns the key set and the target map of this lookup.
func (l lookup) sets(t *nftables.Table) (keys, targets *nftables.Set) {
	// Every key has a counter: the dnat rule counts a flow's first packet,
	// the count rule the rest of what the client sends.
	keys = &nftables.Set{Table: t, Name: "match" + l.suffix(), Concatenation: true, KeyType: l.keyType(), Counter: true}
	targets = &nftables.Set{
		Table: t, Name: "dnat" + l.suffix(), IsMap: true, Concatenation: true, KeyType: l.keyType(),
		DataType: nftables.MustConcatSetType(l.fam.addr, nftables.TypeInetService),
	}
	return keys, targets
}

// key is the bytes of a forward's key: [ifname .] [daddr .] l4proto .
// dport, each field padded to 4 bytes.
func key(f nat.Forward) []byte {
	var b []byte
	if f.ExtIf != "" {
		name := make([]byte, 16)
		copy(name, f.ExtIf)
		b = append(b, name...)
	}
	if !f.Ext.Addr().IsUnspecified() {
		b = append(b, f.Ext.Addr().AsSlice()...)
	}
	b = append(b, byte(f.Proto), 0, 0, 0)
	b = append(b, binaryutil.BigEndian.PutUint16(f.Ext.Port())...)
	return append(b, 0, 0)
}

// value is the bytes of a forward's target: daddr . dport.
func value(f nat.Forward) []byte {
	b := f.Int.Addr().AsSlice()
	return append(b, append(binaryutil.BigEndian.PutUint16(f.Int.Port()), 0, 0)...)
}

func element(f nat.Forward, withValue bool) nftables.SetElement {
	e := nftables.SetElement{Key: key(f)}
	if withValue {
		e.Val = value(f)
	}
	return e
}

// loadKey loads the lookup key into consecutive 32-bit registers from
// NFT_REG32_00, as nft does.
func (l lookup) loadKey() []expr.Any {
	reg := uint32(unix.NFT_REG32_00)
	var out []expr.Any
	if l.iif {
		out = append(out, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg})
		reg += 4
	}
	if !l.any {
		out = append(out, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: l.fam.daddr, Len: l.fam.addrLen})
		reg += l.fam.addrLen / 4
	}
	out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg})
	reg++
	return append(out, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
}

// dnatRule: for packets of this family whose key is in the key set, set
// the mark bits on the connection and DNAT to the target from the map.
//
//	[iifname .] ip daddr . meta l4proto . th dport @matchX ct mark set ct mark | MARK
//	  dnat ip to [iifname .] ip daddr . meta l4proto . th dport map @dnatX
func (l lookup) dnatRule(t *nftables.Table, c *nftables.Chain, keys, targets *nftables.Set, mark uint32) *nftables.Rule {
	first := uint32(unix.NFT_REG32_00)
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l.fam.nfproto}},
	}
	if l.localOnly(mark) {
		exprs = append(exprs, l.isLocal()...)
	}
	exprs = append(exprs, l.loadKey()...)
	exprs = append(exprs, &expr.Lookup{SourceRegister: first, SetName: keys.Name, SetID: keys.ID})
	exprs = append(exprs, setMark(mark)...)
	exprs = append(exprs, l.loadKey()...)
	exprs = append(exprs,
		&expr.Lookup{SourceRegister: first, DestRegister: first, IsDestRegSet: true, SetName: targets.Name, SetID: targets.ID},
		&expr.NAT{
			Type:        expr.NATTypeDestNAT,
			Family:      uint32(l.fam.nfproto),
			RegAddrMin:  first,
			RegProtoMin: first + l.fam.addrLen/4,
		},
	)
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment(l.comment())}
}

// localOnly reports whether the dnat rule with this mark matches only
// packets for this host (`fib daddr type local`): forwards to every local
// address, and every forward in the output hook (mark has MarkLocal), so a
// forward of an address that is not the host's never takes over the
// host's own connections to that address.
func (l lookup) localOnly(mark uint32) bool { return l.any || mark&MarkLocal != 0 }

// isLocal is `fib daddr type local`, or for forwards by interface `fib
// daddr . iif type local` (an address of the interface the packet came in
// by).
func (l lookup) isLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, FlagIIF: l.iif && l.any, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// countRule: established packets from the client side of a flow natmap
// forwarded hit its key, whose counter counts them (the first packet was
// counted by the dnat rule's lookup). Other traffic stops at the mark test.
//
//	ct mark & MARK == MARK ct state established ct direction original [iifname .] ip daddr . meta l4proto . th dport @matchX
func (l lookup) countRule(t *nftables.Table, c *nftables.Chain, keys *nftables.Set) *nftables.Rule {
	exprs := append(hasMark(MarkDNAT),
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l.fam.nfproto}},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
	)
	if l.any {
		exprs = append(exprs, l.isLocal()...)
	}
	exprs = append(exprs, l.loadKey()...)
	exprs = append(exprs, &expr.Lookup{SourceRegister: uint32(unix.NFT_REG32_00), SetName: keys.Name, SetID: keys.ID})
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment("natmap: count" + strings.TrimPrefix(l.comment(), "natmap: dnat"))}
}

func (l lookup) comment() string {
	s := "natmap: dnat ipv" + l.fam.suffix
	switch {
	case l.iif && l.any:
		s += " to the addresses of the input interface"
	case l.iif:
		s += " by interface"
	case l.any:
		s += " to every local address"
	}
	return s
}

// setMark is `ct mark set ct mark | mark`.
func setMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^mark), Xor: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
}

// hasMark is `ct mark & mark == mark`.
func hasMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
	}
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

// chains are natmap's base chains.
type chains struct {
	prerouting, output, postrouting, forward *nftables.Chain
	// count and countOut count the packets of established forwarded
	// flows (filter chains, at the mangle priority).
	count, countOut *nftables.Chain
	// localnet drops packets from the network to or from 127.0.0.0/8
	// (a filter chain at the raw priority, before any NAT).
	localnet *nftables.Chain
}

func newChains(t *nftables.Table) chains {
	accept := nftables.ChainPolicyAccept
	mk := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept}
	}
	return chains{
		prerouting:  mk("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityRef(prioDNAT)),
		output:      mk("output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityRef(prioDNAT)),
		postrouting: mk("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityRef(prioSNAT)),
		forward:     mk("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter),
		count:       mk("count_in", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle),
		countOut:    mk("count_out", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityMangle),
		localnet:    mk("localnet", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw),
	}
}

// chainLayout is one of natmap's chains with its rules, in order.
type chainLayout struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

// tableLayout is every chain of natmap's table with its rules, in the
// order Replace makes them: what Replace writes and what Check counts
// (the forwards live in the sets, the hairpins in the LANs' sets). set
// finds each set (see preroutingRules).
func tableLayout(t *nftables.Table, lans []lanKey, r nat.Rules, set func(*nftables.Set) *nftables.Set) []chainLayout {
	ch := newChains(t)
	hc, sc := regularChain(t, hairpinChain), regularChain(t, snatChain)
	var count, output, countOut []*nftables.Rule
	for _, l := range lookups {
		k, v := l.sets(t)
		keys, targets := set(k), set(v)
		count = append(count, l.countRule(t, ch.count, keys))
		if !l.iif {
			output = append(output, l.dnatRule(t, ch.output, keys, targets, MarkDNAT|MarkLocal))
			countOut = append(countOut, l.countRule(t, ch.countOut, keys))
		}
	}
	return []chainLayout{
		{hc, hairpinRules(t, hc, r)},
		{sc, snatRules(t, sc, r)},
		{ch.prerouting, preroutingRules(t, ch.prerouting, lans, set)},
		{ch.output, output},
		{ch.postrouting, []*nftables.Rule{masqueradeLocal(t, ch.postrouting), jump(t, ch.postrouting, hairpinChain), jump(t, ch.postrouting, snatChain)}},
		{ch.forward, []*nftables.Rule{acceptForwarded(t, ch.forward)}},
		{ch.count, count},
		{ch.countOut, countOut},
		{ch.localnet, localnetGuard(t, ch.localnet)},
	}
}

// localnetGuard: no packet that arrives from the network may reach
// 127.0.0.0/8, or claim to come from it, whatever route_localnet says
// (natmap turns it on for mappings to a loopback service, and others do
// too: CVE-2020-8558). It runs before any NAT, so a packet natmap DNATs to
// 127.0.0.1 still has the forward's own address here and passes.
//
//	iifname != "lo" ip daddr 127.0.0.0/8 counter drop
//	iifname != "lo" ip saddr 127.0.0.0/8 counter drop
func localnetGuard(t *nftables.Table, c *nftables.Chain) []*nftables.Rule {
	var out []*nftables.Rule
	for _, side := range []struct {
		offset uint32
		what   string
	}{{16, "to"}, {12, "from"}} {
		exprs := append(matchFamily(ipv4),
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifnameBytes("lo")},
		)
		exprs = append(exprs, matchPrefix(side.offset, loopback4)...)
		exprs = append(exprs, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
		out = append(out, &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment(localnetComment(side.what))})
	}
	return out
}

var loopback4 = netip.MustParsePrefix("127.0.0.0/8")

func localnetComment(what string) string {
	return "natmap: nothing from the network " + what + " 127.0.0.0/8"
}

// masqueradeLocal: connections the host itself made to a forward leave
// with the address of the interface they leave by.
func masqueradeLocal(t *nftables.Table, c *nftables.Chain) *nftables.Rule {
	exprs := append(hasMark(MarkLocal), &expr.Counter{}, &expr.Masq{})
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment("natmap: masquerade the host's own forwarded connections")}
}

// acceptForwarded accepts natmap's forwarded flows in the forward hook.
func acceptForwarded(t *nftables.Table, c *nftables.Chain) *nftables.Rule {
	exprs := append(hasMark(MarkDNAT), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept})
	return &nftables.Rule{Table: t, Chain: c, Exprs: exprs, UserData: comment("natmap: accept forwarded flows")}
}
