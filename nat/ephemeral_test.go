package nat

import (
	"errors"
	"strings"
	"testing"
)

func TestEphemeralRangeIsNotStarved(t *testing.T) {
	r := newRig(t, State{})
	before := r.snapshot()
	// The whole of Linux's default ephemeral range: every outgoing
	// connection of the host would fail.
	_, _, err := r.svc.AddDNAT(ctx, dnat(t, "203.0.113.43", "10.0.0.101", "32768-60999", "udp", ""))
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "would leave 0 of its 28232 ports free") ||
		!strings.Contains(err.Error(), "net.ipv4.ip_local_port_range") {
		t.Fatalf("forwarding the whole ephemeral range: %v", err)
	}
	if after := r.snapshot(); after != before {
		t.Errorf("a refused forward changed things:\n%s\nwant\n%s", after, before)
	}

	// A small range inside it goes through, with a warning.
	wctx, warned := WithWarnings(ctx)
	if _, _, err := r.svc.AddDNAT(wctx, dnat(t, "203.0.113.43", "10.0.0.101", "40000-40009,40020", "udp", "")); err != nil {
		t.Fatal(err)
	}
	got := warned.Take()
	if len(got) != 1 || !strings.Contains(got[0], "udp ports 40000-40009, 40020 lie in the kernel's ephemeral port range 32768-60999") ||
		!strings.Contains(got[0], "28221 of its 28232 ports stay free") {
		t.Errorf("warnings %q", got)
	}
	// Ports outside the range, or of the other protocol's count, warn
	// about nothing new.
	if _, _, err := r.svc.AddDNAT(wctx, dnat(t, "203.0.113.43", "10.0.0.101", "25,61000", "udp", "")); err != nil {
		t.Fatal(err)
	}
	if got := warned.Take(); len(got) != 0 {
		t.Errorf("warnings for ports outside the range: %q", got)
	}
	// What is held counts toward the limit, and the same port on another
	// address takes no more of the range.
	r.svc.sys.(*NoSystem).ephemeral = [2]uint16{40000, 42047} // 2048 ports, 11 held: 1024 must stay free
	if _, _, err := r.svc.AddDNAT(wctx, dnat(t, "203.0.113.44", "10.0.0.102", "41000-42012", "udp", "")); err != nil {
		t.Fatalf("1013 ports of 2048 with 11 held: %v", err)
	}
	if got := warned.Take(); len(got) != 1 || !strings.Contains(got[0], "1024 of its 2048 ports stay free") {
		t.Errorf("warnings %q", got)
	}
	if _, _, err := r.svc.AddDNAT(wctx, dnat(t, "203.0.113.45", "10.0.0.102", "40000-40009", "udp", "")); err != nil {
		t.Errorf("ports held already, on another address: %v", err)
	}
	before = r.snapshot()
	_, _, err = r.svc.AddDNAT(wctx, dnat(t, "203.0.113.44", "10.0.0.102", "42013", "udp", ""))
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "fewer than 1024") {
		t.Errorf("one port more: %v", err)
	}
	if after := r.snapshot(); after != before {
		t.Errorf("a refused forward changed things:\n%s\nwant\n%s", after, before)
	}
	// TCP has a range of its own.
	if _, _, err := r.svc.AddDNAT(wctx, dnat(t, "203.0.113.44", "10.0.0.102", "42013", "tcp", "")); err != nil {
		t.Errorf("tcp: %v", err)
	}
}

func TestMoveRange(t *testing.T) {
	for _, c := range []struct {
		ports  []uint16
		lo, hi uint16
		want   string
	}{
		{[]uint16{32768, 60999}, 32768, 60999, `"61000 65535"`},
		{[]uint16{40000, 60999}, 32768, 60999, `"32768 39999"`},
		{[]uint16{32768, 40000}, 32768, 60999, `"40001 60999"`},
		{[]uint16{20000, 62000}, 32768, 60999, `"1024 19999"`},
		{[]uint16{1024, 65535}, 1024, 65535, "to ports none of them use"},
	} {
		if got := moveRange(c.ports, c.lo, c.hi); !strings.Contains(got, c.want) {
			t.Errorf("moveRange(%v, %d, %d) = %s, want %s", c.ports, c.lo, c.hi, got, c.want)
		}
	}
}
