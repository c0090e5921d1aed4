package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// readSysctl reads a setting of the namespace the calling thread is in.
func readSysctl(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// Forwarding on keeps router advertisements accepted (accept_ra 1 -> 2),
// says what it changed, survives in the record, and restoreAll puts every
// setting back as it was found.
func TestIntegrationHostSettingsForwarding(t *testing.T) {
	netnstest.RequirePrivileges(t)
	ns := netnstest.New(t, "nmhs")
	other := netnstest.New(t, "nmho")
	netnstest.Link(t, ns, "wan0", "192.0.2.1/24", other, "o0", "192.0.2.2/24")
	ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.wan0.accept_ra=1", "net.ipv6.conf.all.forwarding=0", "net.ipv4.ip_forward=0")
	path := filepath.Join(t.TempDir(), "state.json.host")
	err := ns.Do(func() error {
		h, err := loadHostSettings(path)
		if err != nil {
			return err
		}
		changed, err := h.forwarding(true)
		if err != nil {
			return err
		}
		all := strings.Join(changed, "; ")
		for _, want := range []string{"net.ipv4.ip_forward 0 -> 1", "net.ipv6.conf.all.forwarding 0 -> 1", "net.ipv6.conf.wan0.accept_ra 1 -> 2"} {
			if !strings.Contains(all, want) {
				t.Errorf("forwarding said %q, want %q in it", all, want)
			}
		}
		if got := readSysctl(t, "net/ipv6/conf/wan0/accept_ra"); got != "2" {
			t.Errorf("accept_ra on wan0: %s", got)
		}
		if got := readSysctl(t, "net/ipv6/conf/wan0/forwarding"); got != "1" {
			t.Errorf("IPv6 forwarding on wan0: %s", got)
		}
		if again, err := h.forwarding(true); err != nil || len(again) != 0 {
			t.Errorf("a second time changed %q (%v)", again, err)
		}
		// A restart reads what was changed; restoreAll puts it back.
		h2, err := loadHostSettings(path)
		if err != nil {
			return err
		}
		if err := h2.restoreAll(); err != nil {
			return err
		}
		for name, want := range map[string]string{"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0", "net/ipv6/conf/wan0/accept_ra": "1"} {
			if got := readSysctl(t, name); got != want {
				t.Errorf("%s after restoreAll: %s, want %s", name, got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
