package nft

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/golden"
	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/internal/sequence"
	"github.com/lab-ops/natmap/nat"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// fwd is a forward (as the shared sequence writes them).
var fwd = sequence.Fwd

// newBackend returns a backend bound to a fresh namespace.
func newBackend(t *testing.T) (*Backend, *netnstest.NS) {
	t.Helper()
	netnstest.RequirePrivileges(t, "nft")
	ns := netnstest.New(t, "nmnft")
	b := New(WithNetNS(int(ns.Open(t).Fd())))
	t.Cleanup(func() { b.Close() })
	return b, ns
}

// listTable lists natmap's table, each set's elements sorted (the
// kernel lists a hash set in its own order).
func listTable(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	return sortElements(ns.MustRun(t, "nft", "list", "table", "inet", TableName))
}

var elementsRE = regexp.MustCompile(`(?s)elements = \{ (.*?) \}`)

func sortElements(listing string) string {
	return elementsRE.ReplaceAllStringFunc(listing, func(block string) string {
		inner := elementsRE.FindStringSubmatch(block)[1]
		var els []string
		for _, e := range strings.Split(inner, ",") {
			els = append(els, strings.TrimSpace(e))
		}
		slices.Sort(els)
		return "elements = { " + strings.Join(els, ",\n\t\t\t     ") + " }"
	})
}

func TestIntegrationGoldenSequence(t *testing.T) {
	b, ns := newBackend(t)
	ctx := context.Background()
	if err := b.Replace(ctx, sequence.Start()); err != nil {
		t.Fatal(err)
	}
	for i, ch := range sequence.Changes() {
		if err := b.Apply(ctx, ch); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
	}
	rules := sequence.Final().Rules
	rules.Hairpinned = nil // what Check gets
	golden.Check(t, "sequence.nft", listTable(t, ns), *update)

	// Render writes a script that builds the same table.
	rendered := netnstest.New(t, "nmnft")
	script := filepath.Join(t.TempDir(), "render.nft")
	rs := sequence.Final()
	if err := os.WriteFile(script, Render(rs), 0o644); err != nil {
		t.Fatal(err)
	}
	rendered.MustRun(t, "nft", "-f", script)
	rendered.MustRun(t, "nft", "-f", script) // loading twice replaces, never duplicates
	if got, want := listTable(t, rendered), listTable(t, ns); got != want {
		t.Errorf("the rendered script builds:\n%s\nthe backend built:\n%s\nscript:\n%s", got, want, Render(rs))
	}

	// The listing loads back with nft -f into another namespace.
	other := netnstest.New(t, "nmnft")
	file := filepath.Join(t.TempDir(), "saved.nft")
	if err := os.WriteFile(file, []byte(listTable(t, ns)), 0o644); err != nil {
		t.Fatal(err)
	}
	other.MustRun(t, "nft", "-f", file)
	if got, want := listTable(t, other), listTable(t, ns); got != want {
		t.Errorf("reloaded listing differs:\n%s\nwant\n%s", got, want)
	}

	// Deleting what is absent fails the whole batch and changes nothing.
	before := listTable(t, ns)
	err := b.Apply(ctx, nat.Change{Del: []nat.Forward{sequence.DNS}, Add: []nat.Forward{fwd("", "tcp", "203.0.113.43:26", "10.0.0.101:26")}})
	if err == nil {
		t.Fatal("deleting an absent forward succeeded")
	}
	if after := listTable(t, ns); after != before {
		t.Errorf("a failed batch changed the table:\n%s", after)
	}
	// Check counts what the layout Replace and Apply write: the table as
	// written passes; a chain that lost its rule does not.
	if err := b.Check(ctx, rules); err != nil {
		t.Errorf("check of the table as written: %v", err)
	}
	ns.MustRun(t, "nft", "flush", "chain", "inet", TableName, "forward")
	if err := b.Check(ctx, rules); err == nil || err.Error() != "chain forward holds 0 rules, natmap wrote 1" {
		t.Errorf("check of a flushed chain: %v", err)
	}
	// Replace with nothing leaves an empty table with its chains.
	if err := b.Replace(ctx, nat.Ruleset{}); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "empty.nft", listTable(t, ns), *update)
}

// TestIntegrationTenThousandForwards proves the bulk workarounds: a
// Replace with 10,000 forwards (split over families and interfaces) puts
// every element in the kernel, where google/nftables v0.3.0 unchunked would
// lose most of them silently.
func TestIntegrationTenThousandForwards(t *testing.T) {
	b, _ := newBackend(t)
	var fs []nat.Forward
	for i := 0; i < 10000; i++ {
		port := 10000 + i%50000
		switch i % 4 {
		case 0:
			fs = append(fs, fwd("", "tcp", fmt.Sprintf("203.0.113.%d:%d", 1+i/4000, port), fmt.Sprintf("10.0.%d.%d:80", i/250%250, 1+i%250)))
		case 1:
			fs = append(fs, fwd("", "udp", fmt.Sprintf("203.0.113.%d:%d", 1+i/4000, port), "10.0.0.9:53"))
		case 2:
			fs = append(fs, fwd("ext0", "tcp", fmt.Sprintf("198.51.100.7:%d", port), "10.0.1.1:443"))
		case 3:
			fs = append(fs, fwd("", "tcp", fmt.Sprintf("[2001:db8::%x]:%d", 1+i/4000, port), "[fd00::1]:80"))
		}
	}
	if err := b.Replace(context.Background(), nat.Ruleset{Forwards: fs}); err != nil {
		t.Fatal(err)
	}
	n, err := b.Count()
	if err != nil {
		t.Fatal(err)
	}
	if n != len(fs) {
		t.Fatalf("the kernel holds %d forwards, want %d", n, len(fs))
	}
	// One more change on top of 10,000 is still one small batch.
	extra := fwd("", "tcp", "203.0.113.200:80", "10.0.0.1:80")
	if err := b.Apply(context.Background(), nat.Change{Add: []nat.Forward{extra}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.Count(); n != len(fs)+1 {
		t.Fatalf("after one add the kernel holds %d, want %d", n, len(fs)+1)
	}
}

// Render is a pure encoder: its script for the shared sequence's final
// ruleset, without root (the golden test above proves such a script
// builds the table the backend builds).
func TestRenderGolden(t *testing.T) {
	golden.Check(t, "render.nft", string(Render(sequence.Final())), *update)
}
