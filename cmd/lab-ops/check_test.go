package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDaemon answers every request with status and body on a Unix socket
// and returns the socket's path.
func fakeDaemon(t *testing.T, status int, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return path
}

// "Absent" is the daemon's own not_found; a 404 it does not name (a
// daemon without the check's route) is no answer (exit 2), and neither is
// any other refusal.
func TestCheckAnswers(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		code   int
		says   string
	}{
		{200, `{"ext_ip":"203.0.113.43"}`, 0, "dnat present:"},
		{404, `{"error":"no dnat rule 203.0.113.43 -> 10.0.0.101 (tcp): not found","code":"not_found"}`, 1, "absent: no dnat rule"},
		{404, `{"error":"no such route: POST /dnat/check"}`, 2, "no such route"},
		{400, `{"error":"ext_ip: bad","code":"invalid","field":"ext_ip"}`, 2, "--ext-ip: bad"},
	} {
		socket := fakeDaemon(t, c.status, c.body)
		var out, errOut bytes.Buffer
		code := run([]string{"natmap", "--socket", socket, "dnat", "--ext-ip", "203.0.113.43", "--int-ip", "10.0.0.101", "--ports", "25", "--check"}, &out, &errOut)
		if code != c.code || !strings.Contains(out.String()+errOut.String(), c.says) {
			t.Errorf("%d %s: exit %d (want %d): %s%s", c.status, c.body, code, c.code, out.String(), errOut.String())
		}
	}
}
