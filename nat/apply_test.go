package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func mailConfig() Config {
	return Config{
		Version:    ConfigVersion,
		Forwarding: &ForwardingConfig{IPv4: true},
		Dnat:       []DnatConfig{{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "25,465,587"}},
		Snat:       []SnatConfig{{IntIP: "10.0.0.101", ExtIP: "203.0.113.43", ExtIf: "vmbr0"}},
		Hairpin:    []HairpinConfig{{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "25,465,587"}},
		Docker:     []MappingConfig{{Container: "svc", HostPort: 8080, TargetIP: "127.0.0.1", ContainerPort: 80}},
	}
}

func TestApplyIsOneChangeAndIdempotent(t *testing.T) {
	r := newRig(t, State{})
	txns := r.fake.Transactions
	resp, err := r.svc.Apply(ctx, mailConfig(), false, false)
	if err != nil || !resp.Applied || len(resp.Add) != 5 {
		t.Fatalf("apply: %+v %v", resp, err)
	}
	if got := r.fake.Transactions - txns; got != 1 {
		t.Errorf("apply took %d kernel transactions, want 1", got)
	}
	snap := r.snapshot()
	again, err := r.svc.Apply(ctx, mailConfig(), false, false)
	if err != nil || again.Changed || again.Applied || len(again.Keep) != 5 {
		t.Fatalf("second apply: %+v %v, want nothing changed", again, err)
	}
	if got := r.snapshot(); got != snap {
		t.Errorf("a second apply changed things:\n%s\nwant\n%s", got, snap)
	}
	// The running configuration, exported, applies as a no-op too.
	if resp, err := r.svc.Apply(ctx, r.svc.Config(), true, false); err != nil || resp.Changed {
		t.Errorf("applying the exported configuration with --prune: %+v %v", resp, err)
	}
}

func TestApplyPrune(t *testing.T) {
	r := newRig(t, State{Dnats: []DNAT{dnat(t, "203.0.113.44", "10.0.0.102", "80", "tcp", "")}})
	resp, err := r.svc.Apply(ctx, mailConfig(), false, true)
	if err != nil || len(resp.Remove) != 0 || len(resp.Keep) != 1 {
		t.Fatalf("dry run without prune: %+v %v, want the old rule kept", resp, err)
	}
	resp, err = r.svc.Apply(ctx, mailConfig(), true, false)
	if err != nil || len(resp.Remove) != 1 || !strings.Contains(resp.Remove[0], "203.0.113.44") {
		t.Fatalf("apply --prune: %+v %v, want the old rule removed", resp, err)
	}
	if strings.Contains(r.fake.Dump(), "203.0.113.44") || strings.Contains(r.res.Dump(), "203.0.113.44") {
		t.Errorf("pruned rule still in the kernel or reserved:\n%s\n%s", r.fake.Dump(), r.res.Dump())
	}
}

func TestApplyRefusesWithEveryProblem(t *testing.T) {
	r := newRig(t, State{Dnats: []DNAT{dnat(t, "203.0.113.43", "10.0.0.109", "110", "tcp", "")}})
	busy := Endpoint{Proto: ProtoTCP, Addr: netip.MustParseAddrPort("203.0.113.43:993")}
	r.res.busy[busy] = true
	snap := r.snapshot()

	c := mailConfig()
	c.Dnat = append(c.Dnat,
		DnatConfig{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "110"},  // taken by the installed rule
		DnatConfig{ExtIP: "203.0.113.300", IntIP: "10.0.0.101", Ports: "143"}) // bad address
	_, err := r.svc.Apply(ctx, c, false, false)
	var pe *ProblemsError
	if !errors.As(err, &pe) || len(pe.Problems) != 2 ||
		pe.Problems[0].Index != 1 || !strings.Contains(pe.Problems[0].Error, "already forwarded") ||
		pe.Problems[1].Index != 2 || !strings.Contains(pe.Problems[1].Error, "203.0.113.300") {
		t.Fatalf("a conflict and a bad address: %v, want both, at dnat[1] and dnat[2]", err)
	}
	c.Dnat = append(c.Dnat[:1], DnatConfig{ExtIP: "203.0.113.43", IntIP: "10.0.0.101", Ports: "993"})
	_, err = r.svc.Apply(ctx, c, false, false)
	if !errors.As(err, &pe) || len(pe.Problems) != 1 || pe.Problems[0].Index != 1 || !strings.Contains(pe.Problems[0].Error, "203.0.113.43:993") {
		t.Fatalf("busy port: %v, want one problem at dnat[1] naming the port", err)
	}
	if got := r.snapshot(); got != snap {
		t.Fatalf("a refused apply changed things:\n%s\nwant\n%s", got, snap)
	}
}

func TestApplyPolicyRoutes(t *testing.T) {
	r := newRig(t, State{})
	c := Config{Version: ConfigVersion, PolicyRoutes: []PolicyRouteConfig{
		{SrcIP: "10.0.0.101", Via: "10.0.0.1", Table: 100},
		{SrcIP: "10.0.0.102", Via: "192.0.2.1", Table: 101}, // no connected network
	}}
	snap := r.snapshot()
	_, err := r.svc.Apply(ctx, c, false, false)
	var pe *ProblemsError
	if !errors.As(err, &pe) || len(pe.Problems) != 1 || pe.Problems[0].Index != 1 {
		t.Fatalf("a gateway on no connected network: %v, want a problem at policy_routes[1]", err)
	}
	if got := r.snapshot(); got != snap {
		t.Fatalf("a refused apply changed things:\n%s\nwant\n%s", got, snap)
	}
	c.PolicyRoutes = c.PolicyRoutes[:1]
	if _, err := r.svc.Apply(ctx, c, false, false); err != nil {
		t.Fatal(err)
	}
	if got := r.router.Dump(); got != "policy route from 10.0.0.101 via 10.0.0.1 table 100; table 100" {
		t.Errorf("routes after apply: %s", got)
	}
	if resp, err := r.svc.Apply(ctx, Config{Version: ConfigVersion}, true, false); err != nil || len(resp.Remove) != 1 || r.router.Dump() != "" {
		t.Errorf("apply --prune of an empty file: %+v %v; routes %q", resp, err, r.router.Dump())
	}
}

// TestApplyWaitsForDocker: a container mapping applied while Docker is not
// there (a daemon that starts before Docker at boot) is kept, reserved and
// parked, to follow its container by name once Docker answers.
func TestApplyWaitsForDocker(t *testing.T) {
	r := newRig(t, State{})
	c := Config{Version: ConfigVersion, Docker: []MappingConfig{{Container: "web", HostPort: 8080, ContainerPort: 80}}}
	resp, err := r.svc.Apply(ctx, c, false, false)
	if err != nil || !resp.Applied {
		t.Fatalf("apply without Docker: %+v %v", resp, err)
	}
	l := r.svc.List()
	if len(l.Mappings) != 1 || l.Mappings[0].Status != "inactive" || !strings.Contains(r.res.Dump(), ":8080") {
		t.Errorf("mapping %+v, reserved %s; want it parked with its port reserved", l.Mappings, r.res.Dump())
	}
	if strings.Contains(r.fake.Dump(), "8080") {
		t.Errorf("a parked mapping is in the kernel:\n%s", r.fake.Dump())
	}
}

// A configuration whose ranges would expand to millions of forwards is
// refused with 413 before anything is built, and changes nothing.
func TestApplyTooLarge(t *testing.T) {
	r := newRig(t, State{})
	before := r.snapshot()
	c := Config{Version: ConfigVersion}
	for i := 0; i < 20; i++ {
		c.Dnat = append(c.Dnat, DnatConfig{ExtIP: fmt.Sprintf("203.0.113.%d", i+1), IntIP: "10.0.0.101", Ports: "1-65535", Proto: "tcp"})
	}
	_, err := r.svc.Apply(ctx, c, false, false)
	if ErrStatus(err) != 413 || !strings.Contains(err.Error(), "asks for 1310700 forwards") {
		t.Errorf("apply of 1.3 million forwards: %v (status %d)", err, ErrStatus(err))
	}
	if after := r.snapshot(); after != before {
		t.Errorf("a refused apply changed things:\n%s\nwant\n%s", after, before)
	}
}

// BenchmarkApplyUnchanged: applying the running configuration again (what
// `apply` of an unchanged file and `diff` do) costs the same per rule at
// 1,000 and at 10,000 rules: the comparison is indexed, not rule against
// rule. Compare ns/rule between the two sizes.
func BenchmarkApplyUnchanged(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			var st State
			for i := range n {
				in := netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(1 + i%250)})
				c := DnatConfig{ExtIP: "203.0.113.43", IntIP: in.String(), Ports: fmt.Sprint(1000 + i)}
				d, err := c.ToDNAT()
				if err != nil {
					b.Fatal(err)
				}
				st.Dnats = append(st.Dnats, d)
				st.Mappings = append(st.Mappings, Mapping{ID: i + 1, Container: fmt.Sprint("svc", i), HostIP: netip.IPv4Unspecified(),
					HostPort: uint16(20000 + i), ContainerPort: 80, Proto: ProtoTCP, TargetIP: netip.MustParseAddr("127.0.0.1")})
			}
			st.NextMappingID = n + 1
			r := newRig(b, st)
			c := r.svc.Config()
			b.ResetTimer()
			for range b.N {
				if resp, err := r.svc.Apply(ctx, c, true, true); err != nil || resp.Changed {
					b.Fatalf("apply of the running configuration: changed %v, %v", resp.Changed, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(2*n), "ns/rule")
		})
	}
}
