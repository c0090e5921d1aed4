package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/ptytest"
	"github.com/lab-ops/natmap/nat"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// notifySocket listens where the daemon sends sd_notify messages and
// passes each message, with the kernel's rules as they were when it came,
// to the returned channel.
func (l *lab) notifySocket(t *testing.T) <-chan [2]string {
	t.Helper()
	path := filepath.Join(l.dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan [2]string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- [2]string{string(buf[:n]), l.kernelRules()}
		}
	}()
	return msgs
}

func nextMessage(t *testing.T, msgs <-chan [2]string, want string) (rules string) {
	t.Helper()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed before %s", want)
			}
			if strings.Contains(m[0], want) {
				return m[1]
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s from the daemon within 10s", want)
		}
	}
}

// TestIntegrationReadinessAndReload: READY=1 reaches the service manager only once
// the restored rules are in the kernel, and SIGHUP (systemctl reload)
// makes the daemon follow an edited state file in one change, or change
// nothing when the file is bad.
func TestIntegrationReadinessAndReload(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "one", serverIP+":2525")
	serve(t, l.server, "two", "10.0.0.102:2525")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "2525")
	l.stopDaemon()
	l.dropNAT() // the rules are gone: only a restore brings them back

	msgs := l.notifySocket(t)
	l.startDaemon()
	nextMessage(t, msgs, "STATUS=restoring 1 rules from "+l.state)
	rules := nextMessage(t, msgs, "READY=1")
	if !strings.Contains(rules, "2525") {
		t.Fatalf("READY=1 came before the forward was in the kernel:\n%s", rules)
	}
	expectReach(t, l.client, "tcp", extIP+":2525", "one")

	saved, err := os.ReadFile(l.state)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.ReplaceAll(string(saved), `"`+serverIP+`"`, `"10.0.0.102"`)
	if edited == string(saved) {
		t.Fatalf("the state file does not name %s:\n%s", serverIP, saved)
	}
	if err := os.WriteFile(l.state, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.daemon.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	nextMessage(t, msgs, "RELOADING=1")
	nextMessage(t, msgs, "READY=1")
	expectReach(t, l.client, "tcp", extIP+":2525", "two")
	if out := l.mustCLI("ls"); !strings.Contains(out, "10.0.0.102") || strings.Contains(out, serverIP+" ") {
		t.Errorf("ls after reload:\n%s", out)
	}

	// A bad file changes nothing.
	before := l.kernelRules()
	if err := os.WriteFile(l.state, []byte(`{"version": 1, "dnats": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	l.daemon.Process.Signal(syscall.SIGHUP)
	nextMessage(t, msgs, "RELOADING=1")
	nextMessage(t, msgs, "READY=1")
	if !strings.Contains(l.daemonLog.String(), "reload refused, nothing changed") {
		t.Errorf("a bad state file was not reported:\n%s", l.daemonLog)
	}
	if after := l.kernelRules(); after != before {
		t.Errorf("a refused reload changed the kernel:\n%s\nwant\n%s", after, before)
	}
	expectReach(t, l.client, "tcp", extIP+":2525", "two")
}

// scrape reads the metrics in Prometheus' text format.
func scrape(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the metrics do not parse: %v\n%s", err, text)
	}
	return fams
}

// value is the value of the family's metric with the given labels (name,
// value pairs); for a histogram, its count.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.Label {
				found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestIntegrationMetrics: GET /metrics on the socket and on --metrics-listen parses
// as Prometheus text, and its numbers move with what the daemon does.
func TestIntegrationMetrics(t *testing.T) {
	l := newLab(t)
	l.startDaemon("--metrics-listen", "127.0.0.1:19187", "--check-interval", "100ms")
	metrics := func() map[string]*dto.MetricFamily {
		code, text := l.api("GET", "/metrics", "")
		if code != 200 {
			t.Fatalf("GET /metrics: %d %s", code, text)
		}
		return scrape(t, text)
	}
	m := metrics()
	if v := value(m, "natmap_rules", "kind", "dnat", "status", "active"); v != 0 {
		t.Fatalf("natmap_rules{dnat,active} = %v at start, want 0", v)
	}
	applies := max(value(m, "natmap_kernel_apply_seconds", "op", "apply"), 0) // absent before the first

	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,465")
	// A port another program holds is a reservation failure.
	var held net.Listener
	if err := l.router.Do(func() (err error) { held, err = net.Listen("tcp", extIP+":587"); return err }); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if _, _, code := l.cli("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "587"); code == 0 {
		t.Fatal("a dnat on a held port was accepted")
	}
	l.dropNAT()
	if !waitFor(5*time.Second, func() bool { return value(metrics(), "natmap_kernel_repairs_total") == 1 }) {
		t.Fatalf("natmap_kernel_repairs_total did not reach 1:\n%s", l.daemonLog)
	}

	m = metrics()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"natmap_rules", []string{"kind", "dnat", "status", "active"}, 1},
		{"natmap_forwards", []string{"status", "active"}, 2},
		{"natmap_changes_applied_total", nil, 1},
		{"natmap_reservation_failures_total", nil, 1},
		{"natmap_reserved_ports", nil, 2},
		{"natmap_docker_connected", nil, 0},
		{"natmap_docker_reconnects_total", nil, 0},
		{"natmap_build_info", []string{"backend", status(t, l).Backend, "version", status(t, l).Version}, 1},
	} {
		if got := value(m, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := value(m, "natmap_kernel_apply_seconds", "op", "apply"); got != applies+1 {
		t.Errorf("kernel applies observed: %v, want %v", got, applies+1)
	}

	// The same over TCP, for a scraper.
	var conn net.Conn
	if err := l.router.Do(func() (err error) { conn, err = net.Dial("tcp", "127.0.0.1:19187"); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /metrics HTTP/1.0\r\nHost: natmap\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics over TCP: %d %v", resp.StatusCode, err)
	}
	text := string(b)
	if got := value(scrape(t, text), "natmap_rules", "kind", "dnat", "status", "active"); got != 1 {
		t.Errorf("over TCP natmap_rules{dnat,active} = %v, want 1", got)
	}

	// The TCP port takes a few connections only: idle ones beyond 16 are
	// closed at once, and the socket still answers.
	var idle []net.Conn
	for i := 0; i < 24; i++ {
		var c net.Conn
		if err := l.router.Do(func() (err error) { c, err = net.Dial("tcp", "127.0.0.1:19187"); return err }); err != nil {
			break
		}
		idle = append(idle, c)
	}
	for _, c := range idle {
		defer c.Close()
	}
	if closed := len(idle) - keptOpen(idle); closed < 24-16 {
		t.Errorf("%d of 24 idle scraper connections were closed, want at least 8", closed)
	}
	if code, _ := l.api("GET", "/metrics", ""); code != 200 {
		t.Errorf("GET /metrics on the socket while the TCP port is full: %d", code)
	}
}

// TestIntegrationLsCounters: ls --counters shows the packets and bytes each forward's
// clients sent, from the kernel, growing with real traffic.
func TestIntegrationLsCounters(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "server", serverIP+":25")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	counters := func() (packets, bytes uint64, ok bool) {
		var list nat.ListResponse
		if err := json.Unmarshal([]byte(l.mustCLI("--json", "ls", "--counters")), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Dnats) != 1 || list.Dnats[0].Counter == nil {
			return 0, 0, false
		}
		return list.Dnats[0].Packets, list.Dnats[0].Bytes, true
	}
	p0, _, ok := counters()
	if !ok || p0 != 0 {
		t.Fatalf("counters before any traffic: %d packets (ok %v), want 0", p0, ok)
	}
	const conns = 5
	for range conns {
		expectReach(t, l.client, "tcp", extIP+":25", "server")
	}
	// Every connection sends at least SYN, ACK and FIN from the client.
	if !waitFor(2*time.Second, func() bool { p, _, _ := counters(); return p >= 3*conns }) {
		p, b, _ := counters()
		t.Fatalf("after %d connections: %d packets, %d bytes; want at least %d packets", conns, p, b, 3*conns)
	}
	p, b, _ := counters()
	t.Logf("%d connections: %d packets, %d bytes counted", conns, p, b)
	if b < 40*p {
		t.Errorf("%d bytes for %d packets", b, p)
	}
	if out := l.mustCLI("ls", "--counters"); !strings.Contains(out, "PACKETS") || !strings.Contains(out, fmt.Sprint(p)) {
		t.Errorf("ls --counters:\n%s", out)
	}
	if out := l.mustCLI("ls"); strings.Contains(out, "PACKETS") {
		t.Errorf("plain ls shows counters:\n%s", out)
	}
}

// A SIGHUP that arrives while the daemon starts waits for readiness and
// reloads then; it does not kill the daemon (systemd would not restart a
// clean exit).
func TestIntegrationSIGHUPDuringStart(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "web", serverIP+":80")
	var rules []string
	for i := 0; i < 40; i++ {
		rules = append(rules, fmt.Sprintf(`{"ext_ip":"%s","int_ip":"10.0.1.%d","ports":"%d-%d","proto":"tcp"}`, extIP, i+1, 20000+i*100, 20000+i*100+99))
	}
	rules = append(rules, fmt.Sprintf(`{"ext_ip":"%s","int_ip":"%s","ports":"8080:80","proto":"tcp"}`, extIP, serverIP))
	if err := os.WriteFile(l.state, []byte(`{"version": 1, "dnats": [`+strings.Join(rules, ",")+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	// The signal goes once the daemon runs (it logged its backend) and
	// before it is ready: it is still restoring 4,000 forwards.
	sent := make(chan bool, 1)
	l.spawned = func(p *os.Process) {
		go func() {
			waitFor(5*time.Second, func() bool { return strings.Contains(l.daemonLog.String(), "backend chosen") })
			_, _, err := l.tryAPI("GET", "/status", "")
			sent <- err != nil // not serving yet
			p.Signal(syscall.SIGHUP)
		}()
	}
	l.startDaemon()
	if !<-sent {
		t.Log("the daemon was ready before the signal went; the test proves less this time")
	}
	l.spawned = nil
	if !waitFor(5*time.Second, func() bool { return strings.Contains(l.daemonLog.String(), "configuration reloaded") }) {
		t.Errorf("the SIGHUP sent during start was not taken as a reload once ready:\n%s", l.daemonLog)
	}
	select {
	case err := <-l.daemonDone:
		l.daemon = nil
		t.Fatalf("the daemon exited: %v\n%s", err, l.daemonLog)
	default:
	}
	expectReach(t, l.client, "tcp", extIP+":8080", "web")
}

// A Docker engine that accepts connections and never answers is reported
// as not answering within --docker-timeout, in status, metrics and a 503,
// and static rules keep working meanwhile.
func TestIntegrationDockerWedged(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "web", serverIP+":80")
	wedged := filepath.Join(l.dir, "wedged.sock")
	ln, err := net.Listen("unix", wedged)
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	l.startDaemon("--docker-host", "unix://"+wedged, "--docker-timeout", "1s")
	start := time.Now()
	_, errOut, code := l.cli("docker", "add", "web", "8080:80")
	if code != 1 || !strings.Contains(errOut, "Docker is not available") {
		t.Errorf("docker add with a wedged engine: exit %d %s", code, errOut)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("docker add with a wedged engine took %s", took)
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(status(t, l).Docker, "did not answer within 1s") }) {
		t.Errorf("status with a wedged engine: docker %q", status(t, l).Docker)
	}
	_, text := l.api("GET", "/metrics", "")
	if !strings.Contains(text, "natmap_docker_connected 0") {
		t.Errorf("metrics with a wedged engine:\n%s", text)
	}
	// Static rules are not held up.
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "8081:80")
	expectReach(t, l.client, "tcp", extIP+":8081", "web")
}

// Scripts can tell outcomes apart: a delete of what is absent with
// --if-exists is exit 0 (a set -e script deletes and re-adds on every
// run); JSON errors carry a code; a daemon that is not there is exit 4
// and code daemon_unreachable, a wrong command line exit 2 and code usage.
func TestIntegrationScriptsExitCodesAndErrorCodes(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "mail", serverIP+":25")
	l.startDaemon()
	rule := []string{"dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25"}
	for run := 0; run < 2; run++ {
		if _, errOut, code := l.cli(append(slices.Clone(rule), "--delete", "--if-exists")...); code != 0 {
			t.Fatalf("run %d: delete --if-exists: exit %d: %s", run, code, errOut)
		}
		l.mustCLI(rule...)
	}
	expectReach(t, l.client, "tcp", extIP+":25", "mail")
	if _, errOut, code := l.cli(append(slices.Clone(rule), "--if-exists")...); code != 2 || !strings.Contains(errOut, "--if-exists goes with --delete") {
		t.Errorf("--if-exists without --delete: exit %d: %s", code, errOut)
	}
	errorOf := func(args ...string) (nat.ErrorResponse, int) {
		out, _, code := l.cli(append([]string{"--json"}, args...)...)
		var e nat.ErrorResponse
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("%v: not a JSON error: %v\n%s", args, err, out)
		}
		return e, code
	}
	// Absent, without --if-exists: not_found, exit 1.
	if e, code := errorOf("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "26", "--delete"); code != 1 || e.Code != "not_found" {
		t.Errorf("deleting an absent rule: exit %d, %+v", code, e)
	}
	// Another program holds the port: port_in_use.
	var held net.Listener
	if err := l.router.Do(func() (err error) { held, err = net.Listen("tcp", extIP+":587"); return err }); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if e, code := errorOf("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "587"); code != 1 || e.Code != "port_in_use" {
		t.Errorf("a held port: exit %d, %+v", code, e)
	}
	// The same endpoint to another target: conflict.
	if e, code := errorOf("dnat", "--ext-ip", extIP, "--int-ip", "10.0.0.102", "--ports", "25"); code != 1 || e.Code != "conflict" {
		t.Errorf("a forward to two targets: exit %d, %+v", code, e)
	}
	// Bad input the daemon refuses: invalid; the CLI's own: usage, exit 2.
	if e, code := errorOf("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "0"); code != 1 || e.Code != "invalid" {
		t.Errorf("port 0: exit %d, %+v", code, e)
	}
	if e, code := errorOf("dnat", "--ext-ip", "203.0.113.999", "--int-ip", serverIP, "--ports", "80"); code != 1 || e.Code != "invalid" ||
		e.Field != "--ext-ip" || !strings.HasPrefix(e.Error, "--ext-ip: ") {
		t.Errorf("a bad --ext-ip: exit %d, %+v; want the field named as typed", code, e)
	}
	if e, code := errorOf("dnat", "--int-ip", serverIP); code != 2 || e.Code != "usage" {
		t.Errorf("missing --ports: exit %d, %+v", code, e)
	}
	// No daemon.
	if e, code := errorOf("--socket", filepath.Join(l.dir, "none.sock"), "ls"); code != 4 || e.Code != "daemon_unreachable" {
		t.Errorf("no daemon: exit %d, %+v", code, e)
	}
	if _, errOut, code := l.cli("--socket", filepath.Join(l.dir, "none.sock"), "ls"); code != 4 || !strings.Contains(errOut, "cannot reach the natmap daemon") {
		t.Errorf("no daemon, text: exit %d: %s", code, errOut)
	}
}

// A script asks whether a rule or mapping is there by exit code (--check:
// 0 there, 1 not, 2 a wrong question), removes a mapping that may be
// absent (docker rm --if-exists), and round-trips the configuration as
// JSON (export --json, then apply and diff read it).
func TestIntegrationScriptsCheckQueries(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	dnat := []string{"dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,465"}
	snat := []string{"snat", "--int-ip", serverIP, "--ext-if", "ext0", "--ext-ip", extIP}
	hairpin := []string{"hairpin", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25"}
	route := []string{"policy-route", "--src-ip", "10.0.0.50", "--via", serverIP, "--table", "100"}
	check := func(want int, args ...string) string {
		t.Helper()
		out, errOut, code := l.cli(append(slices.Clone(args), "--check")...)
		if code != want {
			t.Errorf("%v --check: exit %d, want %d\n%s%s", args, code, want, out, errOut)
		}
		return out
	}
	for _, rule := range [][]string{dnat, snat, hairpin, route} {
		check(1, rule...)
	}
	check(1, "docker", "rm", "svc", "8088")
	for _, rule := range [][]string{dnat, snat, hairpin, route} {
		l.mustCLI(rule...)
	}
	l.mustCLI("docker", "add", "8088:"+serverIP+":80", "--name", "svc")
	before := l.kernelRules()
	for _, rule := range [][]string{dnat, snat, hairpin, route} {
		check(0, rule...)
	}
	if out := check(0, "docker", "rm", "svc", "8088"); !strings.Contains(out, "present: id ") {
		t.Errorf("docker rm --check of a mapping there: %s", out)
	}
	check(0, "docker", "rm", "--name", "svc", "8088/tcp")
	// A part of a rule is there; a port it does not forward is not.
	check(0, "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "465")
	check(1, "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587")
	check(1, "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--proto", "udp")
	check(1, "snat", "--int-ip", serverIP, "--ext-if", "ext0")
	check(1, "docker", "rm", "svc", "8088/udp")
	// A wrong question is never "absent".
	check(2, "dnat", "--ext-ip", "203.0.113.999", "--int-ip", serverIP, "--ports", "25")
	check(2, "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--delete")
	check(2, "docker", "rm", "svc", "http")
	if _, _, code := l.cli("--socket", filepath.Join(l.dir, "none.sock"), "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25", "--check"); code != 4 {
		t.Errorf("--check with no daemon: exit %d, want 4", code)
	}
	// JSON says the same.
	out, _, _ := l.cli("--json", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25,587", "--check")
	var absent struct {
		Present bool   `json:"present"`
		Reason  string `json:"reason"`
	}
	if err := json.Unmarshal([]byte(out), &absent); err != nil || absent.Present || !strings.Contains(absent.Reason, "port 587/tcp is not forwarded") {
		t.Errorf("--json --check of an absent port: %v %+v\n%s", err, absent, out)
	}
	if after := l.kernelRules(); after != before {
		t.Errorf("checks changed the kernel's rules:\n%s", after)
	}

	// docker rm --if-exists: a mapping that is not there is no error.
	for run := 0; run < 2; run++ {
		if _, errOut, code := l.cli("docker", "rm", "svc", "8088", "--if-exists"); code != 0 {
			t.Fatalf("run %d: docker rm --if-exists: exit %d: %s", run, code, errOut)
		}
	}
	check(1, "docker", "rm", "svc", "8088")

	// export --json is a configuration file apply and diff read.
	exported := filepath.Join(l.dir, "natmap.json")
	l.mustCLI("--json", "export", "-o", exported)
	if out, _, code := l.cli("diff", "-f", exported); code != 0 {
		t.Errorf("diff against the exported JSON: exit %d\n%s", code, out)
	}
	if out := l.mustCLI("--json", "export"); !json.Valid([]byte(out)) || !strings.Contains(out, `"int_ip": "10.0.0.101"`) {
		t.Errorf("export --json printed:\n%s", out)
	}
	l.mustCLI("clear")
	l.mustCLI("apply", "-f", exported)
	for _, rule := range [][]string{dnat, snat, hairpin, route} {
		check(0, rule...)
	}
}

// apply --prune on a terminal shows the rules it would remove and asks;
// declined, nothing changes.
func TestIntegrationApplyPruneAsks(t *testing.T) {
	l := newLab(t)
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", "10.0.0.102", "--ports", "80")
	file := filepath.Join(l.dir, "keep.yaml")
	if err := os.WriteFile(file, []byte("version: 1\ndnat:\n  - ext_ip: "+extIP+"\n    int_ip: "+serverIP+"\n    ports: \"25\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := l.kernelRules()
	prune := func(typed string) (string, int) {
		cmd := exec.Command(binary, "natmap", "--socket", l.socket, "apply", "-f", file, "--prune")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		code := ptytest.Typed(t, cmd, typed)
		return out.String(), code
	}
	out, code := prune("n\n")
	if code != 1 || !strings.Contains(out, "- dnat tcp "+extIP+" ports 80 -> 10.0.0.102\n") || !strings.Contains(out, "removes this rule") {
		t.Errorf("apply --prune, declined: exit %d:\n%s", code, out)
	}
	if after := l.kernelRules(); after != before {
		t.Errorf("a declined apply --prune changed the rules:\n%s", after)
	}
	if out, code = prune("y\n"); code != 0 || !strings.Contains(out, "removed 1") {
		t.Errorf("apply --prune, confirmed: exit %d:\n%s", code, out)
	}
	// Nothing left to remove: nothing to ask.
	if out, code = prune(""); code != 0 || strings.Contains(out, "Go on?") {
		t.Errorf("apply --prune with nothing to remove: exit %d:\n%s", code, out)
	}
}
