package main

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lab-ops/natmap/nat"
)

// metrics are the daemon's Prometheus metrics: counts read from the
// service at each scrape, and the time each kernel change took.
type metrics struct {
	reg   *prometheus.Registry
	apply *prometheus.HistogramVec
}

var (
	rulesDesc = prometheus.NewDesc("natmap_rules", "Rules natmap manages, by kind and status (active, partial, inactive).",
		[]string{"kind", "status"}, nil)
	forwardsDesc = prometheus.NewDesc("natmap_forwards", "Forwarded ports (one per protocol, address and port), by status.",
		[]string{"status"}, nil)
	changesDesc  = prometheus.NewDesc("natmap_changes_applied_total", "Changes applied since the daemon started.", nil, nil)
	repairsDesc  = prometheus.NewDesc("natmap_kernel_repairs_total", "Times natmap restored its kernel rules after something else changed them.", nil, nil)
	reserveDesc  = prometheus.NewDesc("natmap_reservation_failures_total", "Port reservations refused (the port was held, or descriptors ran out).", nil, nil)
	reservedDesc = prometheus.NewDesc("natmap_reserved_ports", "Ports natmap holds.", nil, nil)
	dockerDesc   = prometheus.NewDesc("natmap_docker_connected", "1 when Docker answers.", nil, nil)
	reconnDesc   = prometheus.NewDesc("natmap_docker_reconnects_total", "Times natmap connected to Docker again after losing it.", nil, nil)
)

// statsCollector serves the counts the service last published: a scrape
// never takes the service lock.
type statsCollector struct {
	svc        *nat.Service
	docker     func() (bool, error)
	reconnects func() int
}

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{rulesDesc, forwardsDesc, changesDesc, repairsDesc, reserveDesc, reservedDesc, dockerDesc, reconnDesc} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.svc.PublishedStats()
	for _, kind := range []string{"dnat", "hairpin", "snat", "policy_route", "mapping"} {
		for _, status := range []string{"active", "partial", "inactive"} {
			ch <- prometheus.MustNewConstMetric(rulesDesc, prometheus.GaugeValue, float64(st.ByState[kind][status]), kind, status)
		}
	}
	ch <- prometheus.MustNewConstMetric(forwardsDesc, prometheus.GaugeValue, float64(st.Forwards-st.Inactive), "active")
	ch <- prometheus.MustNewConstMetric(forwardsDesc, prometheus.GaugeValue, float64(st.Inactive), "inactive")
	ch <- prometheus.MustNewConstMetric(changesDesc, prometheus.CounterValue, float64(st.Changes))
	ch <- prometheus.MustNewConstMetric(repairsDesc, prometheus.CounterValue, float64(st.Repairs))
	ch <- prometheus.MustNewConstMetric(reserveDesc, prometheus.CounterValue, float64(st.ReserveFailures))
	ch <- prometheus.MustNewConstMetric(reservedDesc, prometheus.GaugeValue, float64(st.Reservations))
	up := 0.0
	if ok, _ := c.docker(); ok {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(dockerDesc, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(reconnDesc, prometheus.CounterValue, float64(c.reconnects()))
}

// newMetrics makes the registry, with natmap_build_info for the version and
// backend.
func newMetrics(version, backend string) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		apply: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "natmap_kernel_apply_seconds",
			Help:    "Time one kernel transaction took: a change (apply) or the whole table (replace).",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
		}, []string{"op"}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "natmap_build_info",
		Help:        "Always 1: the daemon's version and kernel backend, as labels.",
		ConstLabels: prometheus.Labels{"version": version, "backend": backend},
	})
	info.Set(1)
	m.reg.MustRegister(m.apply, info, prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// watch registers the service's counts.
func (m *metrics) watch(svc *nat.Service, docker func() (bool, error), reconnects func() int) {
	m.reg.MustRegister(statsCollector{svc: svc, docker: docker, reconnects: reconnects})
}

// handler serves the metrics in Prometheus' text format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// timed is a backend whose transactions are timed into the metrics.
type timed struct {
	nat.Backend
	apply *prometheus.HistogramVec
}

func (t timed) Apply(ctx context.Context, c nat.Change) error {
	defer t.observe("apply", time.Now())
	return t.Backend.Apply(ctx, c)
}

func (t timed) Replace(ctx context.Context, rs nat.Ruleset) error {
	defer t.observe("replace", time.Now())
	return t.Backend.Replace(ctx, rs)
}

func (t timed) observe(op string, start time.Time) {
	t.apply.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// Check passes the integrity check through to a backend that has one.
func (t timed) Check(ctx context.Context, r nat.Rules) error {
	if c, ok := t.Backend.(nat.Checker); ok {
		return c.Check(ctx, r)
	}
	return nil
}

// KeepsHairpinElements passes the backend's answer through.
func (t timed) KeepsHairpinElements() bool {
	k, ok := t.Backend.(nat.HairpinKeeper)
	return ok && k.KeepsHairpinElements()
}

// Counters passes the counter read through to a backend that has one.
func (t timed) Counters(ctx context.Context, fs []nat.Forward) (map[nat.Endpoint]nat.Counter, error) {
	if c, ok := t.Backend.(nat.Counting); ok {
		return c.Counters(ctx, fs)
	}
	return nil, nil
}
