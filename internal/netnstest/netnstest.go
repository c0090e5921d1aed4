// Package netnstest builds throwaway network namespaces for natmap's
// privileged tests. Every namespace it makes is named by the test, deleted
// by that name when the test ends, and never connected to the root
// namespace.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// RequirePrivileges skips the test when not root or when a tool is missing,
// and fails it instead when CI is set, so a green CI means the test ran.
func RequirePrivileges(t testing.TB, tools ...string) {
	t.Helper()
	miss := func(format string, args ...any) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but "+format, args...)
		}
		t.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		miss("the test needs root")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			miss("the test needs %s: %v", tool, err)
		}
	}
}

// Unique returns a short random suffix for names (interface names are at
// most 15 bytes).
func Unique() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// NS is a network namespace made for one test.
type NS struct {
	// Name is the namespace's name under /run/netns.
	Name string
	// Path, when set, is the namespace's file instead (such as
	// /proc/PID/ns/net of a container); only Do uses it.
	Path string
}

// New creates a namespace named prefix-XXXXXX with its loopback up and
// deletes it by that name when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	ns := &NS{Name: prefix + "-" + Unique()}
	MustRun(t, "ip", "netns", "add", ns.Name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v: %s", ns.Name, err, out)
		}
	})
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	// No duplicate address detection: addresses are usable at once.
	ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return ns
}

// Cmd returns a command that runs inside the namespace.
func (ns *NS) Cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (ns *NS) Run(name string, args ...string) (string, error) {
	out, err := ns.Cmd(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s %s: %w: %s", ns.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// MustRun runs a command in the caller's namespace and fails the test on
// error.
func MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Open returns a file descriptor of the namespace; close it when done.
func (ns *NS) Open(t testing.TB) *os.File {
	t.Helper()
	f, err := os.Open("/run/netns/" + ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn makes
// belong to the namespace and may be used from anywhere afterwards. The
// thread is never switched back: it ends with its goroutine.
func (ns *NS) Do(fn func() error) error {
	path := ns.Path
	if path == "" {
		path = "/run/netns/" + ns.Name
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", ns.Name, err)
	}
	defer h.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Link joins two namespaces with a veth pair: nameA in a, nameB in b, each
// given its address (CIDR form, may be empty) and brought up. The pair is
// made inside a, so it never appears in the root namespace.
func Link(t testing.TB, a *NS, nameA, addrA string, b *NS, nameB, addrB string) {
	t.Helper()
	a.MustRun(t, "ip", "link", "add", nameA, "type", "veth", "peer", "name", nameB, "netns", b.Name)
	for _, side := range []struct {
		ns         *NS
		name, addr string
	}{{a, nameA, addrA}, {b, nameB, addrB}} {
		side.ns.AddAddr(t, side.name, side.addr)
		side.ns.MustRun(t, "ip", "link", "set", side.name, "up")
	}
}

// AddAddr adds an address in CIDR form to a link; "" adds nothing.
func (ns *NS) AddAddr(t testing.TB, link, addr string) {
	t.Helper()
	if addr == "" {
		return
	}
	ns.MustRun(t, "ip", "addr", "add", addr, "dev", link)
}
