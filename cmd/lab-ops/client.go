package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// client speaks the daemon's HTTP/JSON API over its Unix socket.
type client struct {
	socket  string
	timeout time.Duration // of one exchange, from the dial to the reply's last byte
	out     *output
}

func newClient(g *Globals, out *output) *client {
	return &client{socket: g.Socket, timeout: 2 * time.Minute, out: out}
}

// exchange sends req on a connection of its own and returns the reply;
// closing the reply's body closes the connection. A CLI run sends one
// request or a few, so it keeps no connection pool: http.Transport's
// would only start a dialing, a reading and a writing goroutine per run.
func (c *client) exchange(req *http.Request) (*http.Response, error) {
	d := net.Dialer{Timeout: c.timeout}
	conn, err := d.Dial("unix", c.socket)
	if err != nil {
		return nil, err
	}
	if err := conn.SetDeadline(time.Now().Add(c.timeout)); err != nil {
		conn.Close()
		return nil, err
	}
	req.Close = true // the daemon closes its end after the reply
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	resp.Body = closeBoth{resp.Body, conn}
	return resp, nil
}

// closeBoth is a reply's body that closes its connection too.
type closeBoth struct {
	io.ReadCloser
	conn net.Conn
}

func (b closeBoth) Close() error {
	err := b.ReadCloser.Close()
	if cerr := b.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

// apiError is an error reply of the daemon.
type apiError struct {
	status   int
	msg      string
	problems []nat.Problem // of a refused configuration
	// code names the kind of error; rule the policy's rule that refused a
	// forbidden request; field the flag (or argument) that is wrong.
	code, rule, field string
	// coded: the daemon named the code (one from before codes, or a route
	// it does not have, leaves it to the status).
	coded bool
}

// flagNames finds, in a message of the daemon's, each request key that
// can only be a key (a whole word with an underscore), to be named as the
// CLI's flag (not "ext_ip_not_local", the name of a policy rule). It is
// compiled when an error needs it, not at every start.
func flagNames() *regexp.Regexp {
	return regexp.MustCompile(`\b(ext_ip|int_ip|ext_if|lan_cidr|src_ip)\b`)
}

// flagOf is the flag or argument of the CLI each request key comes from.
var flagOf = map[string]string{
	"ext_ip": "--ext-ip", "int_ip": "--int-ip", "ext_if": "--ext-if", "ports": "--ports", "proto": "--proto",
	"lan_cidr": "--lan-cidr", "src_ip": "--src-ip", "via": "--via", "table": "--table",
	"host_ip": "mapping", "host_port": "mapping", "container_port": "mapping", "target_ip": "mapping", "container": "container",
}

func (e *apiError) Error() string { return e.msg }

// unreachableError is a daemon the CLI could not reach: not running, or
// its socket not open to this user (exit status 4).
type unreachableError struct{ code, msg string }

func (e *unreachableError) Error() string { return e.msg }

// text returns a plain-text reply.
func (c *client) text(method, path string) ([]byte, error) {
	var raw rawReply
	if _, err := c.call(method, path, nil, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// rawReply takes a reply as it is.
type rawReply []byte

// call sends body (if not nil) as JSON and decodes a JSON reply into reply
// (if not nil). It returns the reply's headers.
func (c *client) call(method, path string, body, reply any) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
		c.out.debugf(2, "> %s %s %s", method, path, b)
	} else {
		c.out.debugf(2, "> %s %s", method, path)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.exchange(req)
	if err != nil {
		return nil, c.explain(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the daemon's reply: %w", err)
	}
	c.out.debugf(2, "< %s %s", resp.Status, bytes.TrimSpace(b))
	for _, msg := range resp.Header.Values(nat.WarningHeader) {
		c.out.warn(msg)
	}
	if resp.StatusCode != http.StatusOK {
		var e nat.ErrorResponse
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("the daemon answered %s: %s", resp.Status, bytes.TrimSpace(b))
		}
		code := e.Code
		if code == "" { // a daemon from before codes: what its status says
			code = nat.CodeOfStatus(resp.StatusCode)
		}
		msg, field := e.Error, e.Field
		if flag, ok := flagOf[field]; ok {
			// The daemon names its request's key; the user typed a flag.
			msg, field = strings.Replace(msg, field+":", flag+":", 1), flag
		}
		msg = flagNames().ReplaceAllStringFunc(msg, func(key string) string { return flagOf[key] })
		return nil, &apiError{status: resp.StatusCode, msg: msg, problems: e.Problems, code: code, rule: e.Rule, field: field, coded: e.Code != ""}
	}
	if raw, ok := reply.(*rawReply); ok {
		*raw = b
		return resp.Header, nil
	}
	if reply != nil && len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, reply); err != nil {
			return nil, fmt.Errorf("decoding the daemon's reply: %w", err)
		}
	}
	return resp.Header, nil
}

// explain turns a failure to reach the daemon into advice.
func (c *client) explain(err error) error {
	const advice = "is it running? start it with `sudo lab-ops natmap daemon` or `sudo systemctl start natmap`"
	switch {
	case errors.Is(err, syscall.ENOENT):
		return &unreachableError{"daemon_unreachable", fmt.Sprintf("cannot reach the natmap daemon: no socket at %s (%s)", c.socket, advice)}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &unreachableError{"daemon_unreachable", fmt.Sprintf("cannot reach the natmap daemon: nothing listens on %s (%s)", c.socket, advice)}
	case errors.Is(err, syscall.EACCES):
		return &unreachableError{"permission_denied", fmt.Sprintf("permission denied on %s: join the natmap group (then log in again) or use sudo", c.socket)}
	}
	return fmt.Errorf("talking to the natmap daemon at %s: %w", c.socket, err)
}
