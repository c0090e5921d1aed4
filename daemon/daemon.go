package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lab-ops/natmap/api"
	"github.com/lab-ops/natmap/compat"
	"github.com/lab-ops/natmap/config"
	"github.com/lab-ops/natmap/dockermap"
	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/reserve"
	"github.com/lab-ops/natmap/route"
	"github.com/lab-ops/natmap/store"
)

// Options are the daemon's options: its command line (lab-ops natmap
// daemon) and NATMAP_* environment variables.
type Options struct {
	State         string        `default:"/var/lib/natmap/state.json" type:"path" help:"State file." placeholder:"PATH" env:"NATMAP_STATE"`
	SocketGroup   string        `default:"natmap" help:"Group that may use the socket (mode 0660)." placeholder:"NAME" env:"NATMAP_SOCKET_GROUP"`
	Backend       string        `default:"auto" enum:"auto,nftables,iptables" help:"Kernel backend: ${enum} (auto: iptables when the host's iptables-legacy tables hold rules, else nftables)." env:"NATMAP_BACKEND"`
	IptablesMode  string        `default:"auto" enum:"auto,legacy,nft" help:"iptables variant for the iptables backend: ${enum}." env:"NATMAP_IPTABLES_MODE"`
	RetryInterval time.Duration `default:"30s" help:"How often to retry forwards whose port another program holds." env:"NATMAP_RETRY_INTERVAL"`
	CheckInterval time.Duration `default:"300ms" help:"How often to check that nobody removed natmap's rules (they are restored at once); 0 turns the check off." env:"NATMAP_CHECK_INTERVAL"`
	SavePath      string        `default:"" type:"path" help:"Where save writes the ruleset: default /etc/natmap/natmap.nft (nftables), /etc/iptables/rules.v4 and rules.v6 (iptables)." placeholder:"PATH" env:"NATMAP_SAVE_PATH"`
	DockerHost    string        `default:"unix:///var/run/docker.sock" env:"NATMAP_DOCKER_HOST,DOCKER_HOST" help:"Docker engine to follow; the daemon runs without it until it answers." placeholder:"URL"`
	DockerTimeout time.Duration `default:"10s" help:"The most one call to Docker may take: an engine that hangs is reported as not answering, and static rules are not held up by it." env:"NATMAP_DOCKER_TIMEOUT"`
	Config        string        `type:"existingfile" help:"Apply this configuration file at start, after restoring the state (as apply without --prune); a file that does not apply stops the daemon." placeholder:"FILE" env:"NATMAP_CONFIG"`
	MetricsListen string        `help:"Also serve GET /metrics (Prometheus) on this TCP address, such as 127.0.0.1:19187 (outside 9100-9999, where Prometheus exporters have their registered ports); off by default (the socket always serves it)." placeholder:"ADDR" env:"NATMAP_METRICS_LISTEN"`
	GroupExt      []string      `name:"group-ext" help:"Addresses or networks (CIDR) the socket group may forward although no interface of this host holds them, such as public addresses routed to the host; repeatable (root may forward any address)." placeholder:"CIDR" env:"NATMAP_GROUP_EXT"`
}

// Run starts the daemon and serves until SIGTERM or SIGINT. On exit the
// kernel rules stay in place, so traffic keeps flowing across a restart or
// an upgrade; `clear` is how rules are removed.
// socket is the socket to serve, verbose the -v count, version natmap's.
func (d *Options) Run(socket string, verbose int, stderr io.Writer, version string) error {
	log := newLogger(stderr, verbose)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP is caught from the first moment: one that arrives during
	// start-up waits for readiness and reloads then, instead of killing the
	// daemon (whose clean exit systemd would not restart).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	raiseFileLimit(log)
	if err := refuseLiveSocket(socket); err != nil {
		return err
	}
	lock, err := lockState(d.State)
	if err != nil {
		return err
	}
	defer lock.Close()
	r, err := d.restore(ctx, version, log)
	if r != nil {
		defer r.close()
	}
	if err != nil {
		return err
	}
	ln, err := listen(socket, d.SocketGroup, log)
	if err != nil {
		return err
	}
	if d.MetricsListen != "" {
		metricsSrv, err := serveMetrics(d.MetricsListen, r.met, log)
		if err != nil {
			ln.Close()
			return err
		}
		defer metricsSrv.Close()
	}
	handler, err := d.handler(r, log)
	if err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       time.Minute,
		ConnContext:       peerContext,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(&limitListener{Listener: ln, max: maxConns, root: rootConns}) }()
	d.keepUp(ctx, r, socket, log)
	log.Info("serving", "socket", socket, "state", d.State, "version", version)
	if err := notify("READY=1", "STATUS="+r.svc.Stats().Summary()); err != nil {
		log.Warn("readiness not sent", "err", err)
	}

	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case err := <-served:
			return fmt.Errorf("serving %s: %w", socket, err)
		case <-hup:
			reload(ctx, r.svc, r.file, log)
		}
	}
	d.shutdown(srv, r.svc, socket, log)
	return nil
}

// shutdown stops serving (the connections get 5 seconds), removes the
// socket and writes the state file whole; the kernel rules stay.
func (d *Options) shutdown(srv *http.Server, svc *nat.Service, socket string, log *slog.Logger) {
	log.Info("stopping; kernel rules stay in place")
	_ = notify("STOPPING=1")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("closing connections", "err", err)
	}
	os.Remove(socket)
	if err := svc.Checkpoint(0); err != nil {
		log.Warn("writing the state file whole failed; changes stay in its journal", "state", d.State, "err", err)
	}
}

// restored is the daemon after restore: its state file, backend, Docker,
// metrics and the running service.
type restored struct {
	file   *store.File
	be     chosen
	docker *dockermap.Docker
	met    *metrics
	svc    *nat.Service
	// version is natmap's, for status and metrics.
	version string
	// close releases what restore made, in reverse order.
	closers []func()
}

func (r *restored) close() {
	for i := len(r.closers) - 1; i >= 0; i-- {
		r.closers[i]()
	}
}

// restore loads the state, chooses the backend, takes over from the
// earlier natmap if its state is found, starts the service on the state
// (every rule back in the kernel) and applies --config. The restored
// daemon is returned with an error too, for its close.
func (d *Options) restore(ctx context.Context, version string, log *slog.Logger) (*restored, error) {
	r := &restored{file: &store.File{Path: d.State, Log: log}, version: version}
	st, err := r.file.Load()
	if err != nil {
		return nil, fmt.Errorf("refusing to start, the state file is left as it is: %w", err)
	}
	if r.be, err = chooseBackend(d.Backend, d.IptablesMode, log); err != nil {
		return nil, err
	}
	r.closers = append(r.closers, r.be.close)
	log.Info("backend chosen", "backend", r.be.backend.Name(), "reason", r.be.reason)

	r.docker = dockermap.New(d.DockerHost, d.DockerTimeout, log)
	if r.file.Migrated() {
		n, err := compat.RemoveEarlier()
		if err != nil {
			return r, fmt.Errorf("taking over from the earlier natmap: %w", err)
		}
		log.Info("migrating the earlier natmap's state file; its iptables rules were removed", "state", d.State, "removed", n)
	}
	settings, err := loadHostSettings(HostSettingsPath(d.State))
	if err != nil {
		return r, err
	}
	r.met = newMetrics(version, r.be.backend.Name())
	r.svc = nat.NewService(nat.Deps{Backend: timed{r.be.backend, r.met}, Reserver: reserve.New(), Store: r.file, System: hostSystem{settings},
		Router: route.Netlink{}, Docker: r.docker, Log: log})
	restoring := fmt.Sprintf("restoring %d rules from %s", len(st.Dnats)+len(st.Hairpins)+len(st.Snats)+len(st.PolicyRoutes)+len(st.Mappings), d.State)
	_ = notify("STATUS=" + restoring)
	started := make(chan struct{})
	go starting(restoring, started, 5*time.Second, 10*time.Minute)
	err = r.svc.Start(ctx, st)
	close(started)
	if err != nil {
		return r, err
	}
	r.closers = append(r.closers, r.svc.Close)
	if r.file.Migrated() {
		if err := r.file.FinishMigration(r.svc.State()); err != nil {
			return r, err
		}
		log.Info("state file rewritten in natmap's format", "state", d.State, "backup", r.file.BackupPath())
	}
	r.met.watch(r.svc, r.docker.State, r.docker.Reconnects)
	go r.svc.PublishStats(ctx, statsInterval)
	// Restoring thousands of forwards builds a few times the memory it
	// keeps (the decoded file, the netlink batch); give it back now rather
	// than leave it to the background scavenger.
	debug.FreeOSMemory()
	if d.Config != "" {
		if err := applyAtStart(ctx, r.svc, d.Config, log); err != nil {
			return r, err
		}
	}
	return r, nil
}

// serveMetrics serves GET /metrics on a TCP address (--metrics-listen).
func serveMetrics(addr string, met *metrics, log *slog.Logger) (*http.Server, error) {
	mln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", met.handler())
	// A scraper gets a few connections and tight timeouts: the port is
	// reachable from the network, the socket is not.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second}
	go srv.Serve(&limitListener{Listener: mln, max: metricsConns})
	log.Info("serving metrics", "address", mln.Addr().String())
	return srv, nil
}

// handler is the socket's API, with GET /metrics.
func (d *Options) handler(r *restored, log *slog.Logger) (http.Handler, error) {
	policy, err := d.policy()
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", r.met.handler())
	be := r.be
	mux.Handle("/", api.NewHandler(r.svc, api.Info{
		Version: r.version, BackendReason: be.reason, Started: time.Now(),
		Render:         func(rs nat.Ruleset) []byte { return be.render(rs)[0].data },
		Save:           func(rs nat.Ruleset) ([]nat.SavedFile, error) { return saveFiles(d.savePath(be.backend), be.render(rs)) },
		DockerState:    r.docker.State,
		ContainerNames: r.docker.Names,
		Policy:         policy,
	}, log))
	return mux, nil
}

// keepUp starts what runs beside the API until ctx ends: retrying
// inactive forwards, following interface addresses, healing the rules,
// compacting the state, following Docker, and the systemd watchdog.
func (d *Options) keepUp(ctx context.Context, r *restored, socket string, log *slog.Logger) {
	svc := r.svc
	go every(ctx, d.RetryInterval, func() { svc.RetryInactive(ctx) })
	go every(ctx, time.Second, func() { svc.RefreshInterfaces(ctx) })
	go healLoop(ctx, svc, d.CheckInterval)
	go every(ctx, checkpointQuiet, func() {
		if err := svc.Checkpoint(checkpointQuiet); err != nil {
			log.Warn("writing the state file whole failed; changes stay in its journal", "state", d.State, "err", err)
		}
	})
	go r.docker.Watch(ctx, svc, time.Second)
	if every := watchdogInterval(); every > 0 {
		go watchdog(ctx, every, func(ctx context.Context) error { return alive(ctx, svc, socket) }, log)
	}
}

// alive proves the daemon works for the watchdog: its service lock is
// free within the deadline, and its socket answers GET /status.
func alive(ctx context.Context, svc *nat.Service, socket string) error {
	locked := make(chan struct{})
	go func() { svc.Stats(); close(locked) }()
	select {
	case <-locked:
	case <-ctx.Done():
		return fmt.Errorf("the service lock was not free within the watchdog's time")
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://natmap/status", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("the socket does not answer: %w", err)
	}
	resp.Body.Close()
	client.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the socket answers %s", resp.Status)
	}
	return nil
}

// statsInterval is the least time between two countings of the rules for
// the metrics (each takes the service lock for a pass over every rule).
const statsInterval = 250 * time.Millisecond

// checkpointQuiet is how long the daemon waits after a change before it
// writes the state file whole, folding in the journal.
const checkpointQuiet = time.Second

// reload makes the running configuration equal to the state file, read
// again (SIGHUP, `systemctl reload natmap`). A file that does not load, or
// a configuration that cannot be installed, changes nothing.
func reload(ctx context.Context, svc *nat.Service, file *store.File, log *slog.Logger) {
	_ = notify("RELOADING=1", "MONOTONIC_USEC="+monotonicUsec())
	defer func() { _ = notify("READY=1", "STATUS="+svc.Stats().Summary()) }()
	log.Info("reloading the state file", "state", file.Path)
	if err := svc.ReloadWith(ctx, file.Load); err != nil {
		log.Error("reload refused, nothing changed", "state", file.Path, "err", err)
	}
}

// applyAtStart applies the --config file.
func applyAtStart(ctx context.Context, svc *nat.Service, path string, log *slog.Logger) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	f, err := config.Parse(data)
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	resp, err := svc.Apply(ctx, f.Config, false, false)
	var pe *nat.ProblemsError
	if errors.As(err, &pe) {
		return fmt.Errorf("--config %s: %d problems, nothing was applied:\n%s", path, len(pe.Problems), f.Problems(path, pe.Problems))
	}
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	log.Info("configuration file applied", "config", path, "added", len(resp.Add), "kept", len(resp.Keep))
	return nil
}

// lockState takes the state file's lock, waiting up to 3 s: a daemon that
// was just killed holds it until the kernel has released all its sockets
// (its nftables socket can take tens of milliseconds).
func lockState(path string) (*os.File, error) {
	deadline := time.Now().Add(3 * time.Second)
	for {
		lock, err := store.Lock(path)
		if err == nil || time.Now().After(deadline) {
			return lock, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// policy is what the socket group may add (--group-ext).
func (d *Options) policy() (nat.Policy, error) {
	p := nat.Policy{Addrs: hostAddrs}
	for _, s := range d.GroupExt {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return p, fmt.Errorf("--group-ext: %q is not an address or a network (CIDR)", s)
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		p.ExtAllowed = append(p.ExtAllowed, pfx.Masked())
	}
	return p, nil
}

// savePath is --save-path or the backend's usual place.
func (d *Options) savePath(b nat.Backend) string {
	switch {
	case d.SavePath != "":
		return d.SavePath
	case b.Name() == "nftables":
		return "/etc/natmap/natmap.nft"
	}
	return "/etc/iptables/rules.v4"
}

// saveFiles writes each file: the first at path, the IPv6 one of the
// iptables backend beside it (rules.v4 -> rules.v6, else PATH.v6).
func saveFiles(path string, files []savedFile) ([]nat.SavedFile, error) {
	var done []nat.SavedFile
	for _, f := range files {
		p := path
		if f.suffix == ".v6" {
			if strings.HasSuffix(path, ".v4") {
				p = strings.TrimSuffix(path, ".v4") + ".v6"
			} else {
				p = path + ".v6"
			}
		}
		saved, err := WriteSaved(p, f.data, f.merge)
		if err != nil {
			return done, err
		}
		done = append(done, saved)
	}
	return done, nil
}

// WriteSaved writes a saved ruleset to path. With merge (an iptables boot
// file, which holds the host's own firewall too) natmap's lines are merged
// into what the file holds, and the file keeps its mode; every other file
// is natmap's own and is replaced.
func WriteSaved(path string, data []byte, merge bool) (nat.SavedFile, error) {
	saved := nat.SavedFile{Path: path, Summary: "natmap's own file"}
	perm := os.FileMode(0o644)
	if merge {
		old, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return saved, fmt.Errorf("reading %s to merge natmap's rules into it: %w", path, err)
		}
		if st, err := os.Stat(path); err == nil {
			perm = st.Mode().Perm()
		}
		var rep compat.MergeReport
		data, rep = compat.Merge(old, data)
		saved.Merged, saved.Kept, saved.Summary = true, rep.Kept, rep.String()
	}
	return saved, store.WriteFile(path, data, perm)
}

func logLevel(verbose int) slog.Level {
	if verbose >= 1 {
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// refuseLiveSocket fails when a daemon answers on path; a stale socket
// file (nobody listening) is removed.
func refuseLiveSocket(path string) error {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("another natmap daemon is serving %s", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("removing stale socket %s: %w", path, err)
		}
	}
	return nil
}

// listen opens the socket with mode 0660, owned by root and group. A missing
// group leaves the socket to root alone, with a warning.
func listen(path, group string, log *slog.Logger) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket's directory: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	gid := 0
	if gr, err := user.LookupGroup(group); err != nil {
		log.Warn("socket group not found: only root can use the socket (create the group, or run `lab-ops natmap install`)", "group", group, "err", err)
	} else if gid, err = strconv.Atoi(gr.Gid); err != nil {
		gid = 0
	}
	if err := os.Chown(path, 0, gid); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting the owner of %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting the mode of %s: %w", path, err)
	}
	return ln, nil
}

// healLoop checks natmap's rules every interval, or, when a check is slow
// (the iptables backend lists whole tables), after five times as long as
// it took, so checking never takes more than a sixth of the daemon's time.
// After a repair it looks again at the interval: the repair's own time
// (a whole table restored) says nothing about the check's.
func healLoop(ctx context.Context, svc *nat.Service, interval time.Duration) {
	if interval <= 0 {
		return
	}
	wait := interval
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		start := time.Now()
		wait = interval
		if !svc.Heal(ctx) {
			wait = max(interval, 5*time.Since(start))
		}
	}
}

// every runs fn at each interval until ctx ends; a zero interval never.
func every(ctx context.Context, interval time.Duration, fn func()) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// raiseFileLimit lifts the open-file limit as far as the kernel allows:
// every reserved port is a file descriptor.
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return
	}
	want := lim.Max
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > want {
			want = n
		}
	}
	next := syscall.Rlimit{Cur: want, Max: want}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		next = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next)
	}
	log.Debug("open-file limit", "limit", next.Cur)
}
