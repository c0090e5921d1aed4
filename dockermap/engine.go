package dockermap

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// inspected is what natmap reads of GET /containers/{id}/json.
type inspected struct {
	ID    string `json:"Id"`
	Name  string `json:"Name"`
	State *struct {
		Running bool `json:"Running"`
	} `json:"State"`
	NetworkSettings *struct {
		Networks map[string]*struct {
			IPAddress         string `json:"IPAddress"`
			GlobalIPv6Address string `json:"GlobalIPv6Address"`
		} `json:"Networks"`
	} `json:"NetworkSettings"`
}

// summary is what natmap reads of an entry of GET /containers/json.
type summary struct {
	ID    string   `json:"Id"`
	Names []string `json:"Names"`
}

// event is what natmap reads of an event of GET /events.
type event struct {
	Action string `json:"Action"`
	Actor  struct {
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
}

// engine speaks the Docker Engine API (the few calls natmap makes) over
// its socket. natmap does not link moby's client module: its package
// initialization (image reference grammars, tracing) ran at every start
// of the CLI, which never talks to Docker. Unversioned paths get the
// engine's own API version; natmap decodes only the fields it reads, which
// every API version since 1.24 has, so a newer or older engine's other
// fields never fail a decode.
type engine struct {
	base string // http://docker for a Unix socket, http://HOST:PORT for tcp://
	hc   *http.Client
}

// newEngine returns a client of the engine at host: unix:///PATH or
// tcp://HOST:PORT (plain HTTP). It does not connect yet.
func newEngine(host string) (*engine, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("Docker host %q: %w", host, err)
	}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: 0}
	e := &engine{hc: &http.Client{Transport: tr}}
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		e.base = "http://docker"
	case "tcp", "http":
		e.base = "http://" + u.Host
	default:
		return nil, fmt.Errorf("Docker host %q: only unix:// and tcp:// (without TLS) are supported", host)
	}
	return e, nil
}

// connError is a call that did not reach the engine.
type connError struct{ err error }

func (e connError) Error() string { return "cannot connect to the Docker engine: " + e.err.Error() }
func (e connError) Unwrap() error { return e.err }

// apiError is the engine's refusal: its HTTP status and message.
type apiError struct {
	status int
	msg    string
}

func (e apiError) Error() string { return e.msg }

func isConnFailure(err error) bool { var c connError; return errors.As(err, &c) }

func isNotFound(err error) bool {
	var a apiError
	return errors.As(err, &a) && a.status == http.StatusNotFound
}

// get sends GET path and returns the response of a 2xx status.
func (e *engine) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return nil, connError{err}
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var body struct {
			Message string `json:"message"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &body) != nil || body.Message == "" {
			body.Message = strings.TrimSpace(string(b))
		}
		return nil, apiError{resp.StatusCode, body.Message}
	}
	return resp, nil
}

func (e *engine) getJSON(ctx context.Context, path string, v any) error {
	resp, err := e.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("reading the engine's answer to %s: %w", path, err)
	}
	return nil
}

// ping asks the engine whether it answers (GET /_ping).
func (e *engine) ping(ctx context.Context) error {
	resp, err := e.get(ctx, "/_ping")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// inspect is GET /containers/{ref}/json: ref is a name, an ID or a
// unique ID prefix.
func (e *engine) inspect(ctx context.Context, ref string) (inspected, error) {
	var c inspected
	err := e.getJSON(ctx, "/containers/"+url.PathEscape(ref)+"/json", &c)
	return c, err
}

// list is GET /containers/json?all=1: every container, running or not.
func (e *engine) list(ctx context.Context) ([]summary, error) {
	var out []summary
	err := e.getJSON(ctx, "/containers/json?all=1", &out)
	return out, err
}

// events follows the engine's container events until ctx ends or the
// stream breaks (an error, or nil when the engine closed it, on errs).
func (e *engine) events(ctx context.Context) (<-chan event, <-chan error) {
	msgs, errs := make(chan event), make(chan error, 1)
	go func() {
		filters := url.QueryEscape(`{"type":["container"]}`)
		resp, err := e.get(ctx, "/events?filters="+filters)
		if err != nil {
			errs <- err
			return
		}
		defer resp.Body.Close()
		dec := json.NewDecoder(bufio.NewReader(resp.Body))
		for {
			var m event
			if err := dec.Decode(&m); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				errs <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
		}
	}()
	return msgs, errs
}
