// Package dockermap connects natmap to Docker: it finds containers by name,
// full ID or unique ID prefix, and follows them through their lifecycle by
// the event stream, so that each container's mappings follow it to a new
// address, are withdrawn (ports kept) while it does not run, and come back
// when a container of that name runs again.
//
// Docker may come and go: Watch connects (and reconnects after the stream
// breaks or Docker restarts), and on every connection runs a reconcile pass
// over every container that has mappings, which catches whatever happened
// while the stream was down. Until Docker answers, lookups fail with an
// error wrapping nat.ErrUnavailable (503).
package dockermap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// Docker implements nat.Containers against a Docker engine.
type Docker struct {
	host    string
	timeout time.Duration // the most any one call may take
	log     *slog.Logger

	mu        sync.Mutex
	cli       *engine
	connected bool
	lastErr   error
	connects  int // times the daemon (re)connected
}

// Reconnects counts the times natmap connected to Docker again after
// losing it.
func (d *Docker) Reconnects() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return max(d.connects-1, 0)
}

// New returns a Docker for the engine at host (such as unix:///var/run/docker.sock). Every
// call to the engine is bounded by timeout: an engine that accepts and
// never answers is reported as not answering, and static rules are not
// held up by it. It does not connect yet.
func New(host string, timeout time.Duration, log *slog.Logger) *Docker {
	return &Docker{host: host, timeout: timeout, log: log, lastErr: errors.New("not connected yet")}
}

// bounded is ctx with the call timeout.
func (d *Docker) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d.timeout)
}

// unavailable turns a call's failure into ErrUnavailable when the engine
// cannot be reached or did not answer in time (and marks it lost); other
// errors come back as they are.
func (d *Docker) unavailable(ctx context.Context, err error) (down bool, out error) {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("Docker did not answer within %s (the engine at %s hangs)", d.timeout, d.host)
	case !isConnFailure(err):
		return false, err
	}
	d.lost(err)
	return true, fmt.Errorf("Docker is not available: %v: %w", err, nat.ErrUnavailable)
}

// State reports whether Docker answers, and the last error when not.
func (d *Docker) State() (connected bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.connected, d.lastErr
}

// apiClient returns the Docker API client, made on first use (making it
// does not connect). The caller holds d.mu.
func (d *Docker) apiClient() (*engine, error) {
	if d.cli == nil {
		cli, err := newEngine(d.host)
		if err != nil {
			return nil, err
		}
		d.cli = cli
	}
	return d.cli, nil
}

func (d *Docker) client() (*engine, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.apiClient(); err != nil {
		return nil, fmt.Errorf("Docker is not available: %v: %w", err, nat.ErrUnavailable)
	}
	if !d.connected {
		return nil, fmt.Errorf("Docker is not available: %v: %w", d.lastErr, nat.ErrUnavailable)
	}
	return d.cli, nil
}

// Container implements nat.Containers.
func (d *Docker) Container(ctx context.Context, ref string) (nat.Container, error) {
	cli, err := d.client()
	if err != nil {
		return nat.Container{}, err
	}
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	res, err := cli.inspect(ctx, ref)
	if err == nil {
		return containerOf(res), nil
	}
	if down, uerr := d.unavailable(ctx, err); down {
		return nat.Container{}, uerr
	}
	switch {
	case isNotFound(err):
		return nat.Container{}, fmt.Errorf("no container named %q or with that ID: %w", ref, nat.ErrNotFound)
	case strings.Contains(err.Error(), "ultiple IDs found"):
		return nat.Container{}, d.ambiguous(ctx, cli, ref)
	}
	return nat.Container{}, fmt.Errorf("inspecting container %q: %w", ref, err)
}

// Names lists the names of every container, running or not.
func (d *Docker) Names(ctx context.Context) ([]string, error) {
	cli, err := d.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	list, err := cli.list(ctx)
	if err != nil {
		_, err = d.unavailable(ctx, err)
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	var names []string
	for _, c := range list {
		for _, n := range c.Names {
			names = append(names, strings.TrimPrefix(n, "/"))
		}
	}
	sort.Strings(names)
	return names, nil
}

// ambiguous names the containers whose ID starts with ref.
func (d *Docker) ambiguous(ctx context.Context, cli *engine, ref string) error {
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	list, err := cli.list(ctx)
	var names []string
	if err == nil {
		for _, c := range list {
			if strings.HasPrefix(c.ID, ref) {
				names = append(names, c.ID[:12]+" ("+strings.TrimPrefix(strings.Join(c.Names, ","), "/")+")")
			}
		}
	}
	sort.Strings(names)
	return &nat.FieldError{Field: "container", Msg: fmt.Sprintf("ID prefix %q matches several containers: %s", ref, strings.Join(names, ", "))}
}

func containerOf(c inspected) nat.Container {
	out := nat.Container{ID: c.ID, Name: strings.TrimPrefix(c.Name, "/")}
	if c.State != nil {
		out.Running = c.State.Running
	}
	if c.NetworkSettings != nil {
		var names []string
		for name := range c.NetworkSettings.Networks {
			names = append(names, name)
		}
		sort.Strings(names) // "first network": stable across calls
		for _, name := range names {
			ep := c.NetworkSettings.Networks[name]
			if ep == nil {
				continue
			}
			if ip, err := netip.ParseAddr(ep.IPAddress); err == nil && !out.IP.IsValid() && ip.Is4() {
				out.IP = ip
			}
			if ip, err := netip.ParseAddr(ep.GlobalIPv6Address); err == nil && !out.IP6.IsValid() && ip.Is6() {
				out.IP6 = ip
			}
		}
	}
	if !out.Running {
		out.IP, out.IP6 = netip.Addr{}, netip.Addr{}
	}
	return out
}

func (d *Docker) lost(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.connected {
		d.log.Warn("lost Docker", "err", err)
	}
	d.connected, d.lastErr = false, err
}

// Watch keeps svc in line with Docker until ctx ends: connect, reconcile
// every container that has mappings, follow the event stream; after any
// failure wait retry and start again.
func (d *Docker) Watch(ctx context.Context, svc *nat.Service, retry time.Duration) {
	for ctx.Err() == nil {
		err := d.session(ctx, svc)
		if ctx.Err() != nil {
			return
		}
		d.lost(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// session is one connection: ping, subscribe, reconcile, then apply events
// until the stream fails.
func (d *Docker) session(ctx context.Context, svc *nat.Service) error {
	d.mu.Lock()
	cli, err := d.apiClient()
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if err := d.ping(ctx, cli); err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	messages, streamErr := cli.events(sctx)
	d.mu.Lock()
	wasDown := !d.connected
	d.connected, d.lastErr = true, nil
	if wasDown {
		d.connects++
	}
	d.mu.Unlock()
	if wasDown {
		d.log.Info("connected to Docker", "host", d.host)
	}
	// Docker makes DOCKER-USER when it starts: natmap's rule goes in now.
	svc.ResettleHost()
	d.reconcile(ctx, svc, svc.ContainerNames())
	// An engine can wedge with the event stream open: a ping now and then
	// notices it (status and metrics then say so) and starts again.
	alive := time.NewTicker(max(d.timeout, time.Second) * 3)
	defer alive.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-alive.C:
			if err := d.ping(ctx, cli); err != nil {
				return err
			}
		case err := <-streamErr:
			if err == nil {
				err = errors.New("event stream closed")
			}
			return err
		case msg := <-messages:
			d.handle(ctx, svc, msg)
		}
	}
}

// ping asks the engine whether it answers, within the call timeout.
func (d *Docker) ping(ctx context.Context, cli *engine) error {
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	if err := cli.ping(ctx); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("Docker did not answer within %s (the engine at %s hangs)", d.timeout, d.host)
		}
		return err
	}
	return nil
}

// handle reacts to the events that change where a container's traffic
// must go. A kill (any signal) changes nothing by itself: a kill that ends
// the container is followed by die.
func (d *Docker) handle(ctx context.Context, svc *nat.Service, msg event) {
	switch msg.Action {
	case "start", "restart", "die", "destroy", "rename", "connect", "disconnect", "unpause":
	default:
		return
	}
	names := []string{strings.TrimPrefix(msg.Actor.Attributes["name"], "/")}
	if old := msg.Actor.Attributes["oldName"]; old != "" {
		names = append(names, strings.TrimPrefix(old, "/"))
	}
	d.log.Debug("docker event", "action", msg.Action, "container", names[0])
	d.reconcile(ctx, svc, names)
}

// reconcile looks each named container up and hands the result to svc.
func (d *Docker) reconcile(ctx context.Context, svc *nat.Service, names []string) {
	for _, name := range names {
		if name == "" {
			continue
		}
		c, err := d.Container(ctx, name)
		found := err == nil
		if err != nil && !errors.Is(err, nat.ErrNotFound) {
			d.log.Warn("looking up a container", "container", name, "err", err)
			continue
		}
		if found && c.Name != name {
			c, found = nat.Container{}, false // the name was an ID prefix of another container
		}
		if err := svc.ContainerChanged(ctx, name, c, found); err != nil {
			d.log.Error("updating mappings", "container", name, "err", err)
		}
	}
}
