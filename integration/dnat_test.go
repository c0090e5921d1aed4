package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/nft"
)

func TestIntegrationDNATForwardsRealTraffic(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25", serverIP+":465", serverIP+":22", "[fd00::101]:8080")
	serve(t, l.server, "dns", serverIP+":53")
	serve(t, l.server, "range", serverIP+":8000", serverIP+":8001", serverIP+":8002")
	serve(t, l.server, "other", "10.0.0.102:25")
	l.startDaemon()

	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,465")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "53", "--proto", "udp")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "2222:22,8000-8002")
	l.mustCLI("dnat", "--ext-ip", extIP6, "--int-ip", "fd00::101", "--ports", "80:8080")

	// Each forward reaches the server, which sees the client's real address.
	for _, c := range []struct{ proto, addr, server string }{
		{"tcp", extIP + ":25", "mail"},
		{"tcp", extIP + ":465", "mail"},
		{"udp", extIP + ":53", "dns"},
		{"tcp", extIP + ":2222", "mail"},
		{"tcp", extIP + ":8000", "range"},
		{"tcp", extIP + ":8002", "range"},
	} {
		if src := expectReach(t, l.client, c.proto, c.addr, c.server); src != clientIP {
			t.Errorf("%s %s: the server saw %s, want the client's %s", c.proto, c.addr, src, clientIP)
		}
	}
	if src := expectReach(t, l.client, "tcp", "["+extIP6+"]:80", "mail"); src != "2001:db8:1::10" {
		t.Errorf("IPv6: the server saw %s", src)
	}
	// TCP 53 and UDP 25 are not forwarded: the protocol is part of the rule.
	expectNoReach(t, l.client, "tcp", extIP+":53")
	expectNoReach(t, l.client, "udp", extIP+":25")

	// The router itself reaches the forwards through the output path.
	expectReach(t, l.router, "tcp", extIP+":465", "mail")

	// Adding the same rule again changes nothing.
	before := l.kernelRules()
	if out := l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "465,25"); !strings.Contains(out, "already present") {
		t.Errorf("second add said %q", out)
	}
	if after := l.kernelRules(); after != before {
		t.Errorf("a repeated add changed the table:\n%s", after)
	}

	// ls shows what was added, rules with the same addresses and protocol
	// merged into one; --json is pure JSON in the reference's shape.
	ls := l.mustCLI("ls")
	for _, want := range []string{"25,465,2222:22,8000-8002", "80:8080", "udp", "active"} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls lacks %q:\n%s", want, ls)
		}
	}
	var list nat.ListResponse
	if err := json.Unmarshal([]byte(l.mustCLI("--json", "ls")), &list); err != nil {
		t.Fatalf("ls --json: %v", err)
	}
	if len(list.Dnats) != 3 {
		t.Fatalf("ls --json lists %d dnats, want 3: %+v", len(list.Dnats), list.Dnats)
	}

	// Delete one port: it is closed and another program can bind it; the
	// other port of the rule keeps working.
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--delete")
	expectNoReach(t, l.client, "tcp", extIP+":25")
	expectReach(t, l.client, "tcp", extIP+":465", "mail")
	err := l.router.Do(func() error {
		ln, err := net.Listen("tcp", extIP+":25")
		if err == nil {
			ln.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("binding the deleted port: %v", err)
	}
	// Deleting it again is refused with 404 (exit 1) and releases nothing.
	_, errOut, code := l.cli("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--delete")
	if code != 1 || !strings.Contains(errOut, "port 25/tcp is not forwarded") {
		t.Errorf("second delete: exit %d: %s", code, errOut)
	}
	if code, _ := l.api("DELETE", "/dnat", `{"ext_ip":"`+extIP+`","int_ip":"`+serverIP+`","ports":"25"}`); code != 404 {
		t.Errorf("API delete of a missing rule: %d, want 404", code)
	}
	expectReach(t, l.client, "tcp", extIP+":465", "mail")

	// clear removes everything, in the kernel too.
	l.mustCLI("clear")
	expectNoReach(t, l.client, "tcp", extIP+":465")
	expectNoReach(t, l.client, "udp", extIP+":53")
	if table := l.kernelRules(); strings.Contains(table, serverIP) {
		t.Errorf("table after clear still forwards:\n%s", table)
	}
	if out := l.mustCLI("ls"); !strings.Contains(out, "no rules") {
		t.Errorf("ls after clear: %s", out)
	}
}

func TestIntegrationExtIfLimitsToInterface(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "web", serverIP+":8080", serverIP+":8081")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8080", "--ext-if", "ext0")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8081")

	expectReach(t, l.client, "tcp", extIP+":8080", "web")
	expectNoReach(t, l.clientB, "tcp", extIP+":8080")
	// Without --ext-if both sides are forwarded.
	expectReach(t, l.client, "tcp", extIP+":8081", "web")
	if src := expectReach(t, l.clientB, "tcp", extIP+":8081", "web"); src != "198.51.100.10" {
		t.Errorf("clientB seen as %s", src)
	}
	if ls := l.mustCLI("ls"); !strings.Contains(ls, "ext0") {
		t.Errorf("ls does not show the interface:\n%s", ls)
	}
}

func TestIntegrationPortHeldByAnotherProgram(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	var ln net.Listener
	if err := l.router.Do(func() (err error) { ln, err = net.Listen("tcp", extIP+":9000"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tableBefore := l.kernelRules()
	stateBefore := l.stored(t)

	_, errOut, code := l.cli("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8999-9001")
	if code != 1 || !strings.Contains(errOut, extIP+":9000/tcp is in use by another program") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if status, _ := l.api("POST", "/dnat", `{"ext_ip":"`+extIP+`","int_ip":"`+serverIP+`","ports":"9000"}`); status != 409 {
		t.Errorf("API: %d, want 409", status)
	}
	if after := l.kernelRules(); after != tableBefore {
		t.Errorf("the table changed:\n%s", after)
	}
	if after := l.stored(t); after != stateBefore {
		t.Errorf("the state file changed:\n%s", after)
	}
	// The ports around 9000 were not left reserved.
	for _, p := range []string{"8999", "9001"} {
		err := l.router.Do(func() error {
			ln, err := net.Listen("tcp", extIP+":"+p)
			if err == nil {
				ln.Close()
			}
			return err
		})
		if err != nil {
			t.Errorf("port %s left reserved: %v", p, err)
		}
	}
}

func TestIntegrationCrashAndRestart(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25", serverIP+":587")
	serve(t, l.server, "dns", serverIP+":53")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "53", "--proto", "udp")

	// SIGKILL: the rules stay in the kernel, so traffic keeps flowing while
	// the daemon is down.
	l.signalDaemon(syscall.SIGKILL)
	expectReach(t, l.client, "tcp", extIP+":25", "mail")
	expectReach(t, l.client, "udp", extIP+":53", "dns")

	// While it is down another program takes port 587.
	var squatter net.Listener
	if err := l.router.Do(func() (err error) { squatter, err = net.Listen("tcp", extIP+":587"); return }); err != nil {
		t.Fatal(err)
	}
	l.startDaemon()
	expectReach(t, l.client, "tcp", extIP+":25", "mail")
	expectReach(t, l.client, "udp", extIP+":53", "dns")
	ls := l.mustCLI("ls")
	if !strings.Contains(ls, "partial") || !strings.Contains(ls, extIP+":587/tcp is in use") {
		t.Fatalf("ls does not show 587 inactive:\n%s", ls)
	}
	if !strings.Contains(l.daemonLog.String(), "forward inactive") {
		t.Errorf("no warning logged:\n%s", l.daemonLog)
	}
	// The squatter goes away; the daemon retries and installs the forward.
	squatter.Close()
	if !waitFor(5*time.Second, func() bool {
		return strings.Contains(l.mustCLI("ls"), "active") && !strings.Contains(l.mustCLI("ls"), "partial")
	}) {
		t.Fatalf("587 never became active:\n%s", l.mustCLI("ls"))
	}
	expectReach(t, l.client, "tcp", extIP+":587", "mail")

	// SIGTERM ends the daemon cleanly and leaves the rules.
	if err := l.signalDaemon(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM exit: %v\n%s", err, l.daemonLog)
	}
	expectReach(t, l.client, "tcp", extIP+":587", "mail")
	l.startDaemon()
	if out := l.mustCLI("--json", "ls"); strings.Count(out, `"status": "active"`) != 2 {
		t.Errorf("after SIGTERM and restart:\n%s", out)
	}
}

func TestIntegrationDaemonRefusals(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")

	// A second daemon on the same socket refuses to start.
	out, err := l.router.Run(binary, "natmap", "daemon", "--state", l.state+".2", "--socket", l.socket, "--socket-group", "root")
	if err == nil || !strings.Contains(out, "another natmap daemon is serving "+l.socket) {
		t.Errorf("second daemon on the socket: %v\n%s", err, out)
	}
	// And on the same state file.
	out, err = l.router.Run(binary, "natmap", "daemon", "--state", l.state, "--socket", l.socket+".2", "--socket-group", "root")
	if err == nil || !strings.Contains(out, "another natmap daemon is using state file") {
		t.Errorf("second daemon on the state file: %v\n%s", err, out)
	}
	l.stopDaemon()

	// A corrupt state file stops the daemon with a message naming it, and
	// the file is left as it was.
	corrupt := []byte(`{"version": 1, "dnats": [{"ext_ip": "203.0.113.43", "int_ip": "10.0.0.101", "ports": "25", "proto": "tcp"}`)
	if err := os.WriteFile(l.state, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	err = l.tryStartDaemon()
	if err == nil || !strings.Contains(err.Error(), "state file "+l.state) || !strings.Contains(err.Error(), "not valid JSON") {
		t.Errorf("daemon on a corrupt state file: %v", err)
	}
	if b, _ := os.ReadFile(l.state); string(b) != string(corrupt) {
		t.Errorf("the corrupt file was changed to:\n%s", b)
	}

	// A stale socket file (no daemon behind it) is replaced.
	os.Remove(l.state)
	os.Remove(l.socket)
	stale, err := net.Listen("unix", l.socket)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l.startDaemon()
	fi, err := os.Stat(l.socket)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode: %v %v", fi, err)
	}
}

func TestIntegrationCLIBadInputChangesNothing(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	before := l.kernelRules()
	state := l.stored(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ext-ip", "203.0.113.999", "--int-ip", serverIP, "--ports", "80"}, `--ext-ip: "203.0.113.999" is not an IP address`},
		{[]string{"--ext-ip", extIP, "--int-ip", "fd00::1", "--ports", "80"}, "different IP versions"},
		{[]string{"--ext-ip", extIP, "--int-ip", serverIP, "--ports", "0"}, "port 0 is out of range"},
		{[]string{"--ext-ip", extIP, "--int-ip", serverIP, "--ports", "65536"}, "port 65536"},
		{[]string{"--ext-ip", extIP, "--int-ip", serverIP, "--ports", "abc"}, `"abc" is not a port number`},
		{[]string{"--ext-ip", extIP, "--int-ip", serverIP, "--ports", "90-80"}, "reversed"},
		{[]string{"--ext-ip", extIP, "--int-ip", serverIP, "--ports", "80", "--proto", "sctp"}, "unknown protocol"},
		{[]string{"--ext-ip", extIP, "--int-ip", serverIP, "--ports", "80", "--ext-if", "thisnameistoolong"}, "15"},
		{[]string{"--ext-ip", extIP, "--int-ip", "10.0.0.102", "--ports", "25"}, "already forwarded"},
	} {
		out, errOut, code := l.cli(append([]string{"dnat"}, c.args...)...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("dnat %v: exit %d, %q %q; want exit 1 saying %q", c.args, code, out, errOut, c.want)
		}
		// With --json the error is JSON on stdout.
		out, _, _ = l.cli(append([]string{"--json", "dnat"}, c.args...)...)
		var e map[string]string
		if err := json.Unmarshal([]byte(out), &e); err != nil || !strings.Contains(e["error"], c.want) {
			t.Errorf("--json dnat %v: %q", c.args, out)
		}
	}
	// Usage errors exit 2.
	if _, _, code := l.cli("dnat", "--ext-ip", extIP); code != 2 {
		t.Errorf("missing flags: exit %d, want 2", code)
	}
	if after := l.kernelRules(); after != before {
		t.Errorf("the table changed:\n%s", after)
	}
	if after := l.stored(t); after != state {
		t.Errorf("the state changed:\n%s", after)
	}
}

// TestIntegrationRestoreTenThousandForwards starts the daemon on a state
// file holding 10,000 forwards: every one is reserved and installed,
// counted back from the kernel, and traffic flows through one of them.
// Then as many as the open-file limit allows (20,000 on a host that lets
// the daemon raise its limit), and then more than it allows: the forwards
// beyond it stay in the state, inactive, with a reason that says so.
func TestIntegrationRestoreTenThousandForwards(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	raised := syscall.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	canRaise := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	most := 20000
	if !canRaise && lim.Max < 20200 {
		most = int(lim.Max)/1000*1000 - 1000
		t.Logf("this host's open-file hard limit is %d and cannot be raised: 20,000 reservations are out of reach, testing %d", lim.Max, most)
	}
	t.Run("10000", func(t *testing.T) { restoreMany(t, 10000) })
	t.Run(fmt.Sprint(most), func(t *testing.T) { restoreMany(t, most) })
	if !canRaise {
		t.Run("beyond the limit", func(t *testing.T) {
			l := restoreState(t, int(lim.Max)/1000*1000+1000)
			st := status(t, l)
			if st.Rules.Inactive == 0 || st.Rules.Reservations+st.Rules.Inactive != st.Rules.Forwards {
				t.Fatalf("status: %+v", st.Rules)
			}
			if ls := l.mustCLI("ls"); !strings.Contains(ls, "out of file descriptors") || !strings.Contains(ls, "raise LimitNOFILE") {
				t.Errorf("ls does not say why")
			}
			t.Logf("%d forwards: %d reserved and installed, %d inactive for lack of descriptors", st.Rules.Forwards, st.Rules.Reservations, st.Rules.Inactive)
		})
	}
}

// restoreState starts a daemon on a state file of total forwards (1,000 a
// rule) plus port 19999 to the real server.
func restoreState(t *testing.T, total int) *lab {
	l := newLab(t)
	serve(t, l.server, "bulk", serverIP+":80")
	var rules []string
	for i := 0; i < total/1000; i++ {
		// 1,000 ports each, all translated to ports 1000-1999.
		from := 20000 + i*1000
		rules = append(rules, fmt.Sprintf(`{"ext_ip":"%s","int_ip":"%s","ports":"%d-%d:%d-%d","proto":"tcp"}`,
			extIP, fmt.Sprintf("10.0.%d.%d", 1+i/200, 1+i%200), from, from+999, 1000, 1999))
	}
	// One more rule sends port 19999 to the real server.
	rules = append(rules, fmt.Sprintf(`{"ext_ip":"%s","int_ip":"%s","ports":"19999:80","proto":"tcp"}`, extIP, serverIP))
	state := `{"version": 1, "dnats": [` + strings.Join(rules, ",") + `]}`
	if err := os.WriteFile(l.state, []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	l.startDaemon()
	t.Logf("daemon served %d forwards %v after start", total+1, time.Since(start).Round(time.Millisecond))
	return l
}

func restoreMany(t *testing.T, total int) {
	l := restoreState(t, total)

	if n := countForwards(t, l); n != total+1 {
		t.Fatalf("the kernel holds %d forwards, want %d", n, total+1)
	}
	var st nat.StatusResponse
	if err := json.Unmarshal([]byte(l.mustCLI("--json", "status")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Rules.Reservations != total+1 || st.Rules.Inactive != 0 {
		t.Fatalf("status: %+v", st.Rules)
	}
	expectReach(t, l.client, "tcp", extIP+":19999", "bulk")
}

func TestIntegrationFwdPersistsAndSocketGroup(t *testing.T) {
	l := newLab(t)
	l.router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	l.startDaemon()
	l.mustCLI("fwd")
	if got := strings.TrimSpace(l.router.MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); got != "1" {
		t.Fatalf("ip_forward after fwd: %s", got)
	}
	// The setting is part of the state: a restart enables it again.
	l.stopDaemon()
	l.router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	l.startDaemon()
	if got := strings.TrimSpace(l.router.MustRun(t, "sysctl", "-n", "net.ipv4.ip_forward")); got != "1" {
		t.Fatalf("ip_forward after restart: %s", got)
	}
	// A missing socket group is a warning and a root-only socket.
	l.stopDaemon()
	l.startDaemon("--socket-group", "natmap-no-such-group")
	if !strings.Contains(l.daemonLog.String(), "socket group not found") {
		t.Errorf("no warning about the group:\n%s", l.daemonLog)
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(l.socket, &fi); err != nil || fi.Gid != 0 || fi.Mode&0o777 != 0o660 {
		t.Errorf("socket gid %d mode %o: %v", fi.Gid, fi.Mode&0o777, err)
	}
}

// countForwards counts the forwards in the router's kernel, read back: the
// nftables map's elements, or the iptables backend's DNAT rules.
func countForwards(t *testing.T, l *lab) int {
	t.Helper()
	if testBackend() != "nftables" {
		// A DNAT rule matches a port, a range or a multiport list; it is
		// in NATMAP-PRE or a chain of its tree (NATMAP-TP-*), where a range
		// split between two chains is written in both.
		n := 0
		seen := map[string]bool{}
		for _, line := range strings.Split(l.kernelRules(), "\n") {
			if !(strings.HasPrefix(line, "-A NATMAP-PRE ") || strings.HasPrefix(line, "-A NATMAP-TP-")) || !strings.Contains(line, "-j DNAT") {
				continue
			}
			_, rule, _ := strings.Cut(strings.TrimPrefix(line, "-A "), " ")
			if seen[rule] {
				continue
			}
			seen[rule] = true
			fields := strings.Fields(line)
			for i, f := range fields[:len(fields)-1] {
				if f != "--dport" && f != "--dports" {
					continue
				}
				for _, item := range strings.Split(fields[i+1], ",") {
					lo, hi, isRange := strings.Cut(item, ":")
					a, _ := strconv.Atoi(lo)
					b := a
					if isRange {
						b, _ = strconv.Atoi(hi)
					}
					n += b - a + 1
				}
			}
		}
		return n
	}
	b := nft.New(nft.WithNetNS(int(l.router.Open(t).Fd())))
	defer b.Close()
	n, err := b.Count()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
