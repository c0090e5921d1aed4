// Package nft is natmap's nftables backend: it programs the table
// `inet natmap` over netlink with google/nftables, and touches no other table.
//
// Forwards live in maps, not in one rule per forward: for each of IPv4 and
// IPv6, with and without an input interface, a set of keys
// ([iifname .] daddr . l4proto . dport) and a map from the same keys to the
// target address and port. One rule per kind looks the packet up, marks
// the connection and DNATs it, so a packet's cost does not grow with the
// number of forwards, and adding or removing a forward is a couple of set
// elements, whatever the table holds.
//
// Every Replace and Apply is one netlink batch (one nftables transaction).
// google/nftables v0.3.0 loses elements silently when one message carries
// more than about 1800 of them, and overflows default socket buffers on
// large batches; the backend sends elements in chunks and forces large
// socket buffers (it runs as root).
package nft

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// chunkSize is how many elements go in one netlink message: well below the
// 64 KiB attribute limit even for the longest (IPv6 with interface) keys.
const chunkSize = 400

// socketBuffer is the forced send and receive buffer size of the netlink
// socket, so large batches and their acknowledgements fit.
const socketBuffer = 32 << 20

// Backend programs `inet natmap`. It implements nat.Backend.
type Backend struct {
	opts []nftables.ConnOption

	mu   sync.Mutex
	conn *nftables.Conn
	// lans counts the hairpinned forwards of each hairpin set in the
	// kernel, as the last Replace and the Applies since left them.
	lans map[lanKey]int
}

// Option configures a Backend.
type Option func(*Backend)

// WithNetNS makes the backend program the network namespace of fd instead
// of the caller's.
func WithNetNS(fd int) Option {
	return func(b *Backend) { b.opts = append(b.opts, nftables.WithNetNSFd(fd)) }
}

// New returns a backend; nothing is sent to the kernel until Replace or Apply.
func New(opts ...Option) *Backend {
	b := &Backend{}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Name implements nat.Backend.
func (b *Backend) Name() string { return "nftables" }

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// Replace implements nat.Backend: delete and rebuild the table in one batch.
func (b *Backend) Replace(_ context.Context, rs nat.Ruleset) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.connect()
	if err != nil {
		return err
	}
	t := table()
	c.AddTable(t) // so that DelTable cannot fail on a missing table
	c.DelTable(t)
	c.AddTable(t)

	groups := groupByLookup(rs.Forwards)
	made := map[string]*nftables.Set{}
	for _, l := range lookups {
		keys, targets := l.sets(t)
		if err := c.AddSet(keys, nil); err != nil {
			return b.abandon(fmt.Errorf("adding set %s: %w", keys.Name, err))
		}
		if err := c.AddSet(targets, nil); err != nil {
			return b.abandon(fmt.Errorf("adding map %s: %w", targets.Name, err))
		}
		if err := addElements(c, keys, targets, groups[l]); err != nil {
			return b.abandon(err)
		}
		made[keys.Name], made[targets.Name] = keys, targets
	}
	lans := lanKeys(rs.Hairpinned)
	for _, k := range lans {
		s := k.set(t)
		if err := c.AddSet(s, nil); err != nil {
			return b.abandon(fmt.Errorf("adding set %s: %w", s.Name, err))
		}
		made[s.Name] = s
	}
	if err := changeHairpins(c, t, rs.Hairpinned, false); err != nil {
		return b.abandon(err)
	}
	chains := tableLayout(t, lans, rs.Rules, byName(made))
	for _, cl := range chains {
		c.AddChain(cl.chain)
	}
	for _, cl := range chains {
		for _, r := range cl.rules {
			c.AddRule(r)
		}
	}
	if err := b.flush(c, fmt.Sprintf("replacing table inet %s with %d forwards", TableName, len(rs.Forwards))); err != nil {
		return err
	}
	b.lans = map[lanKey]int{}
	for _, h := range rs.Hairpinned {
		b.lans[lanKeyOf(h)]++
	}
	return nil
}

// Apply implements nat.Backend: element deletions, then additions, in one
// batch.
func (b *Backend) Apply(_ context.Context, ch nat.Change) error {
	if ch.Empty() {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.connect()
	if err != nil {
		return err
	}
	t := table()
	del := groupByLookup(ch.Del)
	add := groupByLookup(ch.Add)
	for _, l := range lookups {
		keys, targets := l.sets(t)
		if err := deleteElements(c, keys, targets, del[l]); err != nil {
			return b.abandon(err)
		}
	}
	for _, l := range lookups {
		keys, targets := l.sets(t)
		if err := addElements(c, keys, targets, add[l]); err != nil {
			return b.abandon(err)
		}
	}
	lans := maps.Clone(b.lans)
	for _, h := range ch.HairpinDel {
		lans[lanKeyOf(h)]--
	}
	for _, h := range ch.HairpinAdd {
		lans[lanKeyOf(h)]++
	}
	var came, went []lanKey
	for k, n := range lans {
		switch {
		case n > 0 && b.lans[k] == 0:
			came = append(came, k)
		case n <= 0:
			went = append(went, k)
			delete(lans, k)
		}
	}
	slices.SortFunc(came, compareLANs) // sets list in the order they were made
	for _, k := range came {
		if err := c.AddSet(k.set(t), nil); err != nil {
			return b.abandon(fmt.Errorf("adding set %s: %w", k.name(), err))
		}
	}
	if err := changeHairpins(c, t, ch.HairpinDel, true); err != nil {
		return b.abandon(err)
	}
	if err := changeHairpins(c, t, ch.HairpinAdd, false); err != nil {
		return b.abandon(err)
	}
	if ch.Rules != nil {
		c.FlushChain(regularChain(t, hairpinChain))
		c.FlushChain(regularChain(t, snatChain))
		addRules(c, t, *ch.Rules)
	}
	if len(came)+len(went) > 0 {
		// A LAN's rule comes with its first hairpin and goes with its
		// last: prerouting is refilled (a rule per LAN and the DNAT
		// lookups), and the sets of LANs left with no hairpin deleted.
		pre := newChains(t).prerouting
		c.FlushChain(pre)
		for _, r := range preroutingRules(t, pre, slices.Collect(maps.Keys(lans)), byName(nil)) {
			c.AddRule(r)
		}
		for _, k := range went {
			c.DelSet(k.set(t))
		}
	}
	if err := b.flush(c, fmt.Sprintf("removing %d and adding %d forwards", len(ch.Del), len(ch.Add))); err != nil {
		return err
	}
	b.lans = lans
	return nil
}

// Count returns how many forwards the kernel's maps hold, read back from
// the kernel (for tests and checks; it lists every element).
func (b *Backend) Count() (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.connect()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range lookups {
		keys, targets := l.sets(table())
		for _, s := range []*nftables.Set{keys, targets} {
			els, err := c.GetSetElements(s)
			if err != nil {
				b.drop()
				return 0, fmt.Errorf("listing %s: %w", s.Name, err)
			}
			n += len(els)
		}
	}
	return n / 2, nil
}

// Counters implements nat.Backend: the packets and bytes the kernel
// counted for each of fs (what the client side sent), read from the key
// sets' element counters.
func (b *Backend) Counters(_ context.Context, fs []nat.Forward) (map[nat.Endpoint]nat.Counter, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.connect()
	if err != nil {
		return nil, err
	}
	out := make(map[nat.Endpoint]nat.Counter, len(fs))
	for l, group := range groupByLookup(fs) {
		keys, _ := l.sets(table())
		els, err := c.GetSetElements(keys)
		if err != nil {
			b.drop()
			return nil, fmt.Errorf("listing %s: %w", keys.Name, err)
		}
		byKey := make(map[string]nat.Counter, len(els))
		for _, e := range els {
			if e.Counter != nil {
				byKey[string(e.Key)] = nat.Counter{Packets: e.Counter.Packets, Bytes: e.Counter.Bytes}
			}
		}
		for _, f := range group {
			if n, ok := byKey[string(key(f))]; ok {
				out[f.Endpoint()] = n
			}
		}
	}
	return out, nil
}

// Close releases the netlink socket. Kernel rules stay.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drop()
	return nil
}

func groupByLookup(fs []nat.Forward) map[lookup][]nat.Forward {
	out := map[lookup][]nat.Forward{}
	for _, f := range fs {
		out[lookupOf(f)] = append(out[lookupOf(f)], f)
	}
	return out
}

func addElements(c *nftables.Conn, keys, targets *nftables.Set, fs []nat.Forward) error {
	for start := 0; start < len(fs); start += chunkSize {
		part := fs[start:min(start+chunkSize, len(fs))]
		k := make([]nftables.SetElement, len(part))
		v := make([]nftables.SetElement, len(part))
		for i, f := range part {
			k[i] = element(f, false)
			v[i] = element(f, true)
		}
		if err := c.SetAddElements(keys, k); err != nil {
			return fmt.Errorf("adding to %s: %w", keys.Name, err)
		}
		if err := c.SetAddElements(targets, v); err != nil {
			return fmt.Errorf("adding to %s: %w", targets.Name, err)
		}
	}
	return nil
}

func deleteElements(c *nftables.Conn, keys, targets *nftables.Set, fs []nat.Forward) error {
	for start := 0; start < len(fs); start += chunkSize {
		part := fs[start:min(start+chunkSize, len(fs))]
		k := make([]nftables.SetElement, len(part))
		for i, f := range part {
			k[i] = element(f, false)
		}
		if err := c.SetDeleteElements(keys, k); err != nil {
			return fmt.Errorf("deleting from %s: %w", keys.Name, err)
		}
		if err := c.SetDeleteElements(targets, k); err != nil {
			return fmt.Errorf("deleting from %s: %w", targets.Name, err)
		}
	}
	return nil
}

// connect returns the lasting connection, dialling it when needed.
func (b *Backend) connect() (*nftables.Conn, error) {
	if b.conn != nil {
		return b.conn, nil
	}
	opts := append([]nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}, b.opts...)
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to nftables: %w", err)
	}
	b.conn = c
	return c, nil
}

// abandon drops the connection with its half-built batch, which must never
// be sent (google/nftables#323), and returns err.
func (b *Backend) abandon(err error) error {
	b.drop()
	return err
}

func (b *Backend) drop() {
	if b.conn != nil {
		_ = b.conn.CloseLasting()
		b.conn = nil
	}
}

func (b *Backend) flush(c *nftables.Conn, what string) error {
	if err := c.Flush(); err != nil {
		b.drop() // a failed Conn may keep a sticky error
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func bigBuffers(nc *netlink.Conn) error {
	rc, err := nc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("forcing netlink socket buffers: %w", serr)
	}
	return nil
}

// Remove deletes the natmap table, if there is one (when the host moves to
// the iptables backend).
func (b *Backend) Remove() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.connect()
	if err != nil {
		return err
	}
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	if err := b.flush(c, "deleting table inet "+TableName); err != nil {
		return err
	}
	b.lans = nil
	return nil
}

// Check implements nat.Backend: the table, its sets and chains are there,
// each chain with the rules natmap wrote (forwards are not listed: that
// would cost a dump of every map).
func (b *Backend) Check(_ context.Context, rs nat.Rules) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := b.connect()
	if err != nil {
		return err
	}
	t, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if err != nil {
		b.drop()
		return fmt.Errorf("table inet %s is missing", TableName)
	}
	sets, err := c.GetSets(t)
	if made := 2*len(lookups) + len(b.lans); err != nil || len(sets) != made {
		b.drop()
		return fmt.Errorf("table inet %s holds %d sets, natmap made %d", TableName, len(sets), made)
	}
	for _, cl := range tableLayout(t, slices.Collect(maps.Keys(b.lans)), rs, byName(nil)) {
		name := cl.chain.Name
		rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
		if err != nil {
			b.drop()
			return fmt.Errorf("chain %s is missing", name)
		}
		if len(rules) != len(cl.rules) {
			return fmt.Errorf("chain %s holds %d rules, natmap wrote %d", name, len(rules), len(cl.rules))
		}
	}
	return nil
}
