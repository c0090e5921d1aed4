package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

func serve(t *testing.T, r *rig, method, path, body string) (int, string, http.Header) {
	t.Helper()
	w := as(NewHandler(r.svc, Info{Version: "test"}, nil), 0, method, path, body)
	b, _ := io.ReadAll(w.Result().Body)
	return w.Code, string(b), w.Result().Header
}

func TestAPIBadInput(t *testing.T) {
	r := newRig(t, nat.State{})
	if code, body, _ := serve(t, r, "POST", "/dnat", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25","proto":"tcp","ext_if":null,"preserve_src_ip":false}`); code != 200 {
		t.Fatalf("good request: %d %s", code, body)
	}
	ok := `"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"80","proto":"tcp"`
	tests := []struct{ name, body, want string }{
		{"bad IP", `{"ext_ip":"203.0.113.430","int_ip":"10.0.0.101","ports":"80"}`, `ext_ip: "203.0.113.430" is not an IP address`},
		{"missing int_ip", `{"ext_ip":"203.0.113.43","ports":"80"}`, "int_ip: missing address"},
		{"IPv4 with IPv6", `{"ext_ip":"203.0.113.43","int_ip":"fd00::1","ports":"80"}`, "int_ip: fd00::1 and ext_ip 203.0.113.43 are of different IP versions"},
		{"unspecified", `{"ext_ip":"0.0.0.0","int_ip":"10.0.0.1","ports":"80"}`, "ext_ip: 0.0.0.0 is not a specific address"},
		{"port 0", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"0"}`, "ports: port 0 is out of range 1-65535"},
		{"port 65536", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"65536"}`, "ports: port 65536 is out of range"},
		{"abc", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"abc"}`, `ports: "abc" is not a port number`},
		{"empty list", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":""}`, "ports: the list is empty"},
		{"reversed range", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"90-80"}`, "ports: range 90-80 is reversed"},
		{"unknown protocol", `{` + ok[:strings.LastIndex(ok, `,"proto"`)] + `,"proto":"sctp"}`, `proto: unknown protocol "sctp"`},
		{"long interface", `{` + ok + `,"ext_if":"averyveryverylongif"}`, `ext_if: interface name "averyveryverylongif" is 19 bytes long`},
		{"wildcard interface", `{` + ok + `,"ext_if":"eth+"}`, `ext_if: interface name "eth+" has characters`},
		{"malformed JSON", `{"ext_ip": "203.0.113.43",`, "request body"},
		{"not an object", `[1,2]`, "request body"},
		{"wrong type", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":80}`, "ports: want a JSON string, got number"},
		{"unknown field", `{` + ok + `,"extra":1}`, `request body: unknown field "extra"`},
		{"trailing data", `{` + ok + `}{}`, "unexpected data after the JSON object"},
		{"empty body", ``, "request body: empty"},
		{"body over 1 MiB", `{` + ok + `,"ext_if":"` + strings.Repeat("x", nat.MaxBodyBytes) + `"}`, "larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.snapshot()
			for _, method := range []string{"POST", "DELETE"} {
				code, body, _ := serve(t, r, method, "/dnat", tt.body)
				var e nat.ErrorResponse
				if err := json.Unmarshal([]byte(body), &e); err != nil {
					t.Fatalf("%s: reply is not JSON: %q", method, body)
				}
				if code != 400 || !strings.Contains(e.Error, tt.want) {
					t.Errorf("%s: %d %q, want 400 saying %q", method, code, e.Error, tt.want)
				}
			}
			if after := r.snapshot(); after != before {
				t.Errorf("a bad request changed things:\n%s", after)
			}
		})
	}
}

func TestAPIStatusCodesAndShapes(t *testing.T) {
	r := newRig(t, nat.State{})
	add := `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"465,25","proto":"tcp","ext_if":null,"preserve_src_ip":false}`
	code, body, h := serve(t, r, "POST", "/dnat", add)
	if code != 200 || h.Get(nat.ChangedHeader) != "true" {
		t.Fatalf("add: %d %s %v", code, body, h)
	}
	var echo nat.DnatConfig
	if err := json.Unmarshal([]byte(body), &echo); err != nil || echo.Ports != "25,465" || echo.Proto != "tcp" || echo.ExtIf != nil {
		t.Fatalf("echo %s (%v)", body, err)
	}
	if code, _, h := serve(t, r, "POST", "/dnat", add); code != 200 || h.Get(nat.ChangedHeader) != "false" {
		t.Fatalf("second add: %d %v", code, h)
	}
	if code, body, _ := serve(t, r, "POST", "/dnat", strings.Replace(add, "10.0.0.101", "10.0.0.102", 1)); code != 409 || !strings.Contains(body, "already forwarded") {
		t.Fatalf("conflict: %d %s", code, body)
	}
	code, body, _ = serve(t, r, "GET", "/rules", "")
	if code != 200 || strings.TrimSpace(body) != `[{"kind":"dnat","ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":[25,465],"proto":"tcp"}]` {
		t.Fatalf("rules: %d %s", code, body)
	}
	code, body, _ = serve(t, r, "GET", "/mappings", "")
	var list map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &list); err != nil || code != 200 {
		t.Fatalf("mappings: %d %s", code, body)
	}
	for _, k := range []string{"docker", "dnats", "snats", "hairpins", "policy_routes"} {
		if _, ok := list[k]; !ok {
			t.Errorf("mappings lacks %q: %s", k, body)
		}
	}
	if code, _, _ := serve(t, r, "DELETE", "/dnat", strings.Replace(add, "465,25", "8080", 1)); code != 404 {
		t.Fatalf("delete missing: %d", code)
	}
	if code, _, _ := serve(t, r, "DELETE", "/dnat", add); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if code, body, _ := serve(t, r, "PUT", "/dnat", add); code != 405 || !strings.Contains(body, `"error"`) {
		t.Fatalf("PUT: %d %s", code, body)
	}
	if code, body, _ := serve(t, r, "GET", "/nope", ""); code != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("unknown route: %d %s", code, body)
	}
	if code, body, _ := serve(t, r, "GET", "/status", ""); code != 200 || !strings.Contains(body, `"backend":"fake"`) {
		t.Fatalf("status: %d %s", code, body)
	}
	if code, _, _ := serve(t, r, "POST", "/fwd", ""); code != 200 || !r.store.Last().IPForward {
		t.Fatalf("fwd: %d, stored %v", code, r.store.Last().IPForward)
	}
	if code, _, _ := serve(t, r, "DELETE", "/clear", ""); code != 200 {
		t.Fatalf("clear: %d", code)
	}
}

// apiRoutes are the mutating routes the fuzzer sends bodies to.
var apiRoutes = [][2]string{
	{"POST", "/dnat"}, {"DELETE", "/dnat"}, {"POST", "/snat"}, {"DELETE", "/snat"},
	{"POST", "/hairpin"}, {"DELETE", "/hairpin"}, {"POST", "/policy-route"}, {"DELETE", "/policy-route"},
	{"POST", "/mapping/web"}, {"PUT", "/remap/web"}, {"POST", "/fwd"},
}

// FuzzAPIBodies: no request body to any route makes the API panic or
// answer 5xx, and every refusal is a 4xx with a JSON error.
func FuzzAPIBodies(f *testing.F) {
	for i, body := range []string{
		`{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25,465","proto":"tcp"}`,
		`{"ext_ip":"2001:db8::1","int_ip":"fd00::1","ports":"80:8080","ext_if":"eth0"}`,
		`{"int_ip":"10.0.0.0/24","ext_ip":"203.0.113.43","ext_if":"vmbr0"}`,
		`{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25","lan_cidr":"10.0.0.0/24"}`,
		`{"src_ip":"10.0.0.101","via":"10.0.0.1","table":100}`,
		`{"host_ip":"0.0.0.0","host_port":8080,"container_port":80,"target_ip":"127.0.0.1","proto":"udp"}`,
		`{"host_port":8080,"new_host_port":9090}`,
		`{"ipv6":true}`, `{}`, `[]`, ``,
	} {
		for r := range apiRoutes {
			if r%3 == i%3 {
				f.Add(uint8(r), body)
			}
		}
	}
	f.Fuzz(func(t *testing.T, route uint8, body string) {
		rt := apiRoutes[int(route)%len(apiRoutes)]
		r := &rig{fake: nat.NewFake(), res: nat.NewFakeReserver(), store: &nat.MemStore{}}
		r.svc = nat.NewService(r.deps())
		code, reply, _ := serve(t, r, rt[0], rt[1], body)
		if code >= 500 && !strings.Contains(reply, "Docker is not available") {
			t.Fatalf("%s %s %q: %d %s", rt[0], rt[1], body, code, reply)
		}
		if code != 200 {
			var e nat.ErrorResponse
			if json.Unmarshal([]byte(reply), &e) != nil || e.Error == "" {
				t.Fatalf("%s %s %q: %d with no JSON error: %s", rt[0], rt[1], body, code, reply)
			}
		}
	})
}

// cancelCheck is a backend whose Apply waits for the test, then records
// whether its context was cancelled.
type cancelCheck struct {
	*nat.Fake
	started, proceed chan struct{}
	sawCancel        chan bool
}

func (c *cancelCheck) Apply(ctx context.Context, ch nat.Change) error {
	close(c.started)
	<-c.proceed
	c.sawCancel <- ctx.Err() != nil
	return c.Fake.Apply(ctx, ch)
}

// A client that leaves in the middle of a change does not cut it short:
// the backend's context is not cancelled, and the change is made whole.
func TestClientLeavingDoesNotCancelAChange(t *testing.T) {
	r := &rig{fake: nat.NewFake(), res: nat.NewFakeReserver(), store: &nat.MemStore{}}
	cc := &cancelCheck{Fake: r.fake, started: make(chan struct{}), proceed: make(chan struct{}), sawCancel: make(chan bool, 1)}
	deps := r.deps()
	deps.Backend = cc
	r.svc = nat.NewService(deps)
	if err := r.svc.Start(context.Background(), nat.State{}); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(r.svc, Info{Version: "test"}, nil)
	reqCtx, cancel := context.WithCancel(nat.WithPeer(context.Background(), nat.Peer{UID: 0, PID: 1}))
	req := httptest.NewRequest("POST", "/dnat", strings.NewReader(`{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25"}`)).WithContext(reqCtx)
	w := httptest.NewRecorder()
	served := make(chan struct{})
	go func() { h.ServeHTTP(w, req); close(served) }()
	<-cc.started
	cancel() // the client hangs up
	close(cc.proceed)
	if <-cc.sawCancel {
		t.Error("the backend's change was cancelled when the client left")
	}
	<-served
	if got := r.fake.Dump(); !strings.Contains(got, "203.0.113.43:25") {
		t.Errorf("kernel after the client left:\n%s", got)
	}
}

// A container named by-id has its ports removed by the unambiguous route;
// the earlier API's /mapping/by-id/N stays the mapping with ID N.
func TestMappingNamedByID(t *testing.T) {
	r := newRig(t, nat.State{})
	for _, body := range []string{
		`{"host_port":8080,"container_port":80,"target_ip":"10.0.0.101"}`,
		`{"host_port":3,"container_port":80,"target_ip":"10.0.0.102"}`,
		`{"host_port":8082,"container_port":80,"target_ip":"10.0.0.103"}`,
	} {
		name := "other"
		if strings.Contains(body, `"host_port":3,`) {
			name = "by-id"
		}
		if code, reply, _ := serve(t, r, "POST", "/mapping/"+name, body); code != 200 {
			t.Fatalf("%s: %d %s", body, code, reply)
		}
	}
	// Mapping #3 is other's 8082; by-id's port 3 is mapping #2.
	if code, reply, _ := serve(t, r, "DELETE", "/mapping/by-id/port/3", ""); code != 200 {
		t.Fatalf("DELETE /mapping/by-id/port/3: %d %s", code, reply)
	}
	if got := r.fake.Dump(); strings.Contains(got, "0.0.0.0:3 ") || !strings.Contains(got, "0.0.0.0:8082") {
		t.Errorf("after removing by-id's port 3:\n%s", got)
	}
	if code, _, _ := serve(t, r, "DELETE", "/mapping/by-id/3", ""); code != 200 {
		t.Fatalf("DELETE /mapping/by-id/3: %d", code)
	}
	if got := r.fake.Dump(); strings.Contains(got, "0.0.0.0:8082") || !strings.Contains(got, "0.0.0.0:8080") {
		t.Errorf("after removing mapping #3:\n%s", got)
	}
}

// A check answers what a DELETE of the same body or path would find, and
// changes nothing: 200 with the rule that holds it, 404 not_found saying
// what is missing, 400 for a wrong question.
func TestAPIChecks(t *testing.T) {
	r := newRig(t, nat.State{})
	dnat := `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25,465"}`
	for path, body := range map[string]string{
		"/dnat":         dnat,
		"/hairpin":      `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25"}`,
		"/snat":         `{"int_ip":"10.0.0.101","ext_if":"eth0","ext_ip":"203.0.113.43"}`,
		"/policy-route": `{"src_ip":"10.0.0.50","via":"10.0.0.1","table":100}`,
		"/mapping/svc":  `{"host_port":8088,"container_port":80,"target_ip":"10.0.0.101"}`,
	} {
		if code, reply, _ := serve(t, r, "POST", path, body); code != 200 {
			t.Fatalf("adding %s: %d %s", path, code, reply)
		}
	}
	before := r.snapshot()
	for _, c := range []struct {
		method, path, body string
		code               int
		says               string
	}{
		{"POST", "/dnat/check", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"465"}`, 200, `"ports":"25,465"`},
		{"POST", "/dnat/check", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25,587"}`, 404, "port 587/tcp is not forwarded by dnat"},
		{"POST", "/dnat/check", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.102","ports":"25"}`, 404, `"code":"not_found"`},
		{"POST", "/dnat/check", `{"ext_ip":"203.0.113.430","int_ip":"10.0.0.101","ports":"25"}`, 400, `"field":"ext_ip"`},
		{"POST", "/hairpin/check", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25"}`, 200, `"int_ip":"10.0.0.101"`},
		{"POST", "/hairpin/check", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.101","ports":"25","proto":"udp"}`, 404, "no hairpin rule"},
		{"POST", "/snat/check", `{"int_ip":"10.0.0.101","ext_if":"eth0","ext_ip":"203.0.113.43"}`, 200, `"ext_if":"eth0"`},
		{"POST", "/snat/check", `{"int_ip":"10.0.0.101","ext_if":"eth0"}`, 404, "not_found"},
		{"POST", "/policy-route/check", `{"src_ip":"10.0.0.50","via":"10.0.0.1","table":100}`, 200, `"table":100`},
		{"POST", "/policy-route/check", `{"src_ip":"10.0.0.50","via":"10.0.0.1","table":101}`, 404, "not_found"},
		{"GET", "/mapping/svc/port/8088", "", 200, `"host_addr":"0.0.0.0:8088"`},
		{"GET", "/mapping/svc/port/8088?proto=udp", "", 404, "no mapping of svc on host port 8088/udp"},
		{"GET", "/mapping/svc", "", 200, `"container_name":"svc"`},
		{"GET", "/mapping/other", "", 404, "no mappings of other"},
		{"GET", "/mapping/by-id/1", "", 200, `"id":1`},
		{"GET", "/mapping/by-id/9", "", 404, "no mapping with id 9"},
		{"GET", "/mapping/svc/port/http", "", 400, `"field":"port"`},
	} {
		code, body, _ := serve(t, r, c.method, c.path, c.body)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%s %s %s: %d %s; want %d saying %s", c.method, c.path, c.body, code, body, c.code, c.says)
		}
	}
	if after := r.snapshot(); after != before {
		t.Errorf("checks changed the state:\n%s", after)
	}
}

// A rule on an address the host does not have now (the shared address a
// keepalived pair's other router holds) is listed as standby, and the
// status counts it; the host's own addresses, and rules without one, are
// not.
func TestStandbyRules(t *testing.T) {
	r := newRig(t, nat.State{})
	h := NewHandler(r.svc, Info{Version: "test", Policy: nat.FakePolicy()}, nil)
	for _, req := range []struct{ path, body string }{
		{"/dnat", `{"ext_ip":"203.0.113.10","int_ip":"10.0.0.5","ports":"25"}`},
		{"/dnat", `{"ext_ip":"203.0.113.43","int_ip":"10.0.0.6","ports":"25"}`},
		{"/dnat", `{"ext_ip":"","ext_if":"vmbr0","int_ip":"10.0.0.7","ports":"80"}`},
		{"/hairpin", `{"ext_ip":"203.0.113.10","int_ip":"10.0.0.5","ports":"25"}`},
		{"/snat", `{"int_ip":"10.0.0.0/24","ext_ip":"203.0.113.10","ext_if":"vmbr0"}`},
		{"/snat", `{"int_ip":"10.0.1.0/24","ext_if":"vmbr0"}`},
	} {
		if w := as(h, 0, "POST", req.path, req.body); w.Code != 200 {
			t.Fatalf("POST %s %s: %d %s", req.path, req.body, w.Code, w.Body)
		}
	}
	w := as(h, 0, "GET", "/mappings", "")
	var l nat.ListResponse
	if err := json.Unmarshal(w.Body.Bytes(), &l); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range l.Dnats {
		got = append(got, fmt.Sprintf("dnat %s%s %s %v", d.ExtIP, ifName(d.ExtIf), d.Status, d.Standby))
	}
	for _, hp := range l.Hairpins {
		got = append(got, fmt.Sprintf("hairpin %s %s %v", hp.ExtIP, hp.Status, hp.Standby))
	}
	for _, s := range l.Snats {
		got = append(got, fmt.Sprintf("snat %s %s %v", s.ExtIP, s.Status, s.Standby))
	}
	want := []string{
		"dnat vmbr0 active false", "dnat 203.0.113.10 active true", "dnat 203.0.113.43 active false",
		"hairpin 203.0.113.10 active true",
		"snat 203.0.113.10 active true", "snat  active false",
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	var st nat.StatusResponse
	if err := json.Unmarshal(as(h, 0, "GET", "/status", "").Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.Standby != 3 {
		t.Errorf("status counts %d standby rules, want 3", st.Standby)
	}
}

func ifName(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
