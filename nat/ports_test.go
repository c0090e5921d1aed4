package nat

import (
	"strings"
	"testing"
)

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in, want string
		count    int
	}{
		{"25", "25", 1},
		{"25,465", "25,465", 2},
		{" 465 , 25 ", "25,465", 2},
		{"8000-8100", "8000-8100", 101},
		{"2222:22", "2222:22", 1},
		{"5000-5009:6000-6009", "5000-5009:6000-6009", 10},
		{"25,26,27", "25-27", 3},
		{"1-65535", "1-65535", 65535},
		{"80,8080:80", "80,8080:80", 2},
		{"10:20,11:21", "10-11:20-21", 2},
		{"25,465,587,143,993,110,995,4190", "25,110,143,465,587,993,995,4190", 8},
	}
	for _, tt := range tests {
		got, err := ParsePorts(tt.in)
		if err != nil {
			t.Errorf("ParsePorts(%q): %v", tt.in, err)
			continue
		}
		if got.String() != tt.want || got.Count() != tt.count {
			t.Errorf("ParsePorts(%q) = %s (%d ports), want %s (%d)", tt.in, got, got.Count(), tt.want, tt.count)
		}
		again, err := ParsePorts(got.String())
		if err != nil || again.String() != got.String() {
			t.Errorf("ParsePorts(%q) does not round-trip: %v %v", got, again, err)
		}
	}
}

func TestParsePortsErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "empty"},
		{"  ", "empty"},
		{"0", "port 0 is out of range"},
		{"65536", "port 65536 is out of range"},
		{"abc", `"abc" is not a port number`},
		{"25,,465", "empty entry"},
		{"8100-8000", "range 8100-8000 is reversed"},
		{"25,20-30", "port 25 appears more than once"},
		{"25,25", "port 25 appears more than once"},
		{"1-10:20-25", "maps 10 ports to 6"},
		{"22:", "missing port number"},
		{"-5", "missing port number"},
		{"5-", "missing port number"},
		{"+5", `"+5" is not a port number`},
		{"1:2:3", "not a port number"},
	}
	for _, tt := range tests {
		_, err := ParsePorts(tt.in)
		if err == nil {
			t.Errorf("ParsePorts(%q) succeeded", tt.in)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParsePorts(%q) = %q, want it to say %q", tt.in, err, tt.want)
		}
	}
}

func TestPortListPairsAndHas(t *testing.T) {
	l, err := ParsePorts("2222:22,8000-8002")
	if err != nil {
		t.Fatal(err)
	}
	want := []PortPair{{2222, 22}, {8000, 8000}, {8001, 8001}, {8002, 8002}}
	got := l.Pairs()
	if len(got) != len(want) {
		t.Fatalf("pairs %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pairs %v, want %v", got, want)
		}
	}
	for ext, want := range map[uint16]uint16{2222: 22, 8000: 8000, 8001: 8001, 8002: 8002} {
		if got, ok := l.Target(ext); !ok || got != want {
			t.Errorf("Target(%d) = %d, %v; want %d", ext, got, ok, want)
		}
	}
	for _, p := range []uint16{22, 7999, 8003, 1} {
		if _, ok := l.Target(p); ok {
			t.Errorf("Target(%d) found", p)
		}
	}
	if got := l.Without(PortList{{From: 8001, To: 8001, Target: 8001}}).String(); got != "2222:22,8000,8002" {
		t.Errorf("Without = %s", got)
	}
	if got := PortListOf(got).String(); got != l.String() {
		t.Errorf("PortListOf(Pairs) = %s, want %s", got, l)
	}
}

// FuzzParsePorts: no input panics, and every accepted list is canonical:
// its String parses back to itself, with no external port twice.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"25", "25,465", "8000-8100", "2222:22", "1-10:21-30", "0", "65536", "a-b", ",", "1-2:3", "5:6-7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParsePorts(s)
		if err != nil {
			return
		}
		again, err := ParsePorts(l.String())
		if err != nil {
			t.Fatalf("%q parsed to %q, which does not parse: %v", s, l, err)
		}
		if again.String() != l.String() {
			t.Fatalf("%q: %q reparsed to %q", s, l, again)
		}
		seen := map[uint16]bool{}
		for _, p := range l.Pairs() {
			if seen[p.Ext] || p.Ext == 0 || p.Int == 0 {
				t.Fatalf("%q: bad pair %v", s, p)
			}
			seen[p.Ext] = true
		}
	})
}
