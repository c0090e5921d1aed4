package api

import (
	"strings"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

func TestAPIForbidsAndChangesNothing(t *testing.T) {
	r := newRig(t, nat.State{})
	h := NewHandler(r.svc, Info{Version: "test", Policy: nat.FakePolicy()}, nil)
	send := func(uid int, method, path, body string) (int, string) {
		w := as(h, uid, method, path, body)
		return w.Code, w.Body.String()
	}
	if code, body := send(1000, "POST", "/dnat", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25"}`); code != 200 {
		t.Fatalf("a member's forward of the host's address: %d %s", code, body)
	}
	before := r.snapshot()
	for _, c := range []struct{ path, body, rule string }{
		{"/dnat", `{"ext_ip":"169.254.169.254","int_ip":"10.0.0.101","ports":"80"}`, "ext_ip_special"},
		{"/snat", `{"int_ip":"0.0.0.0/0","ext_if":"vmbr0","ext_ip":"203.0.113.43"}`, "snat_catches_host"},
		{"/mapping/svc", `{"host_port":8080,"container_port":80,"target_ip":"127.0.0.1"}`, "target_loopback"},
		{"/apply", `{"config":{"version":1,"dnat":[{"ext_ip":"192.0.2.53","int_ip":"10.0.0.101","ports":"53","proto":"udp"}]}}`, "ext_ip_not_local"},
	} {
		code, body := send(1000, "POST", c.path, c.body)
		if code != 403 || !strings.Contains(body, `"code":"forbidden"`) || !strings.Contains(body, `"rule":"`+c.rule+`"`) {
			t.Errorf("POST %s as a member: %d %s", c.path, code, body)
		}
	}
	if after := r.snapshot(); after != before {
		t.Errorf("refused requests changed things:\n%s\nwant\n%s", after, before)
	}
	if code, body := send(0, "POST", "/dnat", `{"ext_ip":"169.254.169.254","int_ip":"10.0.0.101","ports":"80"}`); code != 200 {
		t.Errorf("root: %d %s", code, body)
	}
	// Removing is never forbidden.
	if code, body := send(1000, "DELETE", "/dnat", `{"ext_ip":"169.254.169.254","int_ip":"10.0.0.101","ports":"80"}`); code != 200 {
		t.Errorf("a member removing root's rule: %d %s", code, body)
	}
}
