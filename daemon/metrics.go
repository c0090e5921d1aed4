package daemon

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// metrics are the daemon's Prometheus metrics, in Prometheus' text
// exposition format: counts the service published (a scrape never takes
// the service lock), the time each kernel transaction took, and a few of
// the process's own. They are written here rather than with the
// Prometheus client library: its package initialization (and the
// protobuf and runtime/metrics packages it pulls in) ran at every start of
// the CLI, which never serves metrics.
type metrics struct {
	version, backend string
	svc              *nat.Service
	docker           func() (bool, error)
	reconnects       func() int
	started          time.Time

	mu    sync.Mutex
	apply map[string]*histogram // kernel transactions, by op
}

// applyBuckets are natmap_kernel_apply_seconds' upper bounds.
var applyBuckets = []float64{.0002, .0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5}

type histogram struct {
	counts []uint64 // by bucket, not cumulative
	sum    float64
	n      uint64
}

// newMetrics makes the metrics of a daemon of version on backend.
func newMetrics(version, backend string) *metrics {
	return &metrics{version: version, backend: backend, started: time.Now(), apply: map[string]*histogram{}}
}

// watch gives the metrics the service's counts and Docker's state.
func (m *metrics) watch(svc *nat.Service, docker func() (bool, error), reconnects func() int) {
	m.svc, m.docker, m.reconnects = svc, docker, reconnects
}

// observe counts one kernel transaction of op that took d.
func (m *metrics) observe(op string, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.apply[op]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(applyBuckets))}
		m.apply[op] = h
	}
	s := d.Seconds()
	if i, _ := slices.BinarySearch(applyBuckets, s); i < len(applyBuckets) {
		h.counts[i]++
	}
	h.sum += s
	h.n++
}

// handler serves the metrics.
func (m *metrics) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		var b strings.Builder
		m.write(&b)
		io.WriteString(w, b.String())
	})
}

// exposition writes metrics in the text format.
type exposition struct{ b *strings.Builder }

func (e exposition) family(name, kind, help string) {
	fmt.Fprintf(e.b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

func (e exposition) sample(name string, value float64, labels ...string) {
	e.b.WriteString(name)
	if len(labels) > 0 {
		e.b.WriteString("{")
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				e.b.WriteString(",")
			}
			fmt.Fprintf(e.b, "%s=%s", labels[i], strconv.Quote(labels[i+1]))
		}
		e.b.WriteString("}")
	}
	e.b.WriteString(" " + strconv.FormatFloat(value, 'g', -1, 64) + "\n")
}

func (m *metrics) write(b *strings.Builder) {
	e := exposition{b}
	e.family("natmap_build_info", "gauge", "Always 1: the daemon's version and kernel backend, as labels.")
	e.sample("natmap_build_info", 1, "backend", m.backend, "version", m.version)
	if m.svc != nil {
		st := m.svc.PublishedStats()
		e.family("natmap_rules", "gauge", "Rules natmap manages, by kind and status (active, partial, inactive).")
		for _, kind := range []string{"dnat", "hairpin", "snat", "policy_route", "mapping"} {
			for _, status := range []string{"active", "partial", "inactive"} {
				e.sample("natmap_rules", float64(st.ByState[kind][status]), "kind", kind, "status", status)
			}
		}
		e.family("natmap_forwards", "gauge", "Forwarded ports (one per protocol, address and port), by status.")
		e.sample("natmap_forwards", float64(st.Forwards-st.Inactive), "status", "active")
		e.sample("natmap_forwards", float64(st.Inactive), "status", "inactive")
		for _, c := range []struct {
			name, kind, help string
			v                int
		}{
			{"natmap_changes_applied_total", "counter", "Changes applied since the daemon started.", st.Changes},
			{"natmap_kernel_repairs_total", "counter", "Times natmap restored its kernel rules after something else changed them.", st.Repairs},
			{"natmap_reservation_failures_total", "counter", "Port reservations refused (the port was held, or descriptors ran out).", st.ReserveFailures},
			{"natmap_reserved_ports", "gauge", "Ports natmap holds.", st.Reservations},
		} {
			e.family(c.name, c.kind, c.help)
			e.sample(c.name, float64(c.v))
		}
	}
	if m.docker != nil {
		up := 0.0
		if ok, _ := m.docker(); ok {
			up = 1
		}
		e.family("natmap_docker_connected", "gauge", "1 when Docker answers.")
		e.sample("natmap_docker_connected", up)
		e.family("natmap_docker_reconnects_total", "counter", "Times natmap connected to Docker again after losing it.")
		e.sample("natmap_docker_reconnects_total", float64(m.reconnects()))
	}
	m.mu.Lock()
	if len(m.apply) > 0 {
		e.family("natmap_kernel_apply_seconds", "histogram", "Time one kernel transaction took: a change (apply) or the whole table (replace).")
		for _, op := range slices.Sorted(maps.Keys(m.apply)) {
			h := m.apply[op]
			var cum uint64
			for i, le := range applyBuckets {
				cum += h.counts[i]
				e.sample("natmap_kernel_apply_seconds_bucket", float64(cum), "op", op, "le", strconv.FormatFloat(le, 'g', -1, 64))
			}
			e.sample("natmap_kernel_apply_seconds_bucket", float64(h.n), "op", op, "le", "+Inf")
			e.sample("natmap_kernel_apply_seconds_sum", h.sum, "op", op)
			e.sample("natmap_kernel_apply_seconds_count", float64(h.n), "op", op)
		}
	}
	m.mu.Unlock()
	processMetrics(e, m.started)
}

// processMetrics are the usual process_* and go_* figures of this
// process, from /proc.
func processMetrics(e exposition, started time.Time) {
	e.family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds.")
	e.sample("process_start_time_seconds", float64(started.Unix()))
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseFloat(f[1], 64)
			e.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
			e.sample("process_resident_memory_bytes", pages*float64(os.Getpagesize()))
		}
	}
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// Fields after the command name (in parentheses): utime and stime
		// are the 12th and 13th, in clock ticks (100 a second on Linux).
		if _, rest, ok := strings.Cut(string(b), ") "); ok {
			if f := strings.Fields(rest); len(f) > 12 {
				u, _ := strconv.ParseFloat(f[11], 64)
				s, _ := strconv.ParseFloat(f[12], 64)
				e.family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
				e.sample("process_cpu_seconds_total", (u+s)/100)
			}
		}
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		e.family("process_open_fds", "gauge", "Number of open file descriptors.")
		e.sample("process_open_fds", float64(len(fds)))
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		e.family("process_max_fds", "gauge", "Maximum number of open file descriptors.")
		e.sample("process_max_fds", float64(lim.Cur))
	}
	e.family("go_goroutines", "gauge", "Number of goroutines that currently exist.")
	e.sample("go_goroutines", float64(runtime.NumGoroutine()))
	e.family("go_info", "gauge", "Information about the Go environment.")
	e.sample("go_info", 1, "version", runtime.Version())
}

// timed is a backend whose transactions are timed into the metrics.
type timed struct {
	nat.Backend
	met *metrics
}

func (t timed) Apply(ctx context.Context, c nat.Change) error {
	defer t.observe("apply", time.Now())
	return t.Backend.Apply(ctx, c)
}

func (t timed) Replace(ctx context.Context, rs nat.Ruleset) error {
	defer t.observe("replace", time.Now())
	return t.Backend.Replace(ctx, rs)
}

func (t timed) observe(op string, start time.Time) { t.met.observe(op, time.Since(start)) }
