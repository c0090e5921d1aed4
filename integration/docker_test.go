package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lab-ops/natmap/internal/netnstest"
	"github.com/lab-ops/natmap/nat"
)

func TestIntegrationDockerMappings(t *testing.T) {
	d := newDockerLab(t)
	d.engine.run(t, "web", false, "0.0.0.0:80", "0.0.0.0:443", "0.0.0.0:8085")
	d.engine.run(t, "dns", true, "0.0.0.0:53")
	started := d.engine.inspect(t, "web", "{{.State.StartedAt}}")
	d.start()

	// Every form of `docker add` in the spec.
	d.mustCLI("docker", "add", "web", "8080:80")
	d.mustCLI("docker", "add", "8081:80", "--name", "web")
	d.mustCLI("docker", "add", "web", "100.64.0.10:8082:80")
	d.mustCLI("docker", "add", "web", "8443:443/tcp")
	d.mustCLI("docker", "add", "dns", "5353:53/udp")
	d.mustCLI("docker", "add", "web", "8085")
	var picked nat.DockerPortMap
	if err := json.Unmarshal([]byte(d.mustCLI("--json", "docker", "add", "web", "0:80")), &picked); err != nil {
		t.Fatal(err)
	}
	pickedAddr := strings.Replace(picked.Request.HostAddr, "0.0.0.0", dockerHostIP, 1)
	if picked.Request.HostAddr == "0.0.0.0:0" || picked.ContainerName != "web" {
		t.Fatalf("host port 0: %+v", picked)
	}

	for _, c := range []struct{ proto, addr, want string }{
		{"tcp", dockerHostIP + ":8080", "web"},
		{"tcp", dockerHostIP + ":8081", "web"},
		{"tcp", "100.64.0.10:8082", "web"},
		{"tcp", dockerHostIP + ":8443", "web"},
		{"udp", dockerHostIP + ":5353", "dns"},
		{"tcp", dockerHostIP + ":8085", "web"},
		{"tcp", pickedAddr, "web"},
	} {
		if src := expectReach(t, d.client, c.proto, c.addr, c.want); src != clientIP {
			t.Errorf("%s %s: the container saw %s, want the client's %s", c.proto, c.addr, src, clientIP)
		}
	}
	// Docker's FORWARD policy is DROP; natmap's rule in DOCKER-USER lets
	// its flows through.
	ipt := "iptables-nft" // the variant Docker uses here
	if testBackend() == "iptables-legacy" {
		ipt = "iptables-legacy"
	}
	if rules := d.router.MustRun(t, ipt, "-S", "DOCKER-USER"); !strings.Contains(rules, "-A DOCKER-USER -m connmark --mark 0x1000000/0x1000000") {
		t.Errorf("DOCKER-USER:\n%s", rules)
	}
	if policy := d.router.MustRun(t, ipt, "-S", "FORWARD"); !strings.Contains(policy, "-P FORWARD DROP") {
		t.Errorf("Docker's FORWARD policy is not DROP here, so the test proves less:\n%s", policy)
	}
	// A real HTTP request through a mapping (the connection is made inside
	// the client's namespace, then used by net/http).
	d.mustCLI("docker", "add", "web", "8088:8000")
	var conn net.Conn
	if err := d.client.Do(func() (err error) { conn, err = net.DialTimeout("tcp", dockerHostIP+":8088", 2*time.Second); return }); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	req, _ := http.NewRequest("GET", "http://"+dockerHostIP+":8088/", nil)
	req.Write(conn)
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(resp.Body)
	}
	conn.Close()
	if err != nil || resp.StatusCode != 200 || !strings.HasPrefix(string(body), "web "+clientIP+":") {
		t.Errorf("HTTP through the mapping: %q %v", body, err)
	}
	d.mustCLI("docker", "rm", "web", "8088")
	// A mapping bound to a host IP answers only there.
	expectNoReach(t, d.client, "tcp", dockerHostIP+":8082")
	// The host itself reaches the mappings via its address and 127.0.0.1.
	expectReach(t, d.router, "tcp", dockerHostIP+":8080", "web")
	expectReach(t, d.router, "tcp", "127.0.0.1:8080", "web")
	// Another container reaches them through the host's address, even when
	// bridged traffic skips netfilter (no br_netfilter help).
	if out, err := d.router.Run("sysctl", "-n", "net.bridge.bridge-nf-call-iptables"); err == nil {
		d.router.MustRun(t, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
		t.Cleanup(func() { d.router.Run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables="+strings.TrimSpace(out)) })
	}
	d.engine.run(t, "peer", false, "0.0.0.0:9")
	peer := &netnstest.NS{Name: "peer", Path: "/proc/" + d.engine.inspect(t, "peer", "{{.State.Pid}}") + "/ns/net"}
	expectReach(t, peer, "tcp", dockerHostIP+":8080", "web")
	expectReach(t, peer, "tcp", "172.17.0.1:8081", "web")

	// Traffic through the host to other destinations on a mapped port is
	// not captured: only local destinations match.
	webIP := d.engine.inspect(t, "web", "{{.NetworkSettings.IPAddress}}")
	expectNoReach(t, d.client, "tcp", webIP+":8080")

	// ls lists the mappings with the static rules; the filter picks a container.
	ls := d.mustCLI("ls", "dn")
	if !strings.Contains(ls, "dns") || strings.Contains(ls, "web (") {
		t.Errorf("ls dn:\n%s", ls)
	}
	var list nat.ListResponse
	if err := json.Unmarshal([]byte(d.mustCLI("--json", "ls")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Docker) != 7 {
		t.Fatalf("ls --json lists %d mappings, want 7", len(list.Docker))
	}

	// remap: the new port answers, the old is refused, the container was
	// not restarted.
	d.mustCLI("docker", "remap", "web", "8080:9090")
	expectReach(t, d.client, "tcp", dockerHostIP+":9090", "web")
	expectNoReach(t, d.client, "tcp", dockerHostIP+":8080")
	if now := d.engine.inspect(t, "web", "{{.State.StartedAt}}"); now != started {
		t.Errorf("the container was restarted: StartedAt %s, was %s", now, started)
	}

	// rm by container and port, by id, and --all.
	d.mustCLI("docker", "rm", "web", "9090")
	expectNoReach(t, d.client, "tcp", dockerHostIP+":9090")
	d.mustCLI("docker", "rm", "dns", "5353/udp")
	d.mustCLI("docker", "rm", "--id", "2")
	expectNoReach(t, d.client, "tcp", dockerHostIP+":8081")
	d.mustCLI("docker", "rm", "web", "--all")
	expectNoReach(t, d.client, "tcp", dockerHostIP+":8443")
	if out := d.mustCLI("ls"); !strings.Contains(out, "no rules") {
		t.Errorf("ls after removing everything:\n%s", out)
	}
}

func TestIntegrationDockerLocalService(t *testing.T) {
	d := newDockerLab(t)
	serve(t, d.router, "local", "127.0.0.1:9000")
	d.start()
	d.mustCLI("docker", "add", "8090:127.0.0.1:9000", "--name", "my-local-service")
	expectReach(t, d.router, "tcp", dockerHostIP+":8090", "local")
	if ls := d.mustCLI("ls"); !strings.Contains(ls, "my-local-service") {
		t.Errorf("ls:\n%s", ls)
	}
	d.mustCLI("docker", "rm", "--name", "my-local-service", "8090")
	expectNoReach(t, d.router, "tcp", dockerHostIP+":8090")
}

func TestIntegrationDockerBadInput(t *testing.T) {
	d := newDockerLab(t)
	d.engine.run(t, "bad1", false, "0.0.0.0:80")
	d.start()
	d.mustCLI("docker", "add", "bad1", "8080:80")
	var squat net.Listener
	if err := d.router.Do(func() (err error) { squat, err = net.Listen("tcp", "0.0.0.0:8181"); return }); err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	before := d.kernelRules()
	// A mapping spec the CLI itself cannot read is the command line's
	// fault: exit 2, nothing sent.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"docker", "add", "bad1", "1:2:3:4:5"}, "5 parts"},
		{[]string{"docker", "add", "bad1", "70000:80"}, "not a port number"},
		{[]string{"docker", "add", "bad1", "8080:80/sctp"}, "unknown protocol"},
		{[]string{"docker", "add", "bad1", ":"}, "not a port number"},
		{[]string{"docker", "rm", "bad1", "abc"}, `"abc" is not a port number`},
		{[]string{"docker", "remap", "bad1", "8080"}, "is not OLD_PORT:NEW_PORT"},
	} {
		if out, errOut, code := d.cli(c.args...); code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q %q, want exit 2 saying %q", c.args, code, out, errOut, c.want)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"docker", "add", "no-such-container", "8080:80"}, `no container named "no-such-container"`},
		{[]string{"docker", "add", "bad1", "8181:80"}, "0.0.0.0:8181/tcp is in use"},
		{[]string{"docker", "add", "bad1", "8080:81"}, "already forwarded"},
		{[]string{"docker", "remap", "bad1", "8080:8181"}, "0.0.0.0:8181/tcp is in use"},
		{[]string{"docker", "remap", "bad1", "9999:8182"}, "no mapping of bad1 on host port 9999/tcp"},
		{[]string{"docker", "rm", "bad1", "9999"}, "no mapping of bad1"},
	} {
		if out, errOut, code := d.cli(c.args...); code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q %q, want exit 1 saying %q", c.args, code, out, errOut, c.want)
		}
	}
	if after := d.kernelRules(); after != before {
		t.Errorf("the table changed:\n%s", after)
	}
	// The old mapping is intact after the refused remap.
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "bad1")
}

func TestIntegrationDockerLifecycle(t *testing.T) {
	d := newDockerLab(t)
	d.engine.run(t, "app", false, "0.0.0.0:80")
	d.start()
	d.mustCLI("docker", "add", "app", "8080:80")
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "app")
	oldIP := d.engine.inspect(t, "app", "{{.NetworkSettings.IPAddress}}")

	// Stopped: inactive, port still reserved.
	d.engine.mustDocker(t, "stop", "-t", "1", "app")
	if !waitFor(5*time.Second, func() bool { return strings.Contains(d.mustCLI("ls"), "not running") }) {
		t.Fatalf("ls after stop:\n%s", d.mustCLI("ls"))
	}
	expectNoReach(t, d.client, "tcp", dockerHostIP+":8080")
	if bindable(d.lab, "0.0.0.0:8080") {
		t.Error("the port was released while the container is stopped")
	}
	// Its address is taken by another container; on restart the mapping
	// follows it to its new address.
	d.engine.run(t, "thief", false, "0.0.0.0:80")
	d.engine.mustDocker(t, "start", "app")
	restarted := time.Now()
	newIP := d.engine.inspect(t, "app", "{{.NetworkSettings.IPAddress}}")
	if newIP == oldIP {
		t.Fatalf("app kept %s", oldIP)
	}
	if !waitFor(5*time.Second, func() bool {
		got, err := dial(d.client, "tcp", dockerHostIP+":8080")
		return err == nil && strings.HasPrefix(got, "app ")
	}) {
		t.Fatalf("the mapping did not follow app to %s:\n%s", newIP, d.mustCLI("ls"))
	}
	t.Logf("the mapping followed app from %s to %s %v after docker start returned", oldIP, newIP, time.Since(restarted).Round(time.Millisecond))
	// Removed and created again under the same name: the mapping works again.
	d.engine.mustDocker(t, "rm", "-f", "app")
	d.engine.run(t, "app", false, "0.0.0.0:80")
	if !waitFor(5*time.Second, func() bool {
		got, err := dial(d.client, "tcp", dockerHostIP+":8080")
		return err == nil && strings.HasPrefix(got, "app ")
	}) {
		t.Fatalf("the mapping did not follow the new app:\n%s", d.mustCLI("ls"))
	}
	// A kill with a harmless signal changes nothing.
	d.engine.mustDocker(t, "kill", "-s", "WINCH", "app")
	time.Sleep(200 * time.Millisecond)
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "app")
	// The daemon killed and restarted: the mapping still answers.
	d.signalDaemon(9)
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "app")
	d.start()
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "app")
	if ls := d.mustCLI("ls"); !strings.Contains(ls, "active") {
		t.Errorf("ls after restart:\n%s", ls)
	}
}

func TestIntegrationDockerUnavailable(t *testing.T) {
	d := newDockerLab(t)
	d.engine.run(t, "late", false, "0.0.0.0:80")
	d.router.MustRun(t, "ip", "addr", "add", "10.9.0.1/32", "dev", "lo")
	serve(t, d.router, "static", "10.9.0.1:80")
	t.Cleanup(func() { d.router.Run("ip", "addr", "del", "10.9.0.1/32", "dev", "lo") })
	missing := d.dir + "/docker-later.sock"
	d.startDaemon("--docker-host", "unix://"+missing)
	// Static rules work without Docker.
	d.mustCLI("dnat", "--ext-ip", dockerHostIP, "--int-ip", "10.9.0.1", "--ports", "7070:80")
	expectReach(t, d.router, "tcp", dockerHostIP+":7070", "static")
	_, errOut, code := d.cli("docker", "add", "late", "8080:80")
	if code != 1 || !strings.Contains(errOut, "Docker is not available") {
		t.Fatalf("docker add without Docker: exit %d %s", code, errOut)
	}
	if status, _ := d.api("POST", "/mapping/late", `{"host_port":8080,"container_port":80}`); status != 503 {
		t.Errorf("API without Docker: %d, want 503", status)
	}
	// Docker appears: the daemon connects by itself.
	if err := symlink(d.engine.sock, missing); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { _, _, code := d.cli("docker", "add", "late", "8080:80"); return code == 0 }) {
		t.Fatalf("the daemon never connected to Docker:\n%s", d.daemonLog)
	}
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "late")
}

func TestIntegrationDockerUDPFlowFollowsChange(t *testing.T) {
	d := newDockerLab(t)
	d.engine.run(t, "dns1", true, "0.0.0.0:53")
	d.engine.run(t, "dns2", true, "0.0.0.0:53")
	d.start()
	d.mustCLI("docker", "add", "dns1", "5353:53/udp")
	ask := udpFlow(t, d.client, dockerHostIP+":5353")
	if got := ask(); got != "dns1" {
		t.Fatalf("first datagram: %q", got)
	}
	d.mustCLI("docker", "rm", "dns1", "5353/udp")
	d.mustCLI("docker", "add", "dns2", "5353:53/udp")
	// Same socket, same flow: the next datagram goes to the new target.
	if got := ask(); got != "dns2" {
		t.Fatalf("after the change the flow still went to %q", got)
	}
}

func TestIntegrationDockerPublishedPortsCoexist(t *testing.T) {
	d := newDockerLab(t)
	d.engine.mustDocker(t, "run", "-d", "--name", "published", "-p", "7000:80", dockerImage, "-name", "published", "0.0.0.0:80")
	t.Cleanup(func() { d.engine.docker("rm", "-f", "published") })
	d.engine.run(t, "mapped", false, "0.0.0.0:80")
	d.start()
	d.mustCLI("docker", "add", "mapped", "8080:80")
	expectReach(t, d.client, "tcp", dockerHostIP+":7000", "published")
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "mapped")
}

func TestIntegrationDockerContainerReferences(t *testing.T) {
	d := newDockerLab(t)
	d.start()
	// Containers until two share the first hex digit of their ID (at most
	// 17, by pigeonhole).
	byFirst := map[byte][]string{}
	var shared byte
	for i := 0; i < 17 && shared == 0; i++ {
		name := fmt.Sprintf("ref%d", i)
		d.engine.run(t, name, false, "0.0.0.0:80")
		id := d.engine.inspect(t, name, "{{.Id}}")
		byFirst[id[0]] = append(byFirst[id[0]], name)
		if len(byFirst[id[0]]) == 2 {
			shared = id[0]
		}
	}
	_, errOut, code := d.cli("docker", "add", string(shared), "8080:80")
	names := byFirst[shared]
	if code != 1 || !strings.Contains(errOut, "matches several containers") || !strings.Contains(errOut, names[0]) || !strings.Contains(errOut, names[1]) {
		t.Fatalf("ambiguous prefix: exit %d %s", code, errOut)
	}
	// Completion offers Docker's container names, from the daemon.
	line := "lab-ops natmap docker add ref1"
	comp := exec.Command(binary)
	comp.Env = append(os.Environ(), "COMP_LINE="+line, fmt.Sprintf("COMP_POINT=%d", len(line)), "NATMAP_SOCKET="+d.socket)
	if out, err := comp.Output(); err != nil || !strings.Contains(string(out), "ref1\n") || strings.Contains(string(out), "ref0") {
		t.Errorf("completing %q: %v %q, want ref1 and the other ref1* containers", line, err, out)
	}

	// A full ID and a unique prefix both name the container.
	id := d.engine.inspect(t, names[0], "{{.Id}}")
	d.mustCLI("docker", "add", id, "8081:80")
	d.mustCLI("docker", "add", id[:12], "8082:80")
	var list nat.ListResponse
	if err := json.Unmarshal([]byte(d.mustCLI("--json", "ls", id[:6])), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Docker) != 2 || list.Docker[0].ContainerName != names[0] || list.Docker[0].ContainerID != id {
		t.Fatalf("mappings by ID: %+v", list.Docker)
	}
	expectReach(t, d.client, "tcp", dockerHostIP+":8082", names[0])
	d.mustCLI("docker", "rm", id[:12], "8081")
	expectNoReach(t, d.client, "tcp", dockerHostIP+":8081")
}

// TestIntegrationDockerEngineRestart stops the Docker engine and starts it
// again: the mapping works after it returns, though the container came
// back (and may have a new address) while natmap was not connected.
func TestIntegrationDockerEngineRestart(t *testing.T) {
	d := newDockerLab(t)
	d.engine.mustDocker(t, "run", "-d", "--restart", "always", "--name", "phoenix", dockerImage, "-name", "phoenix", "0.0.0.0:80")
	t.Cleanup(func() { d.engine.docker("rm", "-f", "phoenix") })
	d.start()
	d.mustCLI("docker", "add", "phoenix", "8080:80")
	expectReach(t, d.client, "tcp", dockerHostIP+":8080", "phoenix")

	d.engine.stop()
	if !waitFor(5*time.Second, func() bool { out, _, _ := d.cli("status"); return strings.Contains(out, "Docker: unavailable") }) {
		t.Errorf("status while Docker is down:\n%s", d.mustCLI("status"))
	}
	if err := d.engine.launch(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(15*time.Second, func() bool {
		got, err := dial(d.client, "tcp", dockerHostIP+":8080")
		return err == nil && strings.HasPrefix(got, "phoenix ")
	}) {
		t.Fatalf("the mapping did not come back after Docker restarted:\n%s\n%s", d.mustCLI("ls"), d.daemonLog)
	}
	if _, text := d.api("GET", "/metrics", ""); value(scrape(t, text), "natmap_docker_reconnects_total") != 1 {
		t.Errorf("natmap_docker_reconnects_total after one engine restart:\n%s", text)
	}
}

// TestIntegrationDockerApplyFile: a configuration file's Docker mappings
// are applied by container name, exported back, and applying again
// changes nothing (the mapping keeps its ID).
func TestIntegrationDockerApplyFile(t *testing.T) {
	d := newDockerLab(t)
	d.engine.run(t, "filed", false, "0.0.0.0:80")
	d.start()
	file := filepath.Join(d.dir, "natmap.yaml")
	os.WriteFile(file, []byte("version: 1\ndocker:\n  - container: filed\n    host_port: 8088\n    container_port: 80\n"), 0o644)
	d.mustCLI("apply", "-f", file)
	expectReach(t, d.client, "tcp", dockerHostIP+":8088", "filed")
	if out, _, code := d.cli("diff", "-f", file); code != 0 {
		t.Errorf("diff after apply: exit %d\n%s", code, out)
	}
	if out := d.mustCLI("export"); !strings.Contains(out, "container: filed") || !strings.Contains(out, "host_port: 8088") {
		t.Errorf("export:\n%s", out)
	}
	os.WriteFile(file, []byte("version: 1\ndocker:\n  - container: nosuch\n    host_port: 8089\n"), 0o644)
	if _, errOut, code := d.cli("apply", "-f", file); code == 0 || !strings.Contains(errOut, "natmap.yaml:3: docker[0]") {
		t.Errorf("a file naming a missing container: exit %d\n%s", code, errOut)
	}
}
