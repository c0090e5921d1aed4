package integration

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// dialFrom connects from ns, with the given source address, to addr and
// returns the answer "NAME SOURCE".
func dialFrom(t *testing.T, ns *netnstest.NS, from, addr string) string {
	t.Helper()
	var got string
	err := ns.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		b := make([]byte, 200)
		n, _ := c.Read(b)
		got = strings.TrimSpace(string(b[:n]))
		return nil
	})
	if err != nil {
		t.Fatalf("from %s to %s: %v", from, addr, err)
	}
	return got
}

// sourceSeen is the source address in an answer "NAME HOST:PORT".
func sourceSeen(answer string) string {
	_, src, _ := strings.Cut(answer, " ")
	host, _, _ := net.SplitHostPort(src)
	return host
}

// snat without --ext-ip masquerades: the traffic gets the address the
// interface has at the time, and follows it when the WAN address is
// replaced; a fixed SNAT of a more specific source stays beside it.
func TestIntegrationMasqueradeFollowsTheWANAddress(t *testing.T) {
	l := newLab(t)
	serve(t, l.client, "outside", clientIP+":7000", "[2001:db8:1::10]:7000")
	l.server2.AddAddr(t, "s0", "fd00::103/64")
	l.server2.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00::1")
	l.startDaemon()
	out := l.mustCLI("snat", "--int-ip", "10.0.0.0/24", "--ext-if", "ext0")
	if !strings.Contains(out, "masquerade") {
		t.Errorf("snat without --ext-ip said %q", out)
	}
	l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP)
	l.mustCLI("snat", "--int-ip", "fd00::/64", "--ext-if", "ext0")
	l.mustCLI("snat", "--int-ip", "fd00::101", "--ext-if", "ext0", "--ext-ip", extIP6)
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "masquerade") {
		t.Errorf("ls does not show the masquerade:\n%s", ls)
	}
	if src := sourceSeen(dialFrom(t, l.server2, server2IP, clientIP+":7000")); src != "203.0.113.1" {
		t.Errorf("masqueraded connection seen from %s, want the WAN address 203.0.113.1", src)
	}
	if got, err := dial(l.server2, "udp", clientIP+":7000"); err != nil || sourceSeen(got) != "203.0.113.1" {
		t.Errorf("masqueraded UDP seen as %q (%v), want from the WAN address 203.0.113.1", got, err)
	}
	if src := sourceSeen(dialFrom(t, l.server, serverIP, clientIP+":7000")); src != extIP {
		t.Errorf("the fixed SNAT's connection seen from %s, want %s", src, extIP)
	}
	if src := sourceSeen(dialFrom(t, l.server2, "fd00::103", "[2001:db8:1::10]:7000")); !strings.HasPrefix(src, "2001:db8:1::") {
		t.Errorf("masqueraded IPv6 connection seen from %s, want an address of ext0", src)
	}
	if src := sourceSeen(dialFrom(t, l.server, "fd00::101", "[2001:db8:1::10]:7000")); src != extIP6 {
		t.Errorf("the fixed IPv6 SNAT's connection seen from %s, want %s", src, extIP6)
	}

	// The ISP hands out another address; nothing is told to natmap.
	l.router.MustRun(t, "ip", "addr", "del", "203.0.113.1/24", "dev", "ext0")
	l.router.MustRun(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "ext0")
	if src := sourceSeen(dialFrom(t, l.server2, server2IP, clientIP+":7000")); src != "203.0.113.2" {
		t.Errorf("after the WAN address changed, masqueraded connection seen from %s, want 203.0.113.2", src)
	}
	if got, err := dial(l.server2, "udp", clientIP+":7000"); err != nil || sourceSeen(got) != "203.0.113.2" {
		t.Errorf("after the WAN address changed, masqueraded UDP seen as %q (%v), want from 203.0.113.2", got, err)
	}
	// The rule round-trips through export.
	if cfg := l.mustCLI("export"); !strings.Contains(cfg, "int_ip: 10.0.0.0/24") || strings.Contains(cfg, `ext_ip: ""`) {
		t.Errorf("export:\n%s", cfg)
	}
}

// An IPv6 hairpin covers the internal host's whole LAN, like IPv4: another
// host of the LAN and the server itself reach the service through the
// public address, and an outside client keeps its address.
func TestIntegrationIPv6HairpinCoversTheLAN(t *testing.T) {
	l := newLab(t)
	l.server2.AddAddr(t, "s0", "fd00::103/64")
	l.server2.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00::1")
	serve(t, l.server, "mail", "[fd00::101]:25")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "25")
	l.mustCLI("hairpin", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "25")
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "fd00::/64") {
		t.Errorf("the hairpin's LAN is not fd00::/64:\n%s", ls)
	}
	addr := "[" + extIP6 + "]:25"
	if src := expectReach(t, l.server2, "tcp", addr, "mail"); src != "fd00::1" {
		t.Errorf("another LAN host via the hairpin seen as %s, want the router's fd00::1", src)
	}
	expectReach(t, l.server, "tcp", addr, "mail")
	if src := expectReach(t, l.client, "tcp", addr, "mail"); src != "2001:db8:1::10" {
		t.Errorf("the outside client seen as %s, want its own address", src)
	}
	// IPv6 DNAT of a list, a range and a translation, TCP and UDP.
	serve(t, l.server, "v6", "[fd00::101]:465", "[fd00::101]:8000", "[fd00::101]:8002", "[fd00::101]:22")
	for _, proto := range []string{"tcp", "udp"} {
		l.mustCLI("dnat", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "465,8000-8002,2222:22", "--proto", proto)
		for _, port := range []string{"465", "8000", "8002", "2222"} {
			if src := expectReach(t, l.client, proto, "["+extIP6+"]:"+port, "v6"); src != "2001:db8:1::10" {
				t.Errorf("%s port %s: the server saw %s", proto, port, src)
			}
		}
	}
}

// fwd alone turns IPv6 forwarding on too, so IPv6 forwards work, and keeps
// router advertisements accepted on interfaces that took them.
func TestIntegrationFwdEnablesIPv6(t *testing.T) {
	l := newLab(t)
	l.router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0", "net.ipv6.conf.ext0.accept_ra=1")
	serve(t, l.server, "mail", "[fd00::101]:25", serverIP+":25")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "25")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	expectNoReach(t, l.client, "tcp", "["+extIP6+"]:25")
	out := l.mustCLI("fwd")
	for _, want := range []string{"IPv4 and IPv6 forwarding enabled", "net.ipv6.conf.all.forwarding 0 -> 1", "net.ipv6.conf.ext0.accept_ra 1 -> 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("fwd said %q, want %q in it", out, want)
		}
	}
	if got := sysctl(t, l.router, "net.ipv6.conf.ext0.accept_ra"); got != "2" {
		t.Errorf("accept_ra on ext0 after fwd: %s", got)
	}
	expectReach(t, l.client, "tcp", "["+extIP6+"]:25", "mail")
	expectReach(t, l.client, "tcp", extIP+":25", "mail")
	// The old flag still works, and says nothing changed now.
	if out := l.mustCLI("fwd", "--ipv6"); !strings.Contains(out, "nothing needed changing") {
		t.Errorf("fwd --ipv6 again said %q", out)
	}
}

// dnat --ext-if without --ext-ip forwards whatever address the interface
// has: it keeps working when the WAN address is replaced with nothing told
// to natmap, takes no other interface's addresses, and holds the port on
// the wildcard address.
func TestIntegrationDNATByInterface(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "web", serverIP+":443", "[fd00::101]:443")
	l.startDaemon()
	// A member may: the interface's addresses are the host's own.
	if _, errOut, code := l.memberCLI("dnat", "--ext-if", "ext0", "--int-ip", serverIP, "--ports", "443"); code != 0 {
		t.Fatalf("a member's dnat by interface: exit %d %s", code, errOut)
	}
	l.mustCLI("dnat", "--ext-if", "ext0", "--int-ip", serverIP, "--ports", "443", "--proto", "udp")
	l.mustCLI("dnat", "--ext-if", "ext0", "--int-ip", "fd00::101", "--ports", "443")
	for _, proto := range []string{"tcp", "udp"} {
		for _, addr := range []string{"203.0.113.1:443", extIP + ":443"} {
			if src := expectReach(t, l.client, proto, addr, "web"); src != clientIP {
				t.Errorf("%s %s: the server saw %s, want the client's %s", proto, addr, src, clientIP)
			}
		}
	}
	expectReach(t, l.client, "tcp", "[2001:db8:1::1]:443", "web")
	// Another interface's address is not forwarded, whichever way it comes.
	expectNoReach(t, l.clientB, "tcp", "198.51.100.1:443")
	expectNoReach(t, l.client, "tcp", "198.51.100.1:443")
	if bindable(l, "0.0.0.0:443") {
		t.Error("port 443 is not reserved on the wildcard address")
	}
	// Its hairpin: LAN hosts reach the service through ext0's addresses.
	l.mustCLI("hairpin", "--ext-if", "ext0", "--int-ip", serverIP, "--ports", "443")
	if src := expectReach(t, l.server2, "tcp", "203.0.113.1:443", "web"); src != "10.0.0.1" {
		t.Errorf("a LAN host via the hairpin seen as %s, want the router's 10.0.0.1", src)
	}
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "ext0's addresses") {
		t.Errorf("ls:\n%s", ls)
	}
	if cfg := l.mustCLI("export"); !strings.Contains(cfg, "ext_if: ext0") || strings.Contains(cfg, "ext_ip: 0.0.0.0") {
		t.Errorf("export:\n%s", cfg)
	}

	// The ISP hands out another address; nothing is told to natmap.
	l.router.MustRun(t, "ip", "addr", "del", "203.0.113.1/24", "dev", "ext0")
	l.router.MustRun(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "ext0")
	for _, proto := range []string{"tcp", "udp"} {
		if src := expectReach(t, l.client, proto, "203.0.113.2:443", "web"); src != clientIP {
			t.Errorf("%s after the address changed: the server saw %s", proto, src)
		}
	}
	// The hairpin follows within its refresh (a second).
	if !waitFor(3*time.Second, func() bool {
		got, err := dial(l.server2, "tcp", "203.0.113.2:443")
		return err == nil && strings.HasPrefix(got, "web ")
	}) {
		t.Errorf("the hairpin did not follow the new address:\n%s", l.kernelRules())
	}
	expectNoReach(t, l.server2, "tcp", "203.0.113.1:443")
	l.mustCLI("hairpin", "--ext-if", "ext0", "--int-ip", serverIP, "--ports", "443", "--delete")
	expectNoReach(t, l.server2, "tcp", "203.0.113.2:443")

	// A restart restores it; an exported file applies it again.
	l.stopDaemon()
	l.startDaemon()
	expectReach(t, l.client, "tcp", "203.0.113.2:443", "web")
	file := filepath.Join(l.dir, "natmap.yaml")
	if err := os.WriteFile(file, []byte(l.mustCLI("export")), 0o644); err != nil {
		t.Fatal(err)
	}
	l.mustCLI("clear")
	expectNoReach(t, l.client, "tcp", "203.0.113.2:443")
	l.mustCLI("apply", "-f", file)
	expectReach(t, l.client, "tcp", "203.0.113.2:443", "web")
	if out, _, code := l.cli("diff", "-f", file); code != 0 {
		t.Errorf("diff after apply: exit %d (want 0, nothing to change)\n%s", code, out)
	}
	for _, proto := range []string{"tcp", "udp"} {
		l.mustCLI("dnat", "--ext-if", "ext0", "--int-ip", serverIP, "--ports", "443", "--proto", proto, "--delete")
	}
	expectNoReach(t, l.client, "tcp", "203.0.113.2:443")
	expectReach(t, l.client, "tcp", "[2001:db8:1::1]:443", "web")
	if !bindable(l, "0.0.0.0:443") {
		t.Error("port 443 (IPv4) still reserved after its rules went")
	}
	// Without an interface, no address is no rule.
	if _, errOut, code := l.cli("dnat", "--int-ip", serverIP, "--ports", "80"); code == 0 || !strings.Contains(errOut, "--ext-ip: missing address (or give --ext-if alone") {
		t.Errorf("dnat without --ext-ip or --ext-if: exit %d %s", code, errOut)
	}
}

// A policy route with IPv6 addresses sends the service's replies back
// through the router that forwarded the connection, the outside client's
// address kept, as with IPv4.
func TestIntegrationIPv6PolicyRoute(t *testing.T) {
	l := newLab(t)
	gw := netnstest.New(t, "nmg6")
	netnstest.Link(t, gw, "g0", "", l.lan, "p3", "")
	gw.AddAddr(t, "g0", "fd00::254/64")
	l.lan.MustRun(t, "ip", "link", "set", "p3", "master", "br0")
	gw.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
	l.server.MustRun(t, "ip", "-6", "route", "replace", "default", "via", "fd00::254")
	serve(t, l.server, "svc", "[fd00::101]:8080")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "8080")
	addr := "[" + extIP6 + "]:8080"
	expectNoReach(t, l.client, "tcp", addr)

	svc := &lab{t: t, dir: t.TempDir(), router: l.server}
	svc.socket, svc.state, svc.saved = filepath.Join(svc.dir, "s.sock"), filepath.Join(svc.dir, "s.json"), filepath.Join(svc.dir, "s.nft")
	t.Cleanup(svc.stopDaemon)
	svc.startDaemon()
	before := routing(t, l.server)
	svc.mustCLI("policy-route", "--src-ip", "fd00::101", "--via", "fd00::1", "--table", "100")
	if src := expectReach(t, l.client, "tcp", addr, "svc"); src != "2001:db8:1::10" {
		t.Errorf("with the policy route the service saw %s, want the client's 2001:db8:1::10", src)
	}
	svc.mustCLI("policy-route", "--src-ip", "fd00::101", "--via", "fd00::1", "--table", "100", "--delete")
	if after := routing(t, l.server); after != before {
		t.Errorf("routing after --delete:\n%s\nwant\n%s", after, before)
	}
	expectNoReach(t, l.client, "tcp", addr)
}

// The mapping grammar holds IPv6 addresses in brackets: a local service
// on IPv6, for every address or one.
func TestIntegrationIPv6LocalServiceMapping(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "web", "[fd00::101]:80")
	l.startDaemon()
	l.mustCLI("docker", "add", "[::]:8080:[fd00::101]:80", "--name", "v6svc")
	l.mustCLI("docker", "add", "["+extIP6+"]:8081:[fd00::101]:80", "--name", "v6one")
	if src := expectReach(t, l.client, "tcp", "["+extIP6+"]:8080", "web"); src != "2001:db8:1::10" {
		t.Errorf("the service saw %s, want the client's 2001:db8:1::10", src)
	}
	expectReach(t, l.client, "tcp", "[2001:db8:1::1]:8080", "web")
	expectReach(t, l.client, "tcp", "["+extIP6+"]:8081", "web")
	expectNoReach(t, l.client, "tcp", "[2001:db8:1::1]:8081")
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "[::]") || !strings.Contains(ls, "["+extIP6+"]") || !strings.Contains(ls, "[fd00::101]:80") {
		t.Errorf("ls:\n%s", ls)
	}
	l.mustCLI("docker", "rm", "--name", "v6svc", "8080")
	expectNoReach(t, l.client, "tcp", "["+extIP6+"]:8080")
}

// Policy routes are desired state: start-up removes natmap's routes and
// rules that no policy route owns (a crash between a route and its rule),
// and a route whose gateway is not reachable yet waits, inactive with the
// reason, and is installed once it is.
func TestIntegrationPolicyRoutesRecover(t *testing.T) {
	l := newLab(t)
	// What a crash left: natmap's route and rule for a route never saved.
	l.server.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1", "table", "300", "proto", "212")
	l.server.MustRun(t, "ip", "rule", "add", "from", "10.0.0.99", "lookup", "300", "pref", "1000", "proto", "212")
	// Somebody else's table.
	l.server.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1", "table", "301")
	svc := &lab{t: t, dir: t.TempDir(), router: l.server}
	svc.socket, svc.state, svc.saved = filepath.Join(svc.dir, "s.sock"), filepath.Join(svc.dir, "s.json"), filepath.Join(svc.dir, "s.nft")
	state := `{"version": 1, "policy_routes": [{"src_ip": "10.0.0.101", "via": "10.0.7.1", "table": 100}]}`
	if err := os.WriteFile(svc.state, []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.stopDaemon)
	svc.startDaemon()
	if rules := l.server.MustRun(t, "ip", "rule"); strings.Contains(rules, "lookup 300") {
		t.Errorf("the orphan rule stayed:\n%s", rules)
	}
	if out := l.server.MustRun(t, "ip", "route", "show", "table", "300"); strings.TrimSpace(out) != "" {
		t.Errorf("the orphan route stayed:\n%s", out)
	}
	if out := l.server.MustRun(t, "ip", "route", "show", "table", "301"); !strings.Contains(out, "default via 10.0.0.1") {
		t.Errorf("somebody else's table was touched:\n%s", out)
	}
	if ls := svc.mustCLI("ls"); !strings.Contains(ls, "inactive") || !strings.Contains(ls, "10.0.7.1") {
		t.Errorf("a policy route whose gateway is not reachable:\n%s", ls)
	}
	// The gateway's network comes up.
	l.server.AddAddr(t, "s0", "10.0.7.2/24")
	if !waitFor(5*time.Second, func() bool { return strings.Contains(l.server.MustRun(t, "ip", "rule"), "from 10.0.0.101 lookup 100") }) {
		t.Errorf("the policy route was not installed once its gateway was reachable:\n%s", svc.daemonLog)
	}
	if ls := svc.mustCLI("ls"); strings.Contains(ls, "inactive") {
		t.Errorf("ls after the gateway came up:\n%s", ls)
	}
}
