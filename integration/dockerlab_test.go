package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
)

// The Docker suite runs a real Docker engine (Debian's docker.io) inside a
// network namespace of its own (entered with nsenter, which keeps the
// cgroup mounts dockerd needs), so Docker's bridge, its iptables rules and
// natmap's DOCKER-USER rule never touch the root namespace. The test image
// is built FROM scratch around internal/echoserver with `docker import`.

const dockerImage = "natmap-test:latest"

// engine is the Docker engine shared by the Docker tests of this run.
type engine struct {
	host   *netnstest.NS // the Docker host's namespace
	dir    string
	sock   string
	cmd    *exec.Cmd
	done   chan error
	log    *syncBuffer
	failed error
}

var (
	engineOnce sync.Once
	theEngine  *engine
)

// dockerHost returns the shared engine, starting it on first use. The
// engine's namespace and data are removed by stopEngine from TestMain.
func dockerHost(t *testing.T) *engine {
	t.Helper()
	netnstest.RequirePrivileges(t, "nft", "dockerd", "docker", "nsenter")
	engineOnce.Do(func() { theEngine = startEngine() })
	if theEngine.failed != nil {
		t.Fatalf("starting dockerd: %v", theEngine.failed)
	}
	return theEngine
}

func startEngine() *engine {
	e := &engine{log: &syncBuffer{}}
	dir, err := os.MkdirTemp("", "natmap-docker-")
	if err != nil {
		e.failed = err
		return e
	}
	e.dir, e.sock = dir, filepath.Join(dir, "docker.sock")
	name := "nmdock-" + netnstest.Unique()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		e.failed = fmt.Errorf("%v: %s", err, out)
		return e
	}
	e.host = &netnstest.NS{Name: name}
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		// ip_forward stays 0: dockerd turns it on and, as on most hosts, sets the
		// FORWARD policy to DROP, which natmap must get through.
		{"sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
	} {
		if _, err := e.host.Run(args[0], args[1:]...); err != nil {
			e.failed = err
			return e
		}
	}
	if e.failed = e.launch(); e.failed != nil {
		return e
	}
	e.failed = e.buildImage()
	return e
}

// launch starts dockerd in the engine's namespace and waits for it.
func (e *engine) launch() error {
	e.cmd = exec.Command("nsenter", "--net=/run/netns/"+e.host.Name, "dockerd",
		"--data-root", filepath.Join(e.dir, "data"), "--exec-root", filepath.Join(e.dir, "exec"),
		"--pidfile", filepath.Join(e.dir, "docker.pid"), "-H", "unix://"+e.sock)
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	if testBackend() == "iptables-legacy" {
		// Docker on iptables-legacy, as on the hosts this backend is for.
		bin := filepath.Join(e.dir, "legacy-bin")
		os.MkdirAll(bin, 0o755)
		for _, tool := range []string{"iptables", "ip6tables", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
			target, _ := exec.LookPath(strings.Replace(tool, "tables", "tables-legacy", 1))
			os.Symlink(target, filepath.Join(bin, tool))
		}
		e.cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	}
	if err := e.cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	e.done = done
	go func() { done <- e.cmd.Wait() }()
	if !waitFor(60*time.Second, func() bool { _, err := e.docker("version"); return err == nil }) {
		return fmt.Errorf("dockerd did not answer within 60s:\n%s", e.log)
	}
	return nil
}

// stop ends dockerd (its containers stop with it).
func (e *engine) stop() {
	e.cmd.Process.Signal(os.Interrupt)
	select {
	case <-e.done:
	case <-time.After(30 * time.Second):
		e.cmd.Process.Kill()
		<-e.done
	}
}

// buildImage imports a FROM-scratch image holding a static echoserver.
func (e *engine) buildImage() error {
	ctx := filepath.Join(e.dir, "image")
	if err := os.MkdirAll(ctx, 0o755); err != nil {
		return err
	}
	build := exec.Command("go", "build", "-o", filepath.Join(ctx, "echoserver"), "github.com/lab-ops/natmap/internal/echoserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building echoserver: %v: %s", err, out)
	}
	tar := filepath.Join(e.dir, "image.tar")
	if out, err := exec.Command("tar", "-C", ctx, "-cf", tar, "echoserver").CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %v: %s", err, out)
	}
	_, err := e.docker("import", "-c", `ENTRYPOINT ["/echoserver"]`, tar, dockerImage)
	return err
}

// docker runs the docker CLI against the test engine.
func (e *engine) docker(args ...string) (string, error) {
	cmd := exec.Command("docker", append([]string{"-H", "unix://" + e.sock}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (e *engine) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// run starts a container of the test image named name, answering as name
// on each address (and HTTP on port 8000), and removes it when the test
// ends.
func (e *engine) run(t *testing.T, name string, udp bool, addrs ...string) {
	t.Helper()
	args := []string{"run", "-d", "--name", name, dockerImage, "-name", name, "-http", "0.0.0.0:8000"}
	if udp {
		args = append(args, "-udp")
	}
	e.mustDocker(t, append(args, addrs...)...)
	t.Cleanup(func() { e.docker("rm", "-f", name) })
}

// inspect returns a field of a container, by Go template.
func (e *engine) inspect(t *testing.T, name, format string) string {
	t.Helper()
	return e.mustDocker(t, "inspect", "-f", format, name)
}

// stopEngine stops dockerd and removes its namespace and data.
func stopEngine() {
	e := theEngine
	if e == nil {
		return
	}
	if e.cmd != nil && e.cmd.Process != nil {
		if out, err := e.docker("ps", "-aq"); err == nil && out != "" {
			e.docker(append([]string{"rm", "-f"}, strings.Fields(out)...)...)
		}
		e.stop()
	}
	if e.dir != "" {
		exec.Command("umount", "-R", filepath.Join(e.dir, "exec")).Run()
		exec.Command("umount", "-R", filepath.Join(e.dir, "data")).Run()
		os.RemoveAll(e.dir)
	}
	if e.host != nil {
		exec.Command("ip", "netns", "del", e.host.Name).Run()
	}
}

// dockerLab is a client namespace linked to the Docker host, which runs
// natmap's daemon next to dockerd:
//
//	client 203.0.113.10 --c0/ext0-- docker host 203.0.113.1, 100.64.0.10 -- docker0 172.17.0.1/16 -- containers
type dockerLab struct {
	*lab
	engine *engine
}

const dockerHostIP = "203.0.113.1"

func newDockerLab(t *testing.T) *dockerLab {
	t.Helper()
	e := dockerHost(t)
	l := &lab{t: t, dir: t.TempDir(), router: e.host}
	l.socket, l.state, l.saved = filepath.Join(l.dir, "natmap.sock"), filepath.Join(l.dir, "state.json"), filepath.Join(l.dir, "saved.nft")
	l.client = netnstest.New(t, "nmdc")
	ext := "ext" + netnstest.Unique()[:4]
	l.extIf = ext
	netnstest.Link(t, l.client, "c0", clientIP+"/24", e.host, ext, dockerHostIP+"/24")
	e.host.AddAddr(t, ext, "100.64.0.10/32")
	l.client.MustRun(t, "ip", "route", "add", "100.64.0.10/32", "via", dockerHostIP)
	l.client.MustRun(t, "ip", "route", "add", "172.16.0.0/12", "via", dockerHostIP)
	t.Cleanup(func() {
		// The veth's host end lives in the shared namespace: remove it.
		e.host.Run("ip", "link", "del", ext)
	})
	t.Cleanup(l.stopDaemon)
	// natmap's table or chains, and its DOCKER-USER rule, go with each
	// test's daemon.
	t.Cleanup(func() {
		e.host.Run("nft", "delete", "table", "inet", "natmap")
		for _, mode := range []string{"legacy", "nft"} {
			tool := "iptables-" + mode
			e.host.Run(tool, "-D", "DOCKER-USER", "-m", "connmark", "--mark", "0x1000000/0x1000000",
				"-m", "comment", "--comment", "natmap: accept flows natmap forwards", "-j", "ACCEPT")
			e.host.Run(tool, "-D", "DOCKER-USER", "-j", "NATMAP-FWD")
			for _, j := range [][2]string{{"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"nat", "POSTROUTING"}, {"filter", "FORWARD"}} {
				e.host.Run(tool, "-t", j[0], "-D", j[1], "-j", "NATMAP-"+map[string]string{"PREROUTING": "PRE", "OUTPUT": "OUT", "POSTROUTING": "POST", "FORWARD": "FWD"}[j[1]])
			}
			for _, c := range [][2]string{{"nat", "NATMAP-PRE"}, {"nat", "NATMAP-OUT"}, {"nat", "NATMAP-POST"}, {"nat", "NATMAP-HAIRPIN"}, {"nat", "NATMAP-SNAT"}, {"filter", "NATMAP-FWD"}} {
				e.host.Run(tool, "-t", c[0], "-F", c[1])
				e.host.Run(tool, "-t", c[0], "-X", c[1])
			}
		}
	})
	return &dockerLab{lab: l, engine: e}
}

func (d *dockerLab) start(extra ...string) {
	d.startDaemon(append([]string{"--docker-host", "unix://" + d.engine.sock}, extra...)...)
}

func symlink(target, link string) error { return os.Symlink(target, link) }
