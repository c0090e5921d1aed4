package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/store"
)

// TestIntegrationSelfHealing tampers with natmap's rules the ways people do
// and expects them back within a second, with a log line saying what was
// repaired, and other tables untouched.
func TestIntegrationSelfHealing(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	l.mustCLI("snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP)
	want := noCounters(l.kernelRules())

	var tampers [][]string
	switch b := testBackend(); b {
	case "nftables":
		l.router.MustRun(t, "nft", "add", "table", "inet", "other")
		l.router.MustRun(t, "nft", "add", "chain", "inet", "other", "c")
		tampers = [][]string{
			{"nft", "delete", "table", "inet", "natmap"},
			{"nft", "flush", "chain", "inet", "natmap", "prerouting"},
			{"nft", "flush", "chain", "inet", "natmap", "snat_out"},
			{"nft", "flush", "ruleset"},
		}
	default:
		ipt := "iptables" + strings.TrimPrefix(b, "iptables")
		tampers = [][]string{
			{ipt, "-t", "nat", "-F", "NATMAP-PRE"},
			{ipt, "-t", "nat", "-D", "PREROUTING", "-j", "NATMAP-PRE"},
			{ipt, "-t", "nat", "-F", "NATMAP-SNAT"},
			{ipt, "-D", "FORWARD", "-j", "NATMAP-FWD"},
		}
	}
	for _, tamper := range tampers {
		l.router.MustRun(t, tamper[0], tamper[1:]...)
		start := time.Now()
		if !waitFor(time.Second, func() bool { return noCounters(l.kernelRules()) == want }) {
			t.Fatalf("after %v the rules were not restored within 1s:\n%s", tamper, l.kernelRules())
		}
		t.Logf("repair time after %q: %v", strings.Join(tamper, " "), time.Since(start).Round(time.Millisecond))
		expectReach(t, l.client, "tcp", extIP+":25", "mail")
		if testBackend() == "nftables" && strings.Join(tamper, " ") != "nft flush ruleset" {
			if out := l.router.MustRun(t, "nft", "list", "tables"); !strings.Contains(out, "inet other") {
				t.Errorf("after %v and the repair, the table inet other is gone:\n%s", tamper, out)
			}
		}
	}
	if !strings.Contains(l.daemonLog.String(), "restored them") {
		t.Errorf("no repair logged:\n%s", l.daemonLog)
	}
	if testBackend() == "nftables" {
		// The foreign table was gone only with the flush of the whole
		// ruleset (the last tamper); natmap never touched it before.
		if out, _ := l.router.Run("nft", "list", "tables"); strings.Contains(out, "inet other") {
			t.Errorf("natmap restored a table it does not own:\n%s", out)
		}
	}
}

// TestIntegrationSocketBoundary: the kernel refuses a process outside the
// socket's group; mutating requests are logged with the peer's uid and
// pid; a slow client and a flood of connections do not block others.
func TestIntegrationSocketBoundary(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	// nobody (65534) is neither root nor in the socket's group (root here).
	cmd := exec.Command(binary, "natmap", "--socket", l.socket, "ls")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	// Let nobody reach the binary and the socket file itself: only the
	// socket's own mode (0660 root:root) stands in the way.
	for _, dir := range []string{filepath.Dir(binary), l.dir, filepath.Dir(l.dir)} {
		os.Chmod(dir, 0o755)
	}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("an outsider got through: %v\n%s", err, out)
	}

	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	if log := l.daemonLog.String(); !strings.Contains(log, "path=/dnat status=200") || !strings.Contains(log, "uid=0 pid=") {
		t.Errorf("the change was not logged with its peer:\n%s", log)
	}

	// A slow client that never finishes its request headers, and a member
	// of the socket group who opens 200 idle connections (the limit is
	// 128, of which 8 are root's): root is still served while the flood
	// holds its connections.
	slow, err := net.Dial("unix", l.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte("POST /dnat HTTP/1.1\r\nHost: x\r\n"))
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	letMemberIn(l, filepath.Dir(self))
	flood := exec.Command(self)
	flood.Env = append(os.Environ(), "NATMAP_TEST_HOLD="+l.socket)
	flood.SysProcAttr = memberCredential()
	stdin, err := flood.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := flood.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := flood.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); flood.Wait() }()
	var held int
	if _, err := fmt.Fscanf(stdout, "held %d\n", &held); err != nil {
		t.Fatalf("the flood helper: %v", err)
	}
	if held > 128-8-1 {
		t.Errorf("a member held %d connections, want at most %d (the slow client has one, root keeps 8)", held, 128-8-1)
	}
	if out := l.mustCLI("ls"); !strings.Contains(out, "25") {
		t.Errorf("ls while a member holds every slot it may:\n%s", out)
	}
	// The slow client is cut off after the header timeout (5s).
	slow.SetReadDeadline(time.Now().Add(7 * time.Second))
	if _, err := io.ReadAll(slow); err != nil {
		t.Errorf("the slow client was not cut off: %v", err)
	}
}

// TestIntegrationConcurrentClients: 64 clients send 50 requests each at
// once, adds and deletes of ports of one shared rule (each client its own
// ports, plus ten ports every client fights over). Every reply is one the
// API can give; each client's ports end as a serial replay of its
// acknowledged requests says; the kernel, the state file and the
// reservations agree.
func TestIntegrationConcurrentClients(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	const clients, requests = 64, 50
	results := make([]map[int]bool, clients)
	var wg sync.WaitGroup
	var bad atomic.Int32
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			owned := map[int]bool{}
			for i := 0; i < requests; i++ {
				port := 20000 + c*10 + rng.IntN(10)
				shared := rng.IntN(4) == 0
				if shared {
					port = 30000 + rng.IntN(10)
				}
				method := "POST"
				if rng.IntN(2) == 0 {
					method = "DELETE"
				}
				code, body := l.api(method, "/dnat", fmt.Sprintf(`{"ext_ip":%q,"int_ip":%q,"ports":"%d"}`, extIP, serverIP, port))
				switch {
				case code == 200:
					if !shared {
						owned[port] = method == "POST"
					}
				case method == "DELETE" && code == 404:
					if !shared && owned[port] {
						bad.Add(1)
						t.Errorf("client %d: delete of its own added port %d: 404 %s", c, port, body)
					}
				default:
					bad.Add(1)
					t.Errorf("client %d: %s port %d: %d %s", c, method, port, code, body)
				}
			}
			results[c] = owned
		}(c)
	}
	wg.Wait()
	var list nat.ListResponse
	if err := json.Unmarshal([]byte(l.mustCLI("--json", "ls")), &list); err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for _, d := range list.Dnats {
		ports, err := nat.ParsePorts(d.Ports)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ports.Pairs() {
			have[int(p.Ext)] = true
		}
	}
	for c, owned := range results {
		for port, added := range owned {
			if have[port] != added {
				t.Errorf("client %d port %d: present %v, its last acknowledged request says %v", c, port, have[port], added)
			}
		}
	}
	if n := countForwards(t, l); n != len(have) {
		t.Errorf("the kernel holds %d forwards, the daemon lists %d", n, len(have))
	}
	if st := status(t, l); st.Rules.Reservations != len(have) {
		t.Errorf("%d reservations for %d forwards", st.Rules.Reservations, len(have))
	}
	l.stopDaemon()
	stored, err := (&store.File{Path: l.state}).Load()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range stored.Dnats {
		n += d.Ports.Count()
	}
	if n != len(have) {
		t.Errorf("the state file holds %d forwards, the daemon listed %d", n, len(have))
	}
	t.Logf("%d requests from %d clients; %d ports forwarded at the end; %d bad replies", clients*requests, clients, len(have), bad.Load())
}

// TestIntegrationZeroGapRestart sends a stream of TCP connections and UDP
// datagrams, over IPv4 and IPv6 (the iptables backend's two families),
// through forwards while the daemon is restarted 20 times (SIGTERM and
// SIGKILL in turn), and counts what was lost; meanwhile a policy route's
// rule and route are watched for a moment without them.
func TestIntegrationZeroGapRestart(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "svc", serverIP+":5000", "[fd00::101]:5000")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "5000")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "5000", "--proto", "udp")
	l.mustCLI("dnat", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "5000")
	l.mustCLI("policy-route", "--src-ip", "10.0.2.1", "--via", serverIP, "--table", "200")
	routed := policyRouting(t, l)
	if !strings.Contains(routed, "from 10.0.2.1 lookup 200") || !strings.Contains(routed, "table 200: default via "+serverIP) {
		t.Fatalf("the policy route is not installed:\n%s", routed)
	}

	var streams []*stream
	for _, target := range []struct{ proto, addr string }{{"tcp", extIP + ":5000"}, {"udp", extIP + ":5000"}, {"tcp", "[" + extIP6 + "]:5000"}} {
		streams = append(streams, startStream(t, l.client, target.proto, target.addr, "svc", 10*time.Millisecond))
	}
	stop := make(chan struct{})
	var looks, gaps atomic.Int32
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default: // look as often as the tools allow
			}
			looks.Add(1)
			if now := policyRouting(t, l); now != routed {
				gaps.Add(1)
				t.Logf("policy routing during the restarts:\n%s", now)
			}
		}
	}()
	for i := 0; i < 20; i++ {
		sig := syscall.SIGTERM
		if i%2 == 1 {
			sig = syscall.SIGKILL
		}
		l.signalDaemon(sig)
		l.startDaemon()
	}
	close(stop)
	wg.Wait()
	var sent, lost int32
	for _, s := range streams {
		n, m := s.end()
		sent, lost = sent+n, lost+m
	}
	t.Logf("20 restarts: %d connections and datagrams sent, %d lost; policy routing looked at %d times, %d times not as installed",
		sent, lost, looks.Load(), gaps.Load())
	if lost != 0 {
		t.Errorf("%d of %d lost across restarts", lost, sent)
	}
	if gaps.Load() != 0 {
		t.Errorf("the policy route was not as installed %d of %d times across restarts", gaps.Load(), looks.Load())
	}
}

// TestIntegrationCrashTorture drives 1,000 mixed changes while killing the
// daemon with SIGKILL at random moments (mid-request too) and restarting
// it. At the end every acknowledged change is there, and the kernel, the
// state file and the reservations agree.
func TestIntegrationCrashTorture(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	rng := rand.New(rand.NewPCG(42, 1))
	// known[key]: present or absent, as the last acknowledged request on
	// the key left it; a key whose last request got no answer is unknown.
	known := map[string]bool{}
	var acked, unanswered, kills int
	killed := false // a SIGKILL is on its way to the running daemon
	var slowestReap time.Duration
	reap := func() {
		// The kernel may take a while to release a killed process's
		// nftables socket; the next daemon starts once it is gone.
		start := time.Now()
		defer func() { slowestReap = max(slowestReap, time.Since(start)) }()
		select {
		case <-l.daemonDone:
		case <-time.After(30 * time.Second):
			t.Fatal("the killed daemon was not reaped within 30s")
		}
		l.daemon, killed = nil, false
	}
	for i := 0; i < 1000; i++ {
		if l.daemon == nil {
			l.startDaemon()
		}
		if !killed && rng.IntN(30) == 0 {
			kills++
			killed = true
			delay := time.Duration(rng.IntN(3000)) * time.Microsecond
			d := l.daemon
			go func() { time.Sleep(delay); d.Process.Signal(syscall.SIGKILL) }()
		}
		add := rng.IntN(2) == 0
		method := map[bool]string{true: "POST", false: "DELETE"}[add]
		var key, path, body string
		switch kind := rng.IntN(5); kind {
		case 0:
			port := 20000 + rng.IntN(40)
			key, path, body = fmt.Sprint("dnat ", port), "/dnat", fmt.Sprintf(`{"ext_ip":%q,"int_ip":%q,"ports":"%d"}`, extIP, serverIP, port)
		case 1:
			port := 20000 + rng.IntN(40)
			key, path, body = fmt.Sprint("hairpin ", port), "/hairpin", fmt.Sprintf(`{"ext_ip":%q,"int_ip":%q,"ports":"%d","lan_cidr":"10.0.0.0/24"}`, extIP, serverIP, port)
		case 2:
			// IPv6: the iptables backend's second family.
			port := 20000 + rng.IntN(40)
			key, path, body = fmt.Sprint("dnat6 ", port), "/dnat", fmt.Sprintf(`{"ext_ip":%q,"int_ip":"fd00::101","ports":"%d"}`, extIP6, port)
		case 3:
			host := 1 + rng.IntN(12)
			key, path, body = fmt.Sprint("route ", host), "/policy-route", fmt.Sprintf(`{"src_ip":"10.0.2.%d","via":%q,"table":%d}`, host, serverIP, routeTable(host))
		default:
			host := 1 + rng.IntN(20)
			key, path, body = fmt.Sprint("snat ", host), "/snat", fmt.Sprintf(`{"int_ip":"10.0.1.%d","ext_if":"ext0","ext_ip":%q}`, host, extIP)
		}
		code, _, err := l.tryAPI(method, path, body)
		switch {
		case err != nil && !killed:
			t.Fatalf("%s %s with no kill on its way: %v\n%s", method, path, err, l.daemonLog)
		case err != nil:
			unanswered++
			delete(known, key)
			reap()
		case code == 200:
			acked++
			known[key] = add
		case code == 404 && !add:
			acked++
			known[key] = false
		default:
			t.Fatalf("%s %s %s: %d", method, path, body, code)
		}
	}
	if killed {
		time.Sleep(5 * time.Millisecond) // let the kill land
		if _, _, err := l.tryAPI("GET", "/status", ""); err != nil {
			reap()
		} else {
			// It may still land: take the daemon down for good and restart.
			l.daemon.Process.Signal(syscall.SIGKILL)
			reap()
		}
	}
	if l.daemon == nil {
		l.startDaemon()
	}
	t.Logf("%d acknowledged, %d unanswered, %d SIGKILLs", acked, unanswered, kills)
	var list nat.ListResponse
	if err := json.Unmarshal([]byte(l.mustCLI("--json", "ls")), &list); err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	forwards := map[string]bool{} // family and port: a dnat and a hairpin share one
	for _, d := range list.Dnats {
		pl, _ := nat.ParsePorts(d.Ports)
		kind := map[bool]string{false: "dnat", true: "dnat6"}[strings.Contains(d.ExtIP, ":")]
		for _, p := range pl.Pairs() {
			have[fmt.Sprint(kind, " ", p.Ext)], forwards[fmt.Sprint(kind, p.Ext)] = true, true
		}
	}
	for _, h := range list.Hairpins {
		pl, _ := nat.ParsePorts(h.Ports)
		for _, p := range pl.Pairs() {
			have[fmt.Sprint("hairpin ", p.Ext)], forwards[fmt.Sprint("dnat", p.Ext)] = true, true
		}
	}
	for _, s := range list.Snats {
		have["snat "+strings.TrimPrefix(s.IntIP, "10.0.1.")] = true
	}
	for _, r := range list.PolicyRoutes {
		have["route "+strings.TrimPrefix(r.SrcIP, "10.0.2.")] = true
		if r.Status != "active" {
			t.Errorf("policy route %+v is not active", r)
		}
	}
	lost := 0
	for key, present := range known {
		if have[key] != present {
			lost++
			t.Errorf("%s: present %v, the last acknowledged request says %v", key, have[key], present)
		}
	}
	if n := countForwards(t, l); n != len(forwards) {
		t.Errorf("the kernel holds %d forwards, the state %d", n, len(forwards))
	}
	if st := status(t, l); st.Rules.Reservations != len(forwards) {
		t.Errorf("%d reservations for %d forwards", st.Rules.Reservations, len(forwards))
	}
	// Each listed policy route is in the kernel, a rule and its table's
	// route, and nothing else of natmap's is: no orphan a kill between
	// a route and its rule left.
	if got, want := policyRouting(t, l), listedRouting(list.PolicyRoutes); got != want {
		t.Errorf("policy routing in the kernel:\n%s\nthe daemon lists:\n%s", got, want)
	}
	kernel := l.kernelRules()
	if testBackend() == "nftables" && strings.Count(kernel, "snat ip to") != len(list.Snats) {
		t.Errorf("the kernel holds %d snat rules, the state %d", strings.Count(kernel, "snat ip to"), len(list.Snats))
	}
	l.stopDaemon()
	stored, err := (&store.File{Path: l.state}).Load()
	if err != nil {
		t.Fatal(err)
	}
	inFile := map[string]bool{}
	for _, d := range stored.Dnats {
		kind := map[bool]string{false: "dnat", true: "dnat6"}[d.ExtIP.Is6()]
		for _, p := range d.Ports.Pairs() {
			inFile[fmt.Sprint(kind, " ", p.Ext)] = true
		}
	}
	for _, h := range stored.Hairpins {
		for _, p := range h.Ports.Pairs() {
			inFile[fmt.Sprint("hairpin ", p.Ext)] = true
		}
	}
	for _, s := range stored.Snats {
		inFile["snat "+strings.TrimPrefix(s.IntNet.Addr().String(), "10.0.1.")] = true
	}
	for _, r := range stored.PolicyRoutes {
		inFile["route "+strings.TrimPrefix(r.SrcIP.String(), "10.0.2.")] = true
	}
	if len(inFile) != len(have) {
		t.Errorf("the state file holds %d rules, the daemon listed %d", len(inFile), len(have))
	}
	for k := range have {
		if !inFile[k] {
			t.Errorf("%s is listed but not in the state file", k)
		}
	}
	t.Logf("1000 changes: %d acknowledged, %d unanswered, %d SIGKILLs; %d keys checked, %d lost; %d forwards, %d snats, %d policy routes at the end; slowest reap of a killed daemon %v",
		acked, unanswered, kills, len(known), lost, len(forwards), len(list.Snats), len(list.PolicyRoutes), slowestReap.Round(time.Millisecond))
}

// routeTable is the table of the torture's policy route for 10.0.2.host:
// three tables, each shared by several sources.
func routeTable(host int) int { return 200 + host%3 }

// policyRouting is natmap's policy routing in the router: its rules
// (protocol 212) and the default route of each of the torture's tables
// (which also hold copies of the connected routes), one line each, sorted.
func policyRouting(t *testing.T, l *lab) string {
	t.Helper()
	var lines []string
	for _, r := range strings.Split(l.router.MustRun(t, "ip", "rule", "show"), "\n") {
		if _, rule, ok := strings.Cut(r, ":"); ok && strings.Contains(rule, "proto 212") {
			lines = append(lines, strings.Join(strings.Fields(rule), " "))
		}
	}
	for table := 200; table < 203; table++ {
		out, _ := l.router.Run("ip", "route", "show", "table", fmt.Sprint(table))
		switch routes := strings.Split(strings.TrimSpace(out), "\n"); {
		case strings.TrimSpace(out) == "":
		case !strings.HasPrefix(routes[0], "default"):
			lines = append(lines, fmt.Sprintf("table %d: routes but no default:\n%s", table, out))
		default:
			lines = append(lines, fmt.Sprintf("table %d: %s", table, strings.Join(strings.Fields(routes[0]), " ")))
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// listedRouting is what policyRouting shows for the routes the daemon
// lists.
func listedRouting(routes []nat.PolicyRouteEntry) string {
	var lines []string
	tables := map[uint32]string{}
	for _, r := range routes {
		lines = append(lines, fmt.Sprintf("from %s lookup %d proto 212", r.SrcIP, r.Table))
		tables[r.Table] = r.Via
	}
	for table, via := range tables {
		lines = append(lines, fmt.Sprintf("table %d: default via %s dev int0 proto 212", table, via))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestIntegrationDiskFull: when the state cannot be written, a change is
// refused with 500 and the kernel and the reservations are rolled back. A
// change is a line added to the state journal, so on a full disk the
// changes that still fit in the journal's last block are stored; the first
// that does not is refused.
func TestIntegrationDiskFull(t *testing.T) {
	l := newLab(t)
	disk := filepath.Join(t.TempDir(), "disk")
	os.Mkdir(disk, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "natmap-test", disk).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", disk).Run() })
	l.state = filepath.Join(disk, "state.json")
	serve(t, l.server, "mail", serverIP+":25")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	// Fill the disk.
	exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(disk, "fill"), "bs=4k", "count=64").Run()

	stored, refused := 0, 0
	for port := 465; refused == 0; port++ {
		if port > 565 {
			t.Fatal("100 changes were stored on a full disk")
		}
		before, state := noCounters(l.kernelRules()), l.stored(t)
		code, body := l.api("POST", "/dnat", fmt.Sprintf(`{"ext_ip":%q,"int_ip":%q,"ports":"%d"}`, extIP, serverIP, port))
		if code == 200 {
			stored++
			continue
		}
		refused = port
		if code != 500 || !strings.Contains(body, "saving state") || !strings.Contains(body, "no space left on device") {
			t.Fatalf("add on a full disk: %d %s", code, body)
		}
		if after := noCounters(l.kernelRules()); after != before {
			t.Errorf("the kernel was not rolled back:\n%s", after)
		}
		if after := l.stored(t); after != state {
			t.Errorf("the refused change is in the saved state:\n%s", after)
		}
		if !bindable(l, fmt.Sprintf("%s:%d", extIP, port)) {
			t.Error("the refused forward's port stayed reserved")
		}
	}
	t.Logf("on a full disk, %d changes fitted in the journal's last block; port %d was refused", stored, refused)
	if code, body := l.api("DELETE", "/dnat", `{"ext_ip":"`+extIP+`","int_ip":"`+serverIP+`","ports":"25"}`); code != 500 {
		t.Fatalf("delete on a full disk: %d %s", code, body)
	}
	expectReach(t, l.client, "tcp", extIP+":25", "mail")
	// Space again: changes work.
	os.Remove(filepath.Join(disk, "fill"))
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", fmt.Sprint(refused))
	l.stopDaemon()
	if st := l.stored(t); strings.Count(st, `"ext_ip"`) != 1 || !strings.Contains(st, fmt.Sprint(refused)) {
		t.Errorf("after the disk had room again: %s", st)
	}
}

// TestIntegrationStateJournal: a change is a synced journal line, replayed
// after a SIGKILL; the daemon folds the journal into the state file once
// idle for a second and when it stops, so the state file alone is then the
// whole state.
func TestIntegrationStateJournal(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25")
	serve(t, l.server, "smtps", serverIP+":465")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "465")
	if err := l.signalDaemon(syscall.SIGKILL); err == nil {
		t.Fatal("the daemon survived SIGKILL")
	}
	journal, err := os.ReadFile(l.state + ".journal")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after SIGKILL, the journal holds %d lines", bytes.Count(journal, []byte("\n")))
	l.dropNAT()
	l.startDaemon()
	expectReach(t, l.client, "tcp", extIP+":25", "mail")
	expectReach(t, l.client, "tcp", extIP+":465", "smtps")

	alone := func() nat.State {
		t.Helper()
		st, err := store.Decode(must(os.ReadFile(l.state)))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	// Idle: the replayed journal is folded in.
	deadline := time.Now().Add(5 * time.Second)
	for len(alone().Dnats) == 0 || len(alone().Dnats[0].Ports) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the state file alone does not hold both ports 5 s after start: %+v", alone())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if j := must(os.ReadFile(l.state + ".journal")); bytes.Count(j, []byte("\n")) != 1 {
		t.Errorf("after folding, the journal holds more than its header:\n%s", j)
	}
	// Stopping folds in the last change at once.
	l.mustCLI("dnat", "--delete", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	l.stopDaemon()
	if st := alone(); len(st.Dnats) != 1 || st.Dnats[0].Ports.String() != "465" {
		t.Errorf("after SIGTERM the state file alone holds %+v", st)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
