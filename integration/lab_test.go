package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/store"
)

// binary is the lab-ops binary built once for the package.
var binary string

func TestMain(m *testing.M) {
	if sock := os.Getenv("NATMAP_TEST_HOLD"); sock != "" {
		os.Exit(holdConnections(sock))
	}
	dir, err := os.MkdirTemp("", "natmap-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "lab-ops")
	if err := buildLabOps(binary); err != nil {
		fmt.Fprintln(os.Stderr, "building lab-ops:", err)
		os.Exit(1)
	}
	code := m.Run()
	stopEngine()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildLabOps builds lab-ops as scripts/release builds the release
// binary and scripts/package the Debian package's (static, without cgo,
// stripped).
func buildLabOps(out string) error {
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "github.com/lab-ops/natmap/cmd/lab-ops")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	return build.Run()
}

// holdConnections is a helper process (the test binary run again, as
// another user): it opens 200 connections to sock, prints how many the
// daemon kept open, and holds them until its standard input closes.
func holdConnections(sock string) int {
	var conns []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	fmt.Printf("held %d\n", keptOpen(conns))
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// keptOpen waits a moment, then counts the connections the server has not
// closed (a read that ends in EOF is a closed one).
func keptOpen(conns []net.Conn) int {
	time.Sleep(200 * time.Millisecond)
	kept := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			kept++
		}
	}
	return kept
}

// lab is the test network, all inside namespaces of its own:
//
//	client  203.0.113.10  2001:db8:1::10 --ext0-- router --int0-- lan bridge -- server  10.0.0.101, 10.0.0.102, fd00::101
//	clientB 198.51.100.10                --ext1--        (ext-ip 203.0.113.43, 2001:db8:1::43)  \-- server2 10.0.0.103
//
// The router runs the daemon; the servers route back through it.
type lab struct {
	t                                    *testing.T
	client, clientB, router, lan, server *netnstest.NS
	server2                              *netnstest.NS
	dir, socket, state, saved, extIf     string
	daemon                               *exec.Cmd
	daemonLog                            *syncBuffer
	daemonDone                           chan error
	// spawned, when set, is called with the daemon's process as soon as
	// it started, before it is ready.
	spawned func(*os.Process)
	// wrap, when set, runs the daemon: the command and its first
	// arguments, the daemon's command line after them.
	wrap []string
}

const (
	extIP    = "203.0.113.43"
	extIP6   = "2001:db8:1::43"
	clientIP = "203.0.113.10"
	serverIP = "10.0.0.101"
)

func newLab(t *testing.T) *lab { return newLabWith(t, "ext0") }

// stored is the state the daemon has saved, its state file with the
// journal replayed, as JSON: what a restart would restore.
func (l *lab) stored(t *testing.T) string {
	t.Helper()
	st, err := (&store.File{Path: l.state}).Load()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// newLabWith builds the lab with the router's external interface named
// extIf (the spec's examples use vmbr0).
func newLabWith(t *testing.T, extIf string) *lab {
	t.Helper()
	netnstest.RequirePrivileges(t, "nft")
	l := &lab{t: t, dir: t.TempDir()}
	l.socket = filepath.Join(l.dir, "natmap.sock")
	l.state = filepath.Join(l.dir, "state.json")
	l.saved = filepath.Join(l.dir, "saved.nft")
	l.client = netnstest.New(t, "nmc")
	l.clientB = netnstest.New(t, "nmb")
	l.router = netnstest.New(t, "nmr")
	l.lan = netnstest.New(t, "nml")
	l.server = netnstest.New(t, "nms")
	l.server2 = netnstest.New(t, "nms2")

	l.extIf = extIf
	netnstest.Link(t, l.client, "c0", clientIP+"/24", l.router, extIf, "203.0.113.1/24")
	netnstest.Link(t, l.clientB, "b0", "198.51.100.10/24", l.router, "ext1", "198.51.100.1/24")
	l.router.AddAddr(t, extIf, extIP+"/32")
	l.client.AddAddr(t, "c0", "2001:db8:1::10/64")
	l.router.AddAddr(t, extIf, "2001:db8:1::1/64")
	l.router.AddAddr(t, extIf, extIP6+"/128")

	l.lan.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	l.lan.MustRun(t, "ip", "link", "set", "br0", "up")
	netnstest.Link(t, l.router, "int0", "10.0.0.1/24", l.lan, "p0", "")
	netnstest.Link(t, l.server, "s0", serverIP+"/24", l.lan, "p1", "")
	netnstest.Link(t, l.server2, "s0", "10.0.0.103/24", l.lan, "p2", "")
	for _, p := range []string{"p0", "p1", "p2"} {
		l.lan.MustRun(t, "ip", "link", "set", p, "master", "br0")
	}
	l.server.AddAddr(t, "s0", "10.0.0.102/24")
	l.server.AddAddr(t, "s0", "fd00::101/64")
	l.router.AddAddr(t, "int0", "fd00::1/64")

	l.client.MustRun(t, "ip", "route", "add", "default", "via", "203.0.113.1")
	l.client.MustRun(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
	l.clientB.MustRun(t, "ip", "route", "add", "default", "via", "198.51.100.1")
	l.server.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1")
	l.server.MustRun(t, "ip", "-6", "route", "add", "default", "via", "fd00::1")
	l.server2.MustRun(t, "ip", "route", "add", "default", "via", "10.0.0.1")
	l.router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	t.Cleanup(l.stopDaemon)
	return l
}

// startDaemon runs the daemon in the router namespace and waits until it
// answers.
func (l *lab) startDaemon(extra ...string) {
	l.t.Helper()
	if err := l.tryStartDaemon(extra...); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) tryStartDaemon(extra ...string) error {
	args := append([]string{"natmap", "daemon", "--state", l.state, "--socket", l.socket, "--socket-group", "root",
		"--retry-interval", "1s", "--save-path", l.saved}, extra...)
	if !slices.Contains(extra, "--backend") {
		args = append(args, backendArgs()...)
	}
	if !slices.Contains(extra, "--docker-host") {
		// Never the host's own Docker (/var/run/docker.sock or
		// DOCKER_HOST): a test that wants Docker starts its own engine.
		args = append(args, "--docker-host", "unix://"+filepath.Join(l.dir, "no-docker.sock"))
	}
	cmd := l.router.Cmd(binary, args...)
	if l.wrap != nil {
		cmd = l.router.Cmd(l.wrap[0], append(append(l.wrap[1:len(l.wrap):len(l.wrap)], binary), args...)...)
	}
	l.daemonLog = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = l.daemonLog, l.daemonLog
	if err := cmd.Start(); err != nil {
		return err
	}
	if l.spawned != nil {
		l.spawned(cmd.Process)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	l.daemon, l.daemonDone = cmd, done
	// A readiness wait, not a speed goal (the benchmark measures start-up):
	// restoring 20,000 forwards with iptables-nft takes 6-9 s here, more
	// on a loaded machine.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			l.daemon = nil
			return fmt.Errorf("daemon exited at start: %v\n%s", err, l.daemonLog)
		default:
		}
		if _, _, code := l.cli("status"); code == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("daemon did not answer within 30s:\n%s", l.daemonLog)
}

// stopDaemon ends the daemon with SIGTERM and waits for it.
func (l *lab) stopDaemon() {
	l.signalDaemon(syscall.SIGTERM)
}

// signalDaemon sends sig and waits for the daemon to exit.
func (l *lab) signalDaemon(sig syscall.Signal) error {
	if l.daemon == nil {
		return nil
	}
	l.daemon.Process.Signal(sig)
	var err error
	select {
	case err = <-l.daemonDone:
	case <-time.After(10 * time.Second):
		l.daemon.Process.Kill()
		err = <-l.daemonDone
		l.t.Errorf("daemon ignored %v for 10s", sig)
	}
	l.daemon = nil
	return err
}

// cli runs `lab-ops natmap --socket S ARGS...` from the root namespace (the
// socket is a file, reachable from any namespace).
func (l *lab) cli(args ...string) (stdout, stderr string, code int) {
	return l.cliAs(nil, args...)
}

// cliAs is cli run with the given process attributes (credentials).
func (l *lab) cliAs(attr *syscall.SysProcAttr, args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command(binary, append([]string{"natmap", "--socket", l.socket}, args...)...)
	cmd.SysProcAttr = attr
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		l.t.Fatalf("running lab-ops: %v", err)
	}
	return o.String(), e.String(), code
}

// mustCLI runs the CLI and fails the test unless it exits 0.
func (l *lab) mustCLI(args ...string) string {
	l.t.Helper()
	out, errOut, code := l.cli(args...)
	if code != 0 {
		l.t.Fatalf("lab-ops natmap %s: exit %d\n%s%s\ndaemon log:\n%s", strings.Join(args, " "), code, out, errOut, l.daemonLog)
	}
	return out
}

// serve starts TCP and UDP echo servers in ns on each address: every
// connection or datagram is answered with "NAME SOURCE", the source being
// the client's address as the server sees it.
func serve(t *testing.T, ns *netnstest.NS, name string, addrs ...string) {
	t.Helper()
	listen(t, ns, addrs, func(ln net.Listener) { acceptLoop(ln, name) }, func(pc net.PacketConn) { packetLoop(pc, name) })
}

// listen starts a TCP and a UDP server in ns on each address: tcp serves
// the listener, udp the packet socket, each in a goroutine of its own.
func listen(t *testing.T, ns *netnstest.NS, addrs []string, tcp func(net.Listener), udp func(net.PacketConn)) {
	t.Helper()
	for _, addr := range addrs {
		err := ns.Do(func() error {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				ln.Close()
				return err
			}
			t.Cleanup(func() { ln.Close(); pc.Close() })
			go tcp(ln)
			go udp(pc)
			return nil
		})
		if err != nil {
			t.Fatalf("serving %s in %s: %v", addr, ns.Name, err)
		}
	}
}

func acceptLoop(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
		c.Close()
	}
}

func packetLoop(pc net.PacketConn, name string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", name, from)), from)
	}
}

// dial connects from ns to addr over proto ("tcp" or "udp") and returns the
// server's answer: "NAME SOURCE".
func dial(ns *netnstest.NS, proto, addr string) (string, error) {
	return dialWithin(ns, proto, addr, 2*time.Second)
}

// dialWithin is dial with its own timeout for the connection and the
// answer.
func dialWithin(ns *netnstest.NS, proto, addr string, timeout time.Duration) (string, error) {
	var conn net.Conn
	err := ns.Do(func() error {
		var err error
		conn, err = net.DialTimeout(proto, addr, timeout)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := conn.Write([]byte("hello")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// expectReach asserts that a connection from ns to addr is answered by the
// server named want, and returns the source address the server saw.
func expectReach(t *testing.T, ns *netnstest.NS, proto, addr, want string) string {
	t.Helper()
	got, err := dial(ns, proto, addr)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", proto, addr, ns.Name, err)
	}
	name, src, _ := strings.Cut(got, " ")
	if name != want {
		t.Fatalf("%s %s from %s answered by %q, want %q", proto, addr, ns.Name, name, want)
	}
	host, _, err := net.SplitHostPort(src)
	if err != nil {
		t.Fatalf("bad answer %q", got)
	}
	return host
}

// expectNoReach asserts that nothing answers.
func expectNoReach(t *testing.T, ns *netnstest.NS, proto, addr string) {
	t.Helper()
	if got, err := dial(ns, proto, addr); err == nil {
		t.Fatalf("%s %s from %s was answered: %q", proto, addr, ns.Name, got)
	}
}

// testBackend is the kernel backend the suite runs against:
// NATMAP_TEST_BACKEND=nftables (the default), iptables-legacy or
// iptables-nft. scripts/test runs the suite once for each.
func testBackend() string {
	if b := os.Getenv("NATMAP_TEST_BACKEND"); b != "" {
		return b
	}
	return "nftables"
}

// backendArgs are the daemon flags that select testBackend.
func backendArgs() []string {
	switch b := testBackend(); b {
	case "iptables-legacy", "iptables-nft":
		return []string{"--backend", "iptables", "--iptables-mode", strings.TrimPrefix(b, "iptables-")}
	}
	return []string{"--backend", "nftables"}
}

// kernelRules lists what natmap installed in the router: the nftables
// table, or the iptables rules (without counters).
func (l *lab) kernelRules() string {
	b := testBackend()
	if b == "nftables" {
		out, err := l.router.Run("nft", "list", "table", "inet", "natmap")
		if err != nil {
			return "(no table) " + err.Error()
		}
		return out
	}
	var all strings.Builder
	for _, tool := range []string{"iptables", "ip6tables"} {
		// stdout alone: iptables-nft-save warns on stderr when legacy
		// tables exist, which could land inside a line.
		out, _ := l.router.Cmd(tool + strings.TrimPrefix(b, "iptables") + "-save").Output()
		all.WriteString(saveNoise.ReplaceAllString(string(out), ""))
	}
	return all.String()
}

// saveNoise is what changes between two iptables-save runs.
var saveNoise = regexp.MustCompile(`(?m)^#.*\n|\[\d+:\d+\]`)

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

// api sends a raw request to the daemon.
func (l *lab) api(method, path, body string) (int, string) {
	l.t.Helper()
	code, reply, err := l.tryAPI(method, path, body)
	if err != nil {
		l.t.Fatal(err)
	}
	return code, reply
}

// tryAPI sends a raw request and returns transport errors.
func (l *lab) tryAPI(method, path, body string) (int, string, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", l.socket)
	}}}
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(resp.Body); err != nil {
		return 0, "", err
	}
	return resp.StatusCode, b.String(), nil
}

// syncBuffer is a bytes.Buffer safe for a writer and readers at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	if s == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dropNAT removes natmap's kernel rules by hand, as a reboot would.
func (l *lab) dropNAT() {
	l.t.Helper()
	if b := testBackend(); b != "nftables" {
		// One restore empties both tables at once (-F then -X, two runs,
		// would race a daemon that repairs in between).
		tool := "iptables" + strings.TrimPrefix(b, "iptables") + "-restore"
		l.router.MustRun(l.t, "sh", "-c", "printf '*nat\\nCOMMIT\\n*filter\\nCOMMIT\\n' | "+tool)
		return
	}
	l.router.MustRun(l.t, "nft", "delete", "table", "inet", "natmap")
}

// loadSaved loads what `save` wrote the way the host does at boot.
func (l *lab) loadSaved() {
	l.t.Helper()
	if b := testBackend(); b != "nftables" {
		l.router.MustRun(l.t, "sh", "-c", "iptables"+strings.TrimPrefix(b, "iptables")+"-restore < "+l.saved)
		return
	}
	l.router.MustRun(l.t, "nft", "-f", l.saved)
}
