package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// unitSettings reads the unit install writes (install --dry-run prints it)
// as key -> values, in order.
func unitSettings(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command(binary, "natmap", "install", "--dry-run", "--root", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("install --dry-run: %v\n%s", err, out)
	}
	settings := map[string][]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && regexp.MustCompile(`^[A-Z][A-Za-z]+$`).MatchString(k) {
			settings[k] = append(settings[k], v)
		}
	}
	if len(settings["ExecStart"]) != 1 {
		t.Fatalf("no ExecStart in the unit:\n%s", out)
	}
	return settings
}

// syscallGroups expands systemd's syscall groups (@name) to syscalls.
type syscallGroups map[string][]string

func (g syscallGroups) expand(t *testing.T, name string) []string {
	t.Helper()
	if !strings.HasPrefix(name, "@") {
		return []string{name}
	}
	if calls, ok := g[name]; ok {
		return calls
	}
	out, err := exec.Command("systemd-analyze", "syscall-filter", name).Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter %s: %v", name, err)
	}
	var calls []string
	for _, line := range strings.Split(string(out), "\n")[1:] {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		calls = append(calls, g.expand(t, line)...)
	}
	g[name] = calls
	return calls
}

// allowedSyscalls applies the unit's SystemCallFilter lines as systemd
// does: the first allow list, then each line adds (or, with ~, removes).
func allowedSyscalls(t *testing.T, lines []string) map[string]bool {
	g := syscallGroups{}
	allowed := map[string]bool{}
	for _, line := range lines {
		deny := strings.HasPrefix(line, "~")
		for _, name := range strings.Fields(strings.TrimPrefix(line, "~")) {
			for _, c := range g.expand(t, name) {
				allowed[c] = !deny
			}
		}
	}
	return allowed
}

// TestIntegrationUnitSandbox runs the daemon under the limits natmap.service sets,
// as far as they can be set without systemd: its capability bounding set,
// no new privileges, a read-only file system but for the unit's state,
// runtime and writable paths (moved under a temporary directory), no
// /home or /root, and its supplementary group. The daemon then does what
// it does on a host (restores, forwards a port below 1024 with traffic
// through it, enables forwarding, saves, reloads), traced by strace: every
// system call must pass the unit's SystemCallFilter, every socket must be
// of a family RestrictAddressFamilies allows, and no memory may be both
// writable and executable (MemoryDenyWriteExecute).
func TestIntegrationUnitSandbox(t *testing.T) {
	netnstest.RequirePrivileges(t, "nft", "strace", "setpriv", "unshare", "findmnt", "systemd-analyze")
	unit := unitSettings(t)
	l := newLab(t)
	serve(t, l.server, "server", serverIP+":2525")

	// The unit's paths, moved under top.
	top := t.TempDir()
	moved := func(p string) string { return filepath.Join(top, p) }
	writable := []string{moved("/var/lib/" + unit["StateDirectory"][0]), moved("/run/" + unit["RuntimeDirectory"][0])}
	for _, p := range strings.Fields(strings.Join(unit["ReadWritePaths"], " ")) {
		writable = append(writable, moved(strings.TrimPrefix(p, "-")))
	}
	for _, p := range writable {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	traceDir := filepath.Join(top, "trace")
	os.Mkdir(traceDir, 0o700)
	trace := filepath.Join(traceDir, "strace")

	args := strings.Fields(unit["ExecStart"][0])
	nogroup, err := user.LookupGroup("nogroup") // stands in for the natmap group
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "/var/lib/"), strings.HasPrefix(a, "/run/"):
			args[i] = moved(a)
		}
	}
	l.socket = args[slices.Index(args, "--socket")+1]
	savePath := moved("/etc/natmap/natmap.nft")
	if testBackend() != "nftables" {
		savePath = moved("/etc/iptables/rules.v4")
	}
	// The unit leaves the state file and the socket's group at their
	// defaults (or /etc/default/natmap): the moved state directory, and
	// the group standing in for natmap.
	args = append(args, "--state", moved("/var/lib/"+unit["StateDirectory"][0]+"/state.json"), "--socket-group", nogroup.Name)
	args = append(args, "--save-path", savePath, "--retry-interval", "1s",
		"--docker-host", "unix://"+filepath.Join(l.dir, "no-docker.sock")) // never the host's own Docker
	args = append(args, backendArgs()...)
	args[0] = binary
	var caps []string
	for _, c := range strings.Fields(unit["CapabilityBoundingSet"][0]) {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	if unit["NoNewPrivileges"][0] != "yes" || unit["ProtectSystem"][0] != "strict" || unit["ProtectHome"][0] != "yes" {
		t.Fatalf("the unit's sandbox changed; this test emulates NoNewPrivileges=yes, ProtectSystem=strict, ProtectHome=yes: %v", unit)
	}
	// ExecStartPre=+/bin/touch /run/xtables.lock runs outside the sandbox.
	if f, err := os.OpenFile("/run/xtables.lock", os.O_CREATE, 0o600); err == nil {
		f.Close()
	}

	script := `set -e
mount --make-rprivate /
for w in ` + strings.Join(append(writable, traceDir), " ") + `; do mount --bind "$w" "$w"; done
findmnt -rno TARGET | while read -r mp; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac
  case " ` + strings.Join(append(writable, traceDir), " ") + ` " in *" $mp "*) continue;; esac
  mount -o remount,bind,ro "$mp"
done
for h in /home /root /run/user; do if [ -d "$h" ]; then mount -t tmpfs -o ro,mode=0755 tmpfs "$h"; fi; done
if touch /var/lib/.natmap-sandbox-probe 2>/dev/null || touch /etc/.natmap-sandbox-probe 2>/dev/null; then
  echo "the sandbox left / writable" >&2; exit 99
fi
exec strace -f -qq -o ` + trace + ` setpriv --bounding-set=-all,` + strings.Join(caps, ",") +
		` --no-new-privs --groups=` + nogroup.Gid + ` -- "$@"`
	cmd := l.router.Cmd("unshare", append([]string{"--mount", "--", "sh", "-c", script, "sandbox"}, args...)...)
	l.daemonLog = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = l.daemonLog, l.daemonLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	l.daemon, l.daemonDone = cmd, done
	// The command is strace; the daemon is its child, and gets the signals.
	var daemon *os.Process
	t.Cleanup(func() {
		if daemon != nil {
			daemon.Kill()
		}
		l.stopDaemon()
	})
	if !waitFor(20*time.Second, func() bool { _, _, code := l.cli("status"); return code == 0 }) {
		t.Fatalf("the sandboxed daemon did not answer:\n%s", l.daemonLog)
	}
	kids, err := exec.Command("pgrep", "-P", fmt.Sprint(cmd.Process.Pid)).Output()
	if err != nil || len(strings.Fields(string(kids))) != 1 {
		t.Fatalf("finding the daemon under strace: %v %q", err, kids)
	}
	var pid int
	fmt.Sscan(string(kids), &pid)
	daemon, _ = os.FindProcess(pid)

	l.mustCLI("fwd")
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "25:2525")
	if got := expectReach(t, l.client, "tcp", extIP+":25", "server"); got != clientIP {
		t.Errorf("the server saw %s, want the client's %s", got, clientIP)
	}
	l.mustCLI("snat", "--int-ip", "10.0.0.102", "--ext-ip", extIP, "--ext-if", l.extIf)
	l.mustCLI("save")
	if _, err := os.Stat(savePath); err != nil {
		t.Errorf("save wrote nothing where the unit lets it: %v", err)
	}
	if fi, err := os.Stat(l.socket); err != nil || fmt.Sprint(fi.Sys().(*syscall.Stat_t).Gid) != nogroup.Gid || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket %s: %v, want mode 0660 and group %s (given without CAP_CHOWN)", l.socket, err, nogroup.Name)
	}
	if err := daemon.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return strings.Contains(l.daemonLog.String(), "configuration reloaded") }) {
		t.Errorf("no reload after SIGHUP:\n%s", l.daemonLog)
	}
	daemon.Signal(syscall.SIGTERM)
	select {
	case <-done:
		l.daemon, daemon = nil, nil
	case <-time.After(10 * time.Second):
		t.Fatalf("the sandboxed daemon ignored SIGTERM:\n%s", l.daemonLog)
	}
	if strings.Contains(l.daemonLog.String(), "level=ERROR") || strings.Contains(l.daemonLog.String(), "level=WARN") {
		t.Errorf("the sandboxed daemon complained:\n%s", l.daemonLog)
	}

	checkTrace(t, trace, binary, allowedSyscalls(t, unit["SystemCallFilter"]),
		strings.Fields(unit["RestrictAddressFamilies"][0]))
}

// checkTrace reads strace's log: the first process counts from its execve
// of bin (before that it is setpriv), its children throughout.
func checkTrace(t *testing.T, path, bin string, allowed map[string]bool, families []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	call := regexp.MustCompile(`^(\d+)\s+([a-z0-9_]+)\((.*)`)
	var first string
	started := false
	calls := map[string]int{}
	bad := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := call.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pid, name, rest := m[1], m[2], m[3]
		if first == "" {
			first = pid
		}
		if pid == first && !started {
			started = name == "execve" && strings.HasPrefix(rest, `"`+bin+`"`)
			if !started {
				continue
			}
		}
		calls[name]++
		if !allowed[name] {
			bad["system call "+name+" (SystemCallFilter)"] = true
		}
		if name == "socket" {
			fam, _, _ := strings.Cut(rest, ",")
			if !slices.Contains(families, fam) {
				bad["socket family "+fam+" (RestrictAddressFamilies)"] = true
			}
		}
		if (name == "mmap" || name == "mprotect") && strings.Contains(rest, "PROT_WRITE|PROT_EXEC") {
			bad["writable and executable memory (MemoryDenyWriteExecute)"] = true
		}
	}
	if !started {
		t.Fatalf("strace saw no execve of %s", bin)
	}
	t.Logf("the sandboxed daemon made %d kinds of system calls; the unit forbids %d of them", len(calls), len(bad))
	for b := range bad {
		t.Errorf("the daemon used %s, which the unit forbids", b)
	}
}
