package integration

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/nat"
)

const server2IP = "10.0.0.103"

func TestIntegrationSNAT(t *testing.T) {
	l := newLab(t)
	serve(t, l.client, "outside", clientIP+":7000")
	serve(t, l.clientB, "outsideB", "198.51.100.10:7000")
	l.startDaemon()

	if src := expectReach(t, l.server, "tcp", clientIP+":7000", "outside"); src != serverIP {
		t.Fatalf("before snat the client saw %s", src)
	}
	l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP)
	if out := l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP); !strings.Contains(out, "already present") {
		t.Errorf("second add: %s", out)
	}
	for _, proto := range []string{"tcp", "udp"} {
		if src := expectReach(t, l.server, proto, clientIP+":7000", "outside"); src != extIP {
			t.Errorf("%s with snat: the client saw %s, want %s", proto, src, extIP)
		}
	}
	// Traffic leaving by another interface keeps its source.
	if src := expectReach(t, l.server, "tcp", "198.51.100.10:7000", "outsideB"); src != serverIP {
		t.Errorf("via ext1: clientB saw %s, want %s", src, serverIP)
	}
	// Other internal hosts are not rewritten; a network rule covers them.
	if src := expectReach(t, l.server2, "tcp", clientIP+":7000", "outside"); src != server2IP {
		t.Errorf("server2 without a rule seen as %s", src)
	}
	l.router.AddAddr(t, "ext0", "203.0.113.44/32")
	l.mustCLI("snat", "--int-ip", "10.0.0.0/24", "--ext-if", "ext0", "--ext-ip", "203.0.113.44")
	if src := expectReach(t, l.server2, "tcp", clientIP+":7000", "outside"); src != "203.0.113.44" {
		t.Errorf("server2 with a /24 rule seen as %s", src)
	}
	// The host rule is more specific than the network rule.
	if src := expectReach(t, l.server, "tcp", clientIP+":7000", "outside"); src != extIP {
		t.Errorf("server with both rules seen as %s", src)
	}
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "snat") || !strings.Contains(ls, "out ext0") {
		t.Errorf("ls:\n%s", ls)
	}

	l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP, "--delete")
	if src := expectReach(t, l.server, "tcp", clientIP+":7000", "outside"); src != "203.0.113.44" {
		t.Errorf("after deleting the host rule the client saw %s", src)
	}
	_, errOut, code := l.cli("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP, "--delete")
	if code != 1 || !strings.Contains(errOut, "no snat") {
		t.Errorf("deleting a missing snat: exit %d %s", code, errOut)
	}
	l.mustCLI("clear")
	if src := expectReach(t, l.server, "tcp", clientIP+":7000", "outside"); src != serverIP {
		t.Errorf("after clear the client saw %s", src)
	}
}

func TestIntegrationHairpin(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25", serverIP+":587")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587")

	// Without hairpin the reply bypasses the router and the second
	// internal host's connection fails.
	expectNoReach(t, l.server2, "tcp", extIP+":25")

	l.mustCLI("hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587")
	for _, port := range []string{"25", "587"} {
		if src := expectReach(t, l.server2, "tcp", extIP+":"+port, "mail"); src != "10.0.0.1" {
			t.Errorf("server2 via hairpin seen as %s, want the router's 10.0.0.1", src)
		}
		expectReach(t, l.server, "tcp", extIP+":"+port, "mail") // the server itself
		expectReach(t, l.router, "tcp", extIP+":"+port, "mail") // the router itself
		if src := expectReach(t, l.client, "tcp", extIP+":"+port, "mail"); src != clientIP {
			t.Errorf("outside client seen as %s, want its real %s", src, clientIP)
		}
	}
	var list nat.ListResponse
	if err := json.Unmarshal([]byte(l.mustCLI("--json", "ls")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Hairpins) != 1 || list.Hairpins[0].LanCIDR == nil || *list.Hairpins[0].LanCIDR != "10.0.0.0/24" {
		t.Fatalf("hairpins: %+v", list.Hairpins)
	}

	// Deleting the dnat keeps the hairpin working, and the ports reserved.
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587", "--delete")
	expectReach(t, l.server2, "tcp", extIP+":25", "mail")
	if bindable(l, extIP+":25") {
		t.Error("port 25 was released while the hairpin still uses it")
	}
	// Deleting the last user releases the port.
	l.mustCLI("hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587", "--delete")
	expectNoReach(t, l.server2, "tcp", extIP+":25")
	if !bindable(l, extIP+":25") {
		t.Error("port 25 still reserved after its last rule went")
	}

	// A hairpin alone also serves the router itself (output path).
	l.mustCLI("hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "587", "--lan-cidr", "10.0.0.0/24")
	expectReach(t, l.router, "tcp", extIP+":587", "mail")
	expectReach(t, l.server2, "tcp", extIP+":587", "mail")
}

var counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)

func noCounters(s string) string { return counters.ReplaceAllString(s, "counter") }

func bindable(l *lab, addr string) bool {
	network := "tcp6" // of the address's own family: Go's "tcp" on 0.0.0.0 binds [::] too
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is4() {
		network = "tcp4"
	}
	err := l.router.Do(func() error {
		ln, err := net.Listen(network, addr)
		if err == nil {
			ln.Close()
		}
		return err
	})
	return err == nil
}

func TestIntegrationSaveAndReload(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "web", serverIP+":80")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8080:80")
	l.mustCLI("hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8080:80")
	l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP)
	if out := l.mustCLI("save"); !strings.Contains(out, l.saved) {
		t.Fatalf("save said %q", out)
	}
	other := filepath.Join(t.TempDir(), "other.nft")
	l.mustCLI("save", "--output", other)
	a, _ := os.ReadFile(l.saved)
	b, _ := os.ReadFile(other)
	if len(a) == 0 || string(a) != string(b) {
		t.Fatalf("save and save --output differ:\n%s\n%s", a, b)
	}
	// The host reloads the file without the daemon.
	l.stopDaemon()
	want := l.kernelRules()
	l.dropNAT()
	expectNoReach(t, l.client, "tcp", extIP+":8080")
	l.loadSaved()
	expectReach(t, l.client, "tcp", extIP+":8080", "web")
	expectReach(t, l.server2, "tcp", extIP+":8080", "web")
	if got := noCounters(l.kernelRules()); got != noCounters(want) {
		t.Errorf("reloaded table differs:\n%s\nwant\n%s", got, want)
	}
}

func TestIntegrationPolicyRoute(t *testing.T) {
	l := newLab(t)
	// gw is the server's ordinary default gateway; it does not forward, so
	// replies sent its way are lost.
	gw := netnstest.New(t, "nmg")
	netnstest.Link(t, gw, "g0", "10.0.0.254/24", l.lan, "p3", "")
	l.lan.MustRun(t, "ip", "link", "set", "p3", "master", "br0")
	gw.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	l.server.MustRun(t, "ip", "route", "replace", "default", "via", "10.0.0.254")

	serve(t, l.server, "svc", serverIP+":8080")
	serve(t, l.server2, "lan", server2IP+":9")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8080")
	expectNoReach(t, l.client, "tcp", extIP+":8080")

	// The service host runs its own daemon.
	svc := &lab{t: t, dir: t.TempDir(), router: l.server}
	svc.socket, svc.state, svc.saved = filepath.Join(svc.dir, "s.sock"), filepath.Join(svc.dir, "s.json"), filepath.Join(svc.dir, "s.nft")
	t.Cleanup(svc.stopDaemon)
	svc.startDaemon()
	before := routing(t, l.server)

	svc.mustCLI("policy-route", "--src-ip", serverIP, "--via", "10.0.0.1", "--table", "100")
	if out := svc.mustCLI("policy-route", "--src-ip", serverIP, "--via", "10.0.0.1", "--table", "100"); !strings.Contains(out, "already present") {
		t.Errorf("second add: %s", out)
	}
	if src := expectReach(t, l.client, "tcp", extIP+":8080", "svc"); src != clientIP {
		t.Errorf("with the policy route the service saw %s, want %s", src, clientIP)
	}
	table := l.server.MustRun(t, "ip", "route", "show", "table", "100")
	if !strings.Contains(table, "default via 10.0.0.1") || !strings.Contains(table, "10.0.0.0/24 dev s0") {
		t.Errorf("table 100:\n%s", table)
	}
	// The LAN is still reached directly, not through the gateway.
	if route := l.server.MustRun(t, "ip", "route", "get", server2IP, "from", serverIP); strings.Contains(route, " via ") {
		t.Errorf("traffic from the service to the LAN goes through a gateway: %s", route)
	}
	if src := expectReach(t, l.server, "tcp", server2IP+":9", "lan"); src != serverIP {
		t.Errorf("server2 saw %s", src)
	}
	// Persisted: a restart keeps it.
	svc.stopDaemon()
	svc.startDaemon()
	if ls := svc.mustCLI("ls"); !strings.Contains(ls, "via 10.0.0.1 table 100") || !strings.Contains(ls, "active") {
		t.Errorf("ls after restart:\n%s", ls)
	}
	expectReach(t, l.client, "tcp", extIP+":8080", "svc")

	svc.mustCLI("policy-route", "--src-ip", serverIP, "--via", "10.0.0.1", "--table", "100", "--delete")
	if after := routing(t, l.server); after != before {
		t.Errorf("routing after --delete:\n%s\nwant\n%s", after, before)
	}
	expectNoReach(t, l.client, "tcp", extIP+":8080")
}

// routing is the namespace's whole routing state.
func routing(t *testing.T, ns *netnstest.NS) string {
	return ns.MustRun(t, "ip", "rule") + ns.MustRun(t, "ip", "route", "show", "table", "all") +
		ns.MustRun(t, "ip", "-6", "rule")
}

func TestIntegrationRuleBadInput(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,465")
	before := l.kernelRules()
	state := l.stored(t)
	rules := routing(t, l.router)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"snat", "--int-ip", "10.0.0.1/24", "--ext-if", "ext0", "--ext-ip", extIP}, "host bits set"},
		{[]string{"snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", "2001:db8::1"}, "different IP versions"},
		{[]string{"hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--proto", "udp"}, "forwards port 25 over tcp, not udp"},
		{[]string{"hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--lan-cidr", "fd00::/64"}, "--lan-cidr"},
		{[]string{"policy-route", "--src-ip", serverIP, "--via", "192.0.2.1", "--table", "100"}, "not on any directly connected network"},
		{[]string{"policy-route", "--src-ip", serverIP, "--via", "10.0.0.2", "--table", "0"}, "table: 0 is not a routing table"},
		{[]string{"policy-route", "--src-ip", serverIP, "--via", "10.0.0.2", "--table", "253"}, "table: 253 is reserved"},
		{[]string{"policy-route", "--src-ip", serverIP, "--via", "10.0.0.2", "--table", "254"}, "table: 254 is reserved"},
		{[]string{"policy-route", "--src-ip", serverIP, "--via", "10.0.0.2", "--table", "255"}, "table: 255 is reserved"},
	} {
		if out, errOut, code := l.cli(c.args...); code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q %q, want exit 1 saying %q", c.args, code, out, errOut, c.want)
		}
	}
	// A flag the command needs is the command line's fault: exit 2.
	if _, errOut, code := l.cli("snat", "--int-ip", serverIP, "--ext-ip", extIP); code != 2 || !strings.Contains(errOut, "--ext-if") {
		t.Errorf("snat without --ext-if: exit %d %q, want exit 2 naming --ext-if", code, errOut)
	}
	for path, body := range map[string]string{
		"/snat":         `{"int_ip":"10.0.0.101","ext_ip":"203.0.113.43"}`,
		"/hairpin":      `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25","proto":"udp"}`,
		"/policy-route": `{"src_ip":"10.0.0.101","via":"10.0.0.2","table":255}`,
	} {
		if code, reply := l.api("POST", path, body); code != 400 {
			t.Errorf("POST %s: %d %s, want 400", path, code, reply)
		}
	}
	if after := l.kernelRules(); after != before {
		t.Errorf("the table changed:\n%s", after)
	}
	if after := l.stored(t); after != state {
		t.Errorf("the state changed:\n%s", after)
	}
	if after := routing(t, l.router); after != rules {
		t.Errorf("routing changed:\n%s", after)
	}
}

// TestIntegrationMailServerExample runs the spec's mail-server script
// verbatim, twice, with the router's external interface named vmbr0 as
// there.
func TestIntegrationMailServerExample(t *testing.T) {
	l := newLabWith(t, "vmbr0")
	ports := []string{"25", "465", "587", "143", "993", "110", "995", "4190"}
	for _, p := range ports {
		serve(t, l.server, "mail", serverIP+":"+p)
	}
	serve(t, l.client, "outside", clientIP+":7000")
	l.startDaemon()
	script := `#!/bin/bash
INT_IP="10.0.0.101"
EXT_IP="203.0.113.43"
EXT_IF="vmbr0"
PORTS="25,465,587,143,993,110,995,4190"
# Enable forwarding
lab-ops natmap fwd
# Clear any previous rules (same effect as individual --delete)
# Apply new rules
lab-ops natmap dnat --ext-ip $EXT_IP --int-ip $INT_IP --ports $PORTS
lab-ops natmap snat --int-ip $INT_IP --ext-if $EXT_IF --ext-ip $EXT_IP
lab-ops natmap hairpin --ext-ip $EXT_IP --int-ip $INT_IP --ports $PORTS
lab-ops natmap save
echo "Mail NAT applied: $EXT_IP -> $INT_IP"
`
	// Under set -e, twice: a second run finds everything in place.
	runScript(t, l, script)
	if out := runScript(t, l, script); !strings.Contains(out, "already present, nothing changed") {
		t.Errorf("the second run:\n%s", out)
	}
	for _, p := range ports {
		if src := expectReach(t, l.client, "tcp", extIP+":"+p, "mail"); src != clientIP {
			t.Errorf("port %s from outside: the server saw %s", p, src)
		}
		expectReach(t, l.server2, "tcp", extIP+":"+p, "mail")
		expectReach(t, l.server, "tcp", extIP+":"+p, "mail")
	}
	if src := expectReach(t, l.server, "tcp", clientIP+":7000", "outside"); src != extIP {
		t.Errorf("the mail server's outgoing connection came from %s", src)
	}
	if b, err := os.ReadFile(l.saved); err != nil || !strings.Contains(string(b), "natmap") {
		t.Errorf("save wrote %q (%v)", b, err)
	}
}

// runScript runs a shell script with lab-ops on PATH and the lab's socket
// in NATMAP_SOCKET, so that the script's commands are the spec's, verbatim,
// as a member of the socket's group who is not root: the spec promises
// that a member uses natmap without sudo.
func runScript(t *testing.T, l *lab, script string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(binary, filepath.Join(dir, "lab-ops")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "script.sh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	letMemberIn(l, dir)
	cmd := exec.Command("bash", "-e", path)
	cmd.SysProcAttr = memberCredential()
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "NATMAP_SOCKET="+l.socket, "HOME=/")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v\n%s\ndaemon log:\n%s", err, out, l.daemonLog)
	}
	return string(out)
}

// TestIntegrationTailscaleExample runs the spec's "Web Server with Game
// Server on a Tailscale Exit Node" commands verbatim, twice: an exit node whose
// tailnet side is an interface named tailscale0.
func TestIntegrationTailscaleExample(t *testing.T) {
	netnstest.RequirePrivileges(t, "nft")
	peer := netnstest.New(t, "nmt")  // a tailnet peer
	node := netnstest.New(t, "nmx")  // the exit node running natmap
	hosts := netnstest.New(t, "nmh") // web and game servers
	netnstest.Link(t, peer, "t0", "100.64.0.2/24", node, "tailscale0", "100.64.0.10/24")
	netnstest.Link(t, node, "lan0", "10.0.1.1/24", hosts, "h0", "10.0.1.20/24")
	hosts.AddAddr(t, "h0", "10.0.1.30/24")
	hosts.MustRun(t, "ip", "route", "add", "default", "via", "10.0.1.1")
	peer.MustRun(t, "ip", "route", "add", "10.0.1.0/24", "via", "100.64.0.10")
	node.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	serve(t, hosts, "web", "10.0.1.20:80", "10.0.1.20:443")
	serve(t, hosts, "game", "10.0.1.30:25565")
	serve(t, peer, "peer", "100.64.0.2:7000")

	l := &lab{t: t, dir: t.TempDir(), router: node}
	l.socket, l.state, l.saved = filepath.Join(l.dir, "n.sock"), filepath.Join(l.dir, "n.json"), filepath.Join(l.dir, "n.nft")
	t.Cleanup(l.stopDaemon)
	l.startDaemon()
	script := `# Forward web traffic
lab-ops natmap dnat \
--ext-ip 100.64.0.10 \
--int-ip 10.0.1.20 \
--ports 80,443
# Forward game server (single port, no interface restriction)
lab-ops natmap dnat \
--ext-ip 100.64.0.10 \
--int-ip 10.0.1.30 \
--ports 25565 \
--proto tcp
# SNAT for outbound traffic
lab-ops natmap snat \
--int-ip 10.0.1.0/24 \
--ext-if tailscale0 \
--ext-ip 100.64.0.10
`
	// Under set -e, twice: a second run finds everything in place.
	runScript(t, l, script)
	if out := runScript(t, l, script); strings.Count(out, "already present, nothing changed") != 3 {
		t.Errorf("the second run:\n%s", out)
	}
	for addr, want := range map[string]string{"100.64.0.10:80": "web", "100.64.0.10:443": "web", "100.64.0.10:25565": "game"} {
		if src := expectReach(t, peer, "tcp", addr, want); src != "100.64.0.2" {
			t.Errorf("%s: the server saw %s", addr, src)
		}
	}
	for _, from := range []string{"10.0.1.20", "10.0.1.30"} {
		var got string
		err := hosts.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			c, err := d.Dial("tcp", "100.64.0.2:7000")
			if err != nil {
				return err
			}
			defer c.Close()
			b := make([]byte, 100)
			n, _ := c.Read(b)
			got = string(b[:n])
			return nil
		})
		if err != nil || !strings.Contains(got, "peer 100.64.0.10:") {
			t.Errorf("outbound from %s: %q %v", from, got, err)
		}
	}
}
