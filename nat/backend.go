package nat

import (
	"context"
	"io"
	"slices"
	"strings"
)

// Backend programs the kernel. Every call is one kernel transaction: it
// takes effect whole or not at all.
type Backend interface {
	// Name is the backend's name, such as "nftables".
	Name() string
	// Replace makes the kernel hold exactly rs, in one transaction, with
	// no moment in which neither the old nor the new rules are in place.
	Replace(ctx context.Context, rs Ruleset) error
	// Apply removes c.Del and adds c.Add in one transaction. Deleting
	// something absent or adding something present is an error.
	Apply(ctx context.Context, c Change) error
}

// Reserver holds ports so that no other program can take them.
type Reserver interface {
	// Reserve binds e and keeps it bound until the Closer is closed. A port
	// held by another program gives an error wrapping ErrPortInUse.
	Reserve(e Endpoint) (io.Closer, error)
}

// Store persists the desired state.
type Store interface {
	// Save replaces the stored state atomically.
	Save(s State) error
}

// System changes host settings outside the NAT tables.
type System interface {
	// EnableForwarding turns on IPv4 forwarding, and IPv6 forwarding too
	// when ipv6 is set.
	EnableForwarding(ipv6 bool) error
}

// Ruleset is the whole kernel content natmap owns.
type Ruleset struct {
	// Forwards are the active DNAT forwards.
	Forwards []Forward
}

// String renders the ruleset one forward a line, sorted.
func (r Ruleset) String() string { return renderForwards("", r.Forwards) }

// Change is one transaction's worth of kernel edits.
type Change struct {
	// Del are forwards to remove; they are removed before Add is added.
	Del []Forward
	// Add are forwards to add.
	Add []Forward
}

// Empty reports whether the change does nothing.
func (c Change) Empty() bool { return len(c.Add) == 0 && len(c.Del) == 0 }

// String renders the change as "-" and "+" lines.
func (c Change) String() string { return renderForwards("- ", c.Del) + renderForwards("+ ", c.Add) }

// Inverse returns the change that undoes c.
func (c Change) Inverse() Change { return Change{Del: c.Add, Add: c.Del} }

func renderForwards(prefix string, fs []Forward) string {
	sorted := slices.Clone(fs)
	slices.SortFunc(sorted, compareForwards)
	var b strings.Builder
	for _, f := range sorted {
		b.WriteString(prefix)
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	return b.String()
}
