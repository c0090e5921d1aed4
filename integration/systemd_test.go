package integration

import (
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// debianPackages are what the Debian 12 test system holds besides
// debootstrap's minbase: systemd to boot, what the package recommends, and
// the tools the test runs in it (sudo for the spec's install path).
var debianPackages = []string{"systemd", "systemd-sysv", "dbus", "netbase", "iproute2", "nftables", "iptables",
	"init-system-helpers", "procps", "sudo"}

// debianTree returns a Debian 12 tree made by debootstrap with
// debianPackages and extra, kept in /var/cache/natmap-test between runs
// (keyed by its package list), and a copy of it for this test to boot.
func debianTree(t *testing.T, extra ...string) string {
	t.Helper()
	packages := append(slices.Clone(debianPackages), extra...)
	key := fnv.New32a()
	key.Write([]byte(strings.Join(packages, ",")))
	cache := filepath.Join("/var/cache/natmap-test", fmt.Sprintf("bookworm-%08x", key.Sum32()))
	if _, err := os.Stat(filepath.Join(cache, "etc/debian_version")); err != nil {
		tmp := cache + ".tmp"
		os.RemoveAll(tmp)
		start := time.Now()
		out, err := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(packages, ","),
			"bookworm", tmp, "http://deb.debian.org/debian").CombinedOutput()
		if err != nil {
			t.Fatalf("debootstrap: %v\n%s", err, out)
		}
		if err := os.Rename(tmp, cache); err != nil {
			t.Fatal(err)
		}
		t.Logf("debootstrap made %s in %v", cache, time.Since(start).Round(time.Second))
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("cp", "-a", cache, root).CombinedOutput(); err != nil {
		t.Fatalf("copying the Debian tree: %v %s", err, out)
	}
	return root
}

// machine is a Debian 12 system booted by systemd-nspawn in a test
// network namespace.
type machine struct {
	t    *testing.T
	pid  int // its systemd, PID 1 inside
	boot *exec.Cmd
	done chan struct{} // closed when systemd-nspawn exits
	// what it was booted with, to boot it again (reboot)
	root, dist string
	ns         *netnstest.NS
}

// reboot shuts the system down and boots it again from the same tree, in
// the same network namespace.
func (m *machine) reboot() {
	m.t.Helper()
	m.boot.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		m.t.Fatal("the container did not shut down within 60s")
	}
	*m = *bootDebian(m.t, m.root, m.ns, m.dist)
}

// bootDebian boots root in the network namespace ns, with dist bound
// read-only at /dist.
func bootDebian(t *testing.T, root string, ns *netnstest.NS, dist string) *machine {
	t.Helper()
	cmd := exec.Command("systemd-nspawn", "--boot", "--directory", root, "--network-namespace-path=/run/netns/"+ns.Name,
		"--capability=CAP_NET_ADMIN", "--register=no", "--keep-unit", "--machine", ns.Name, "--console=passive",
		"--bind-ro="+dist+":/dist")
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	m := &machine{t: t, boot: cmd, done: done, root: root, dist: dist, ns: ns}
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // systemd-nspawn shuts the container down
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		// The container's init is systemd-nspawn's child; read it again
		// each time, as a first child may be a helper that exits.
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		m.pid = 0
		if f := strings.Fields(string(b)); len(f) > 0 {
			m.pid, _ = strconv.Atoi(f[0])
		}
		if m.pid == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the container did not start:\n%s", log)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		state, _ := m.run("systemctl", "is-system-running")
		if s := strings.TrimSpace(state); s == "running" || s == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			failed, _ := m.run("systemctl", "--failed", "--no-legend")
			t.Fatalf("the container's system is %q after 60s:\n%s\n%s", state, failed, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// systemd-nspawn mounts /proc/sys read-only, /proc/sys/net included
	// when the network namespace is given by path; a host's root (the
	// package's postrm, an admin's sysctl) may write the network's
	// settings, so the container's may too: they are the test namespace's
	// own.
	m.must("sh", "-c", "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net")
	return m
}

// run runs a command in the container: its mount, UTS, IPC, network and
// PID namespaces (without the network one, iptables would act on the test
// machine itself).
func (m *machine) run(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(m.pid), "-m", "-u", "-i", "-n", "-p", "--"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in the container: %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (m *machine) must(args ...string) string {
	m.t.Helper()
	out, err := m.run(args...)
	if err != nil {
		m.t.Fatal(err)
	}
	return out
}

// as runs a command as user, with a login's groups.
func (m *machine) as(user string, args ...string) (string, error) {
	return m.run(append([]string{"runuser", "-u", user, "--"}, args...)...)
}

// mainPID is natmap.service's main process, once the unit is active (0
// until then).
func (m *machine) mainPID() int {
	out, _ := m.run("systemctl", "show", "--property=ActiveState,MainPID", "natmap.service")
	if !strings.Contains(out, "ActiveState=active") {
		return 0
	}
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "MainPID="); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(v))
			return pid
		}
	}
	return 0
}

// waitRestarted waits until natmap.service is active with a main process
// other than old.
func (m *machine) waitRestarted(old int, within time.Duration) int {
	m.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if pid := m.mainPID(); pid != 0 && pid != old {
			return pid
		}
		if time.Now().After(deadline) {
			status, _ := m.run("systemctl", "status", "--no-pager", "natmap.service")
			m.t.Fatalf("natmap.service was not active again within %v:\n%s", within, status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stream sends a connection (TCP) or a datagram (UDP) to addr every
// interval from ns until stopped, and counts those not answered by want
// within 5 s (a loaded CI machine, the race detector and builds
// alongside, can stall a reply for seconds without anything being
// dropped).
type stream struct {
	stop       chan struct{}
	wg         sync.WaitGroup
	sent, lost atomic.Int32
}

func startStream(t *testing.T, ns *netnstest.NS, proto, addr, want string, interval time.Duration) *stream {
	s := &stream{stop: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(interval):
			}
			s.sent.Add(1)
			if got, err := dialWithin(ns, proto, addr, 5*time.Second); err != nil || !strings.HasPrefix(got, want+" ") {
				s.lost.Add(1)
				t.Logf("%s %s lost: %q %v", proto, addr, got, err)
			}
		}
	}()
	return s
}

func (s *stream) end() (sent, lost int32) {
	close(s.stop)
	s.wg.Wait()
	return s.sent.Load(), s.lost.Load()
}

// buildPackage builds the Debian package of version with scripts/package
// (lintian checks it there when installed) into the checkout's dist/.
func buildPackage(t *testing.T, version string) string {
	t.Helper()
	cmd := exec.Command("bash", "scripts/package", version)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/package %s: %v\n%s", version, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	deb := filepath.Join("..", lines[len(lines)-1])
	if _, err := os.Stat(deb); err != nil {
		t.Fatalf("scripts/package %s printed %q: %v\n%s", version, lines[len(lines)-1], err, out)
	}
	return deb
}

// TestIntegrationSystemdDebianPackage installs the Debian package in a Debian 12
// system booted by systemd-nspawn in a test network namespace, and drives
// it as an admin would: the service starts through Type=notify; a member of
// the natmap group uses the CLI without sudo and others are refused;
// traffic flows through a forward and keeps flowing through reload,
// restart, a SIGKILL and a hung daemon (the watchdog restarts it), and an
// upgrade; warnings reach journalctl -p warning; remove keeps the rules and
// the state, purge removes them. Then the spec's install path, once.
func TestIntegrationSystemdDebianPackage(t *testing.T) {
	if testBackend() != "nftables" {
		t.Skip("the package test runs once, in the nftables pass")
	}
	netnstest.RequirePrivileges(t, "debootstrap", "systemd-nspawn", "nsenter", "lintian")
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skip("packages are built for amd64 and arm64")
	}
	dist := t.TempDir()
	first, second := buildPackage(t, "0.1.0~test1"), buildPackage(t, "0.1.0~test2")
	for _, f := range []string{first, second, filepath.Join("..", "dist", "build-"+runtime.GOARCH, "lab-ops")} {
		if out, err := exec.Command("cp", f, dist).CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	root := debianTree(t)

	// The container is the router: ext0 towards the client, int0 towards
	// the server.
	l := newLab(t)
	// Forwarding off, as on a fresh host: natmap turns it on (fwd) and
	// purge puts it back.
	l.router.MustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0")
	m := bootDebian(t, root, l.router, dist)
	serve(t, l.server, "svc", serverIP+":25", serverIP+":26")

	m.must("apt-get", "install", "-y", "--no-install-recommends", "/dist/"+filepath.Base(first))
	if pid := m.mainPID(); pid == 0 {
		status, _ := m.run("systemctl", "status", "--no-pager", "natmap.service")
		t.Fatalf("natmap.service is not active after the package's installation:\n%s", status)
	}
	if out := m.must("systemctl", "show", "--property=Type,NotifyAccess,StatusText", "natmap.service"); !strings.Contains(out, "Type=notify") || !strings.Contains(out, "StatusText=0 forwards") {
		t.Errorf("the service's state:\n%s", out)
	}

	// A member of the group uses the CLI without sudo; others may not.
	m.must("useradd", "--create-home", "--groups", "natmap", "alice")
	m.must("useradd", "--create-home", "bob")
	if out, err := m.as("alice", "lab-ops", "natmap", "fwd"); err != nil {
		t.Fatalf("a member of the group: %v %s", err, out)
	}
	if out, err := m.as("alice", "lab-ops", "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25"); err != nil {
		t.Fatalf("a member of the group: %v %s", err, out)
	}
	if out, err := m.as("bob", "lab-ops", "natmap", "ls"); err == nil || !strings.Contains(out, "permission denied") {
		t.Errorf("somebody outside the group: %v %s", err, out)
	}
	expectReach(t, l.client, "tcp", extIP+":25", "svc")

	// A warning natmap logs reaches journalctl -p warning: somebody
	// deletes its table, natmap puts it back.
	m.must("nft", "delete", "table", "inet", "natmap")
	if !waitFor(10*time.Second, func() bool {
		out, _ := m.run("journalctl", "--no-pager", "-p", "warning", "-u", "natmap.service")
		return strings.Contains(out, "restored them")
	}) {
		out, _ := m.run("journalctl", "--no-pager", "-u", "natmap.service")
		t.Errorf("the repair's warning is not in journalctl -p warning:\n%s", out)
	}
	if out, _ := m.run("journalctl", "--no-pager", "-p", "warning", "-u", "natmap.service"); strings.Contains(out, "msg=serving") {
		t.Errorf("info lines under -p warning:\n%s", out)
	}
	expectReach(t, l.client, "tcp", extIP+":25", "svc")

	s := startStream(t, l.client, "tcp", extIP+":25", "svc", 20*time.Millisecond)
	pid := m.mainPID()
	m.must("systemctl", "reload", "natmap.service")
	if now := m.mainPID(); now != pid {
		t.Errorf("reload changed the main process: %d, then %d", pid, now)
	}
	m.must("systemctl", "restart", "natmap.service")
	pid = m.waitRestarted(pid, 30*time.Second)
	m.must("systemctl", "kill", "--signal=KILL", "natmap.service")
	pid = m.waitRestarted(pid, 30*time.Second)
	if out := m.must("lab-ops", "natmap", "ls"); !strings.Contains(out, extIP) {
		t.Errorf("after a SIGKILL and systemd's restart, ls:\n%s", out)
	}

	// A hung daemon: the watchdog (a drop-in shortens it for the test)
	// has systemd kill and restart it.
	m.must("mkdir", "-p", "/etc/systemd/system/natmap.service.d")
	m.must("sh", "-c", "printf '[Service]\\nWatchdogSec=3s\\nTimeoutStopSec=3s\\n' >/etc/systemd/system/natmap.service.d/watchdog.conf")
	m.must("systemctl", "daemon-reload")
	m.must("systemctl", "restart", "natmap.service")
	pid = m.waitRestarted(pid, 30*time.Second)
	time.Sleep(4 * time.Second) // alive: the watchdog is fed
	if now := m.mainPID(); now != pid {
		t.Fatalf("a live daemon was restarted by its watchdog (%d, then %d)", pid, now)
	}
	m.must("systemctl", "kill", "--signal=STOP", "natmap.service")
	pid = m.waitRestarted(pid, 60*time.Second)
	if out, _ := m.run("journalctl", "--no-pager", "-u", "natmap.service"); !strings.Contains(out, "atchdog timeout") {
		t.Errorf("the journal does not say the watchdog fired:\n%s", out)
	}

	// An upgrade keeps the state and drops no connection.
	m.must("apt-get", "install", "-y", "--no-install-recommends", "/dist/"+filepath.Base(second))
	pid = m.waitRestarted(pid, 30*time.Second)
	sent, lost := s.end()
	t.Logf("reload, restart, SIGKILL, watchdog, upgrade: %d connections, %d lost", sent, lost)
	if lost != 0 {
		t.Errorf("%d of %d connections lost", lost, sent)
	}
	if out := m.must("lab-ops", "natmap", "status"); !strings.Contains(out, "0.1.0~test2") {
		t.Errorf("status after the upgrade:\n%s", out)
	}
	if out := m.must("lab-ops", "natmap", "ls"); !strings.Contains(out, extIP) {
		t.Errorf("ls after the upgrade:\n%s", out)
	}

	// Options in /etc/default/natmap: one line and a restart.
	m.must("sh", "-c", "echo NATMAP_METRICS_LISTEN=127.0.0.1:19187 >>/etc/default/natmap")
	m.must("systemctl", "restart", "natmap.service")
	pid = m.waitRestarted(pid, 30*time.Second)
	if !waitFor(5*time.Second, func() bool {
		out, _ := m.run("ss", "-Htln", "sport = :19187")
		return strings.Contains(out, "127.0.0.1:19187")
	}) {
		t.Errorf("NATMAP_METRICS_LISTEN in /etc/default/natmap did not open the metrics port")
	}

	// The iptables backend, one line away; and a policy route: purge must
	// remove natmap's chains and its routing too.
	m.must("sh", "-c", "echo NATMAP_BACKEND=iptables >>/etc/default/natmap")
	m.must("systemctl", "restart", "natmap.service")
	pid = m.waitRestarted(pid, 30*time.Second)
	if out := m.must("lab-ops", "natmap", "status"); !strings.Contains(out, "iptables") {
		t.Errorf("status with NATMAP_BACKEND=iptables:\n%s", out)
	}
	m.must("lab-ops", "natmap", "policy-route", "--src-ip", "10.0.0.103", "--via", serverIP, "--table", "100")
	expectReach(t, l.client, "tcp", extIP+":25", "svc")

	// remove: the service stops, the rules and the state stay.
	m.must("apt-get", "remove", "-y", "natmap")
	if m.mainPID() != 0 {
		t.Error("natmap.service still runs after apt-get remove")
	}
	expectReach(t, l.client, "tcp", extIP+":25", "svc")
	m.must("test", "-f", "/var/lib/natmap/state.json")
	// purge: natmap's state, table and settings go.
	m.must("apt-get", "purge", "-y", "natmap")
	expectNoReach(t, l.client, "tcp", extIP+":25")
	if _, err := m.run("nft", "list", "table", "inet", "natmap"); err == nil {
		t.Error("the table inet natmap stayed after purge")
	}
	for _, save := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		if out, _ := m.run(save); strings.Contains(out, "NATMAP") || strings.Contains(out, "natmap") {
			t.Errorf("%s after purge:\n%s", save, out)
		}
	}
	if out := m.must("ip", "rule"); strings.Contains(out, "proto 212") || strings.Contains(out, "lookup 100") {
		t.Errorf("natmap's policy routing stayed after purge:\n%s", out)
	}
	if out, _ := m.run("ip", "route", "show", "table", "100"); strings.TrimSpace(out) != "" {
		t.Errorf("natmap's routing table stayed after purge:\n%s", out)
	}
	if _, err := m.run("test", "-e", "/var/lib/natmap"); err == nil {
		t.Error("/var/lib/natmap stayed after purge")
	}
	if out := m.must("sysctl", "-n", "net.ipv4.ip_forward"); strings.TrimSpace(out) != "0" {
		t.Errorf("net.ipv4.ip_forward is %s after purge, want 0 as natmap found it", out)
	}

	// The spec's path: sudo lab-ops natmap install, from the binary.
	out := m.must("sudo", "/dist/lab-ops", "natmap", "install", "--user", "alice")
	if pid := m.mainPID(); pid == 0 {
		t.Fatalf("install did not start natmap.service:\n%s", out)
	}
	if out, err := m.as("alice", "lab-ops", "natmap", "dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "26"); err != nil {
		t.Fatalf("a member after install: %v %s", err, out)
	}
	m.must("lab-ops", "natmap", "fwd")
	expectReach(t, l.client, "tcp", extIP+":26", "svc")
	m.must("sudo", "lab-ops", "natmap", "uninstall", "--purge")
	expectNoReach(t, l.client, "tcp", extIP+":26")
}
