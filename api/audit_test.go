package api

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

// A change is audited; a query (a GET, a rule's check) is not, and its
// "not there" is no refusal at the info level.
func TestAuditLogsChangesNotQueries(t *testing.T) {
	r := newRig(t, nat.State{})
	var logged bytes.Buffer
	h := NewHandler(r.svc, Info{Version: "test"}, slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelInfo})))
	send := func(method, path, body string) int { return as(h, 0, method, path, body).Code }
	rule := `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25"}`
	if code := send("POST", "/dnat/check", rule); code != 404 {
		t.Fatalf("check of an absent rule: %d", code)
	}
	if code := send("GET", "/mapping/svc", ""); code != 404 {
		t.Fatalf("GET of absent mappings: %d", code)
	}
	if logged.Len() != 0 {
		t.Errorf("queries were logged:\n%s", logged.String())
	}
	if code := send("POST", "/dnat", rule); code != 200 {
		t.Fatalf("add: %d", code)
	}
	if !strings.Contains(logged.String(), "msg=request method=POST path=/dnat status=200") {
		t.Errorf("the change was not audited:\n%s", logged.String())
	}
}
