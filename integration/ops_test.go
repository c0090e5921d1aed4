package integration

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestReadinessAndReload: READY=1 reaches the service manager only once
// the restored rules are in the kernel, and SIGHUP (systemctl reload)
// makes the daemon follow an edited state file in one change, or change
// nothing when the file is bad.
func TestReadinessAndReload(t *testing.T) {
	l := newLab(t)
	serve(t, l.server, "one", serverIP+":2525")
	serve(t, l.server, "two", "10.0.0.102:2525")
	l.startDaemon()
	l.mustCLI("dnat", "--ext-ip", extIP, "--int-ip", serverIP, "--ports", "2525")
	l.stopDaemon()
	l.dropNAT() // the rules are gone: only a restore brings them back

	msgs := l.notifySocket(t)
	l.startDaemon()
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
