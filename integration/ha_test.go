package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/nat"
)

// The pair of docs/ha.md, in namespaces: the files there are used as
// written, only their paths moved into the test's directory (the routers
// share one file system here).
//
//	client 203.0.113.100 --[wan switch]-- eth0 router A 203.0.113.2 --eth2 (sync)-- router B 203.0.113.3 eth0
//	                                      eth1 10.0.0.2 --[lan switch]-- 10.0.0.3 eth1
//	                                                          |
//	                                      server 10.0.0.5, 10.0.0.6 (gateway 10.0.0.1)
//
// keepalived moves 203.0.113.10 (wan) and 10.0.0.1 (lan) together;
// conntrackd (FTFW) syncs the flows over eth2. Each router runs natmap
// with docs/ha/natmap.yaml, and a Docker-like filter (FORWARD policy
// DROP, a DOCKER-USER chain) that lets in from outside only what carries
// natmap's connection mark.
const (
	haVIP    = "203.0.113.10"
	haClient = "203.0.113.100"
	haServer = "10.0.0.5"
	haOther  = "10.0.0.6" // a second LAN host (the server's second address)
)

type haRouter struct {
	name         string // "a" or "b"
	ns           *netnstest.NS
	natmap       *lab
	dir          string
	wanIP, lanIP string
	vrrp, sync   *exec.Cmd
	vrrpDone     chan struct{} // closed when keepalived has exited
	syncDone     chan struct{}
	log          *syncBuffer // keepalived's and conntrackd's output
}

type haPair struct {
	t              *testing.T
	client, server *netnstest.NS
	a, b           *haRouter
}

// TestIntegrationHAPair: two routers with one public address, natmap
// ready on both. An established TCP connection through a forward, a UDP
// flow through a forward and an SNATed TCP connection keep exchanging
// data, with no reset, through a crash of the active router's keepalived,
// the failback, the loss of its WAN link and the failback again; new
// connections work after each takeover; the standby holds its forwards
// installed and their ports reserved, is listed as standby without a
// warning, and repairs its rules. A masquerading SNAT leaves with the
// active router's own address, as docs/ha.md says. Router B commits the
// synced flows a second late on purpose: docs/ha/guard.nft must keep
// their first packets from being answered with a reset.
func TestIntegrationHAPair(t *testing.T) {
	if testBackend() == "iptables-legacy" {
		t.Skip("the pair runs in the nftables and iptables-nft passes (iptables-legacy writes the same rules with another tool)")
	}
	netnstest.RequirePrivileges(t, "nft", "iptables", "keepalived", "conntrackd", "conntrack", "logger")
	p := newHAPair(t)
	p.startAll()
	p.waitActive(p.a, 20*time.Second)

	t.Run("standby", func(t *testing.T) { p.checkStandby(t, p.b) })
	logged := map[*haRouter]int{p.a: len(p.a.natmap.daemonLog.String()), p.b: len(p.b.natmap.daemonLog.String())}

	flows := []*haFlow{
		p.startFlow("tcp through the forward", p.client, "tcp", haVIP+":25", haClient),
		p.startFlow("udp through the forward", p.client, "udp", haVIP+":27015", haClient),
		p.startFlow("tcp out through the SNAT", p.server, "tcp", haClient+":80", haVIP),
	}
	p.checkNew(t, p.a)
	fresh := p.startProbe()
	// The standby has the flows, natmap's connection mark with them.
	port := flows[0].conn.LocalAddr().(*net.TCPAddr).Port
	synced := fmt.Sprintf("src=%s dst=%s sport=%d dport=25 ", haClient, haVIP, port)
	if !waitFor(10*time.Second, func() bool {
		for _, line := range strings.Split(p.b.syncCache(t), "\n") {
			if strings.Contains(line, synced) && strings.Contains(line, fmt.Sprintf("mark=%d", nat.MarkForwarded)) {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("router B's conntrackd has no copy of the flow %s with natmap's mark:\n%s", synced, p.b.syncCache(t))
	}

	type event struct {
		name   string
		do     func()
		active *haRouter
	}
	events := []event{
		{"router A's keepalived killed (SIGKILL)", func() { p.a.killVRRP(t) }, p.b},
		{"failback: A's keepalived back", func() { p.a.startVRRP(t) }, p.a},
		{"router A's WAN link down", func() { p.a.ns.MustRun(t, "ip", "link", "set", "eth0", "down") }, p.b},
		{"failback: A's WAN link up", func() { p.a.ns.MustRun(t, "ip", "link", "set", "eth0", "up") }, p.a},
	}
	var report []string
	for _, e := range events {
		// conntrackd's PurgeTimeout (5 s) lets the router that handed
		// over forget its copies of the flows before the next hand-over.
		time.Sleep(7 * time.Second)
		at := time.Now()
		e.do()
		p.waitActive(e.active, 30*time.Second)
		took := time.Since(at)
		time.Sleep(3 * time.Second) // the flows run on the new router
		newGap := fresh.gap(at.Add(-time.Second), time.Now())
		line := fmt.Sprintf("%s: router %s active after %v; new connections: gap %v", e.name, strings.ToUpper(e.active.name),
			took.Round(time.Millisecond), newGap.Round(time.Millisecond))
		// New connections work again once the address moved: the probe
		// tries every 50 ms and waits 500 ms for an answer, and the
		// takeover is seen only by polling, hence the second.
		if newGap > took+time.Second {
			t.Errorf("%s: new connections failed for %v, the takeover took %v", e.name, newGap, took)
		}
		for _, f := range flows {
			line += fmt.Sprintf("; %s: gap %v", f.name, f.gap(at.Add(-time.Second), time.Now()).Round(time.Millisecond))
		}
		t.Log(line)
		report = append(report, line)
		p.checkNew(t, e.active)
	}
	lost, end := 0, time.Now()
	for _, f := range flows {
		sent, echoed, err := f.stop()
		t.Logf("%s: %d sent, %d echoed, error: %v", f.name, sent, echoed, err)
		switch {
		case err != nil:
			lost++
			t.Errorf("%s broke: %v", f.name, err)
		case f.proto == "tcp" && echoed != sent:
			t.Errorf("%s: %d of %d lines echoed", f.name, echoed, sent)
		case f.gap(end.Add(-2*time.Second), end) > time.Second:
			t.Errorf("%s: no echo in the last second", f.name) // UDP: datagrams in a takeover are lost
		}
		if srcs := f.sources(); len(srcs) != 1 {
			t.Errorf("%s: the far end saw the flow from %v, want one address (the mapping kept)", f.name, srcs)
		}
	}
	t.Logf("failovers and failbacks:\n%s\nestablished connections lost: %d of %d", strings.Join(report, "\n"), lost, len(flows))

	// Neither natmap warned of anything through the hand-overs.
	for _, r := range []*haRouter{p.a, p.b} {
		for _, line := range strings.Split(r.natmap.daemonLog.String()[logged[r]:], "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				t.Errorf("router %s's natmap: %s", r.name, line)
			}
		}
	}
}

func newHAPair(t *testing.T) *haPair {
	t.Helper()
	p := &haPair{t: t}
	wan, lan := netnstest.New(t, "nmhw"), netnstest.New(t, "nmhl")
	for _, sw := range []*netnstest.NS{wan, lan} {
		sw.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
		sw.MustRun(t, "ip", "link", "set", "br0", "up")
	}
	p.client, p.server = netnstest.New(t, "nmhc"), netnstest.New(t, "nmhs")
	port := func(sw *netnstest.NS, ns *netnstest.NS, name, addr, swPort string) {
		netnstest.Link(t, ns, name, addr, sw, swPort, "")
		sw.MustRun(t, "ip", "link", "set", swPort, "master", "br0")
	}
	port(wan, p.client, "c0", haClient+"/24", "p0")
	port(lan, p.server, "s0", haServer+"/24", "q0")
	p.server.AddAddr(t, "s0", haOther+"/24")
	p.server.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1")

	p.a = &haRouter{name: "a", ns: netnstest.New(t, "nmha"), wanIP: "203.0.113.2", lanIP: "10.0.0.2"}
	p.b = &haRouter{name: "b", ns: netnstest.New(t, "nmhb"), wanIP: "203.0.113.3", lanIP: "10.0.0.3"}
	for _, r := range []*haRouter{p.a, p.b} {
		port(wan, r.ns, "eth0", r.wanIP+"/24", "p"+r.name)
		port(lan, r.ns, "eth1", r.lanIP+"/24", "q"+r.name)
	}
	netnstest.Link(t, p.a.ns, "eth2", "192.168.100.1/30", p.b.ns, "eth2", "192.168.100.2/30")
	for _, r := range []*haRouter{p.a, p.b} {
		// A Docker-like filter: nothing is forwarded from outside unless
		// it carries natmap's connection mark. (natmap puts this rule in
		// DOCKER-USER itself once Docker answers; no Docker runs here.)
		for _, rule := range [][]string{
			{"-N", "DOCKER-USER"},
			{"-A", "DOCKER-USER", "-m", "connmark", "--mark", "0x1000000/0x1000000", "-j", "ACCEPT"},
			{"-P", "FORWARD", "DROP"},
			{"-A", "FORWARD", "-j", "DOCKER-USER"},
			{"-A", "FORWARD", "-i", "eth1", "-o", "eth0", "-j", "ACCEPT"},
			{"-A", "FORWARD", "-o", "eth1", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "--ctorigsrc", "10.0.0.0/24", "-j", "ACCEPT"},
		} {
			r.ns.MustRun(t, "iptables", rule...)
		}
		r.ns.MustRun(t, "nft", "-f", filepath.Join("..", "docs", "ha", "guard.nft"))
		r.dir = t.TempDir()
		r.log = &syncBuffer{}
		r.natmap = &lab{t: t, dir: r.dir, router: r.ns, socket: filepath.Join(r.dir, "natmap.sock"),
			state: filepath.Join(r.dir, "state.json"), saved: filepath.Join(r.dir, "saved")}
		t.Cleanup(r.natmap.stopDaemon)
		r.writeFiles(t)
	}
	serveLines(t, p.server, haServer+":25", haServer+":27015")
	serveLines(t, p.client, haClient+":80")
	return p
}

// writeFiles copies docs/ha's files for the router, with their paths in
// the router's directory (and router B's takeover slowed down).
func (r *haRouter) writeFiles(t *testing.T) {
	t.Helper()
	paths := strings.NewReplacer(
		"/etc/conntrackd/primary-backup.sh", filepath.Join(r.dir, "primary-backup.sh"),
		"/etc/conntrackd/conntrackd.conf", filepath.Join(r.dir, "conntrackd.conf"),
		"/var/lock/conntrack.lock", filepath.Join(r.dir, "conntrackd.lock"),
		"/var/run/conntrackd.ctl", filepath.Join(r.dir, "conntrackd.ctl"),
		"LogFile on", "LogFile "+filepath.Join(r.dir, "conntrackd.log"),
	)
	for _, f := range []struct{ from, to string }{
		{"keepalived-" + r.name + ".conf", "keepalived.conf"},
		{"conntrackd-" + r.name + ".conf", "conntrackd.conf"},
		{"primary-backup.sh", "primary-backup.sh"},
	} {
		b, err := os.ReadFile(filepath.Join("..", "docs", "ha", f.from))
		if err != nil {
			t.Fatal(err)
		}
		if r.name == "b" && f.to == "primary-backup.sh" {
			// Router B commits the synced flows a second late, as a
			// loaded machine might: packets of flows it does not know
			// yet arrive first (docs/ha/guard.nft keeps them from
			// being answered with a reset).
			if !strings.Contains(string(b), "\nprimary)\n") {
				t.Fatalf("docs/ha/%s has no primary) case to slow down", f.from)
			}
			b = []byte(strings.Replace(string(b), "\nprimary)\n", "\nprimary)\n    sleep 1\n", 1))
		}
		mode := os.FileMode(0o644) // keepalived reads no executable configuration
		if strings.HasSuffix(f.to, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(r.dir, f.to), []byte(paths.Replace(string(b))), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// startAll starts, on each router, natmap with the pair's configuration
// (forwarding on), then conntrackd, then keepalived, as docs/ha.md does.
func (p *haPair) startAll() {
	t := p.t
	t.Helper()
	for _, r := range []*haRouter{p.a, p.b} {
		r.natmap.startDaemon()
		r.ns.MustRun(t, "sysctl", "-q", "-p", filepath.Join("..", "docs", "ha", "sysctl.conf"))
		r.natmap.mustCLI("fwd", "--no-ipv6")
		r.natmap.mustCLI("apply", "-f", filepath.Join("..", "docs", "ha", "natmap.yaml"))
		// A masquerading SNAT of one LAN host, to show its address.
		r.natmap.mustCLI("snat", "--int-ip", haOther, "--ext-if", "eth0")
	}
	for _, r := range []*haRouter{p.a, p.b} {
		r.sync = r.ns.Cmd("conntrackd", "-C", filepath.Join(r.dir, "conntrackd.conf"))
		r.syncDone = startLogged(t, r.sync, r.log)
		t.Cleanup(func() { stopCmd(r.sync, r.syncDone) })
	}
	for _, r := range []*haRouter{p.a, p.b} {
		r.startVRRP(t)
	}
}

// startVRRP runs the router's keepalived in the foreground, in a process
// group of its own (killVRRP kills all of it at once, as a crash would).
func (r *haRouter) startVRRP(t *testing.T) {
	t.Helper()
	r.vrrp = r.ns.Cmd("keepalived", "--dont-fork", "--log-console", "--log-detail",
		"-f", filepath.Join(r.dir, "keepalived.conf"),
		"--pid", filepath.Join(r.dir, "keepalived.pid"), "--vrrp_pid", filepath.Join(r.dir, "vrrp.pid"))
	r.vrrp.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r.vrrpDone = startLogged(t, r.vrrp, r.log)
	cmd, done := r.vrrp, r.vrrpDone
	t.Cleanup(func() { stopCmd(cmd, done) })
}

// syncCache is what the router's conntrackd holds of the other router's
// flows (its external cache).
func (r *haRouter) syncCache(t *testing.T) string {
	t.Helper()
	return r.ns.MustRun(t, "conntrackd", "-C", filepath.Join(r.dir, "conntrackd.conf"), "-e")
}

// running reports whether the router's keepalived runs.
func (r *haRouter) running() bool {
	select {
	case <-r.vrrpDone:
		return false
	default:
		return true
	}
}

// killVRRP kills every keepalived process of the router with SIGKILL:
// nothing gives the addresses up, the other router takes over when the
// advertisements stop.
func (r *haRouter) killVRRP(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(-r.vrrp.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-r.vrrpDone
}

// startLogged starts cmd with its output in log; the channel is closed
// when it has exited.
func startLogged(t *testing.T, cmd *exec.Cmd, log *syncBuffer) chan struct{} {
	t.Helper()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	return done
}

func stopCmd(cmd *exec.Cmd, done chan struct{}) {
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// has reports whether the router holds the shared public address.
func (r *haRouter) has() bool {
	out, err := r.ns.Run("ip", "-br", "addr", "show", "eth0")
	return err == nil && strings.Contains(out, haVIP+"/")
}

// waitActive waits until r holds both shared addresses, and the other
// router, if its keepalived runs, neither. (A keepalived killed gives
// nothing up: its router keeps a stale copy until it runs again.)
func (p *haPair) waitActive(r *haRouter, within time.Duration) {
	p.t.Helper()
	other := p.a
	if r == p.a {
		other = p.b
	}
	if !waitFor(within, func() bool {
		lan, err := r.ns.Run("ip", "-br", "addr", "show", "eth1")
		return r.has() && err == nil && strings.Contains(lan, "10.0.0.1/") && (!other.running() || !other.has())
	}) {
		p.t.Fatalf("router %s did not become the only active one within %v:\nA:\n%s\nB:\n%s", r.name, within, p.a.log, p.b.log)
	}
}

// checkStandby: on the router without the address, natmap holds the
// forwards installed and their ports reserved, lists them as standby,
// and repairs its rules when they are removed.
func (p *haPair) checkStandby(t *testing.T, r *haRouter) {
	var l nat.ListResponse
	if err := json.Unmarshal([]byte(r.natmap.mustCLI("--json", "ls")), &l); err != nil {
		t.Fatal(err)
	}
	for _, d := range l.Dnats {
		if d.ExtIP == haVIP && (!d.Standby || d.Status != "active") {
			t.Errorf("standby router's dnat %s:%s: status %s, standby %v", d.ExtIP, d.Ports, d.Status, d.Standby)
		}
	}
	if table := r.natmap.mustCLI("ls"); !strings.Contains(table, "standby") {
		t.Errorf("ls on the standby router says nothing of standby:\n%s", table)
	}
	if status := r.natmap.mustCLI("status"); !strings.Contains(status, "standby: 4 of these rules") {
		t.Errorf("status on the standby router:\n%s", status)
	}
	// The shared address's forwarded ports are taken on the standby too.
	for _, proto := range []string{"tcp", "udp"} {
		port := map[string]string{"tcp": "25", "udp": "27015"}[proto]
		err := r.ns.Do(func() error {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1) })
				return serr
			}}
			if proto == "tcp" {
				ln, err := lc.Listen(t.Context(), "tcp", haVIP+":"+port)
				if err == nil {
					ln.Close()
				}
				return err
			}
			pc, err := lc.ListenPacket(t.Context(), "udp", haVIP+":"+port)
			if err == nil {
				pc.Close()
			}
			return err
		})
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("binding %s %s:%s on the standby router: %v, want the port in use (natmap's reservation)", proto, haVIP, port, err)
		}
	}
	// Self-healing is the same on the standby. (Only natmap's rules go:
	// the router's own filter stays.)
	before := r.natmap.kernelRules()
	if b := testBackend(); b != "nftables" {
		r.ns.MustRun(t, "iptables"+strings.TrimPrefix(b, "iptables"), "-t", "nat", "-F", "NATMAP-PRE")
	} else {
		r.ns.MustRun(t, "nft", "delete", "table", "inet", "natmap")
	}
	if !waitFor(15*time.Second, func() bool {
		return r.natmap.kernelRules() == before && strings.Contains(r.natmap.daemonLog.String(), "restored them")
	}) {
		t.Errorf("the standby router's rules were not repaired:\n%s", r.natmap.kernelRules())
	}
}

// checkNew: new connections reach the server through the active router,
// from outside with the client's address, from the LAN by the public
// address (the hairpin: the server sees the active router's LAN address),
// and out through the masquerade with the active router's own address.
func (p *haPair) checkNew(t *testing.T, active *haRouter) {
	t.Helper()
	if got, err := exchange(p.client, "tcp", "", haVIP+":25"); err != nil || !strings.HasPrefix(got, haClient+":") {
		t.Errorf("a new connection to %s:25 through router %s: %q %v", haVIP, active.name, got, err)
	}
	if got, err := exchange(p.server, "tcp", haOther, haVIP+":25"); err != nil || !strings.HasPrefix(got, active.lanIP+":") {
		t.Errorf("a new hairpin connection through router %s: %q %v, want from %s", active.name, got, err, active.lanIP)
	}
	if got, err := exchange(p.server, "tcp", haOther, haClient+":80"); err != nil || !strings.HasPrefix(got, active.wanIP+":") {
		t.Errorf("a new masqueraded connection through router %s: %q %v, want from its own address %s", active.name, got, err, active.wanIP)
	}
	if got, err := exchange(p.server, "tcp", haServer, haClient+":80"); err != nil || !strings.HasPrefix(got, haVIP+":") {
		t.Errorf("a new SNATed connection through router %s: %q %v, want from %s", active.name, got, err, haVIP)
	}
}

// startProbe opens a new connection through the forward every 50 ms
// (each given 500 ms) until the test ends; its echoes are the times one
// was answered.
func (p *haPair) startProbe() *haFlow {
	f := &haFlow{name: "new connections", quit: make(chan struct{})}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			select {
			case <-f.quit:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if got, err := exchangeWithin(p.client, "tcp", "", haVIP+":25", 500*time.Millisecond); err == nil && strings.HasPrefix(got, haClient+":") {
				f.mu.Lock()
				f.echoes = append(f.echoes, time.Now())
				f.mu.Unlock()
			}
		}
	}()
	p.t.Cleanup(func() {
		close(f.quit)
		f.wg.Wait()
	})
	return f
}

// serveLines answers every line (TCP) or datagram (UDP) on each address
// with "SOURCE LINE", SOURCE being the peer as the server sees it.
func serveLines(t *testing.T, ns *netnstest.NS, addrs ...string) {
	t.Helper()
	listen(t, ns, addrs, func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line)
				}
			}()
		}
	}, func(pc net.PacketConn) {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s %s", from, buf[:n])), from)
		}
	})
}

// exchange sends one line from ns (from the local address from, if set)
// to addr and returns the answer.
func exchange(ns *netnstest.NS, proto, from, addr string) (string, error) {
	return exchangeWithin(ns, proto, from, addr, 2*time.Second)
}

func exchangeWithin(ns *netnstest.NS, proto, from, addr string, timeout time.Duration) (string, error) {
	var conn net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if from != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
		}
		var err error
		conn, err = d.Dial(proto, addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(conn, "hello"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// haFlow is one long-lived connection (TCP) or socket (UDP) sending a
// numbered line every 20 ms and reading the echoes.
type haFlow struct {
	name, proto string
	conn        net.Conn
	mu          sync.Mutex
	sent        int
	echoes      []time.Time
	srcs        map[string]bool // the flow's source as the far end saw it
	err         error
	quitWrite   chan struct{} // the writer stops
	quit        chan struct{} // the reader stops
	once        sync.Once
	wg          sync.WaitGroup
}

// startFlow opens the flow from ns to addr; the far end must see it from
// wantFrom (an address).
func (p *haPair) startFlow(name string, ns *netnstest.NS, proto, addr, wantFrom string) *haFlow {
	t := p.t
	t.Helper()
	f := &haFlow{name: name, proto: proto, srcs: map[string]bool{}, quitWrite: make(chan struct{}), quit: make(chan struct{})}
	err := ns.Do(func() error {
		var err error
		f.conn, err = net.DialTimeout(proto, addr, 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() { f.stop() })
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		for i := 1; ; i++ {
			select {
			case <-f.quitWrite:
				return
			case <-time.After(20 * time.Millisecond):
			}
			f.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := fmt.Fprintf(f.conn, "%d\n", i); err != nil {
				f.fail(err)
				return
			}
			f.mu.Lock()
			f.sent++
			f.mu.Unlock()
		}
	}()
	go func() {
		defer f.wg.Done()
		r := bufio.NewReader(f.conn)
		for {
			f.conn.SetReadDeadline(time.Now().Add(time.Second))
			line, err := r.ReadString('\n')
			select {
			case <-f.quit:
				return
			default:
			}
			var timeout net.Error
			if errors.As(err, &timeout) && timeout.Timeout() {
				continue
			}
			if err != nil {
				f.fail(err)
				return
			}
			src, _, _ := strings.Cut(line, " ")
			host, _, _ := net.SplitHostPort(src)
			f.mu.Lock()
			f.echoes = append(f.echoes, time.Now())
			f.srcs[src] = true
			f.mu.Unlock()
			if host != wantFrom {
				f.fail(fmt.Errorf("the far end saw the flow from %s, want %s", src, wantFrom))
				return
			}
		}
	}()
	if !waitFor(5*time.Second, func() bool { return len(f.times()) > 5 }) {
		t.Fatalf("%s: no echo", name)
	}
	return f
}

func (f *haFlow) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *haFlow) times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.echoes)
}

// gap is the longest time without an echo between from and to.
func (f *haFlow) gap(from, to time.Time) time.Duration {
	last, longest := from, time.Duration(0)
	for _, at := range append(f.times(), to) {
		if at.Before(from) {
			continue
		}
		if at.After(to) {
			at = to
		}
		longest = max(longest, at.Sub(last))
		last = at
	}
	return longest
}

// stop ends the flow: lines sent, echoes read, and the error that broke
// it, if one did. The echoes in flight after the last line arrive first.
func (f *haFlow) stop() (sent, echoed int, err error) {
	f.once.Do(func() {
		close(f.quitWrite)
		waitFor(3*time.Second, func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return len(f.echoes) >= f.sent || f.err != nil
		})
		close(f.quit)
		f.wg.Wait()
		f.conn.Close()
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, len(f.echoes), f.err
}

// sources are the flow's sources as the far end saw them.
func (f *haFlow) sources() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.srcs))
}
