package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The metrics text parses as Prometheus' text format, with the families
// and the histogram a scraper expects.
func TestMetricsExposition(t *testing.T) {
	m := newMetrics("0.1.0", "nftables")
	m.watch(nil, func() (bool, error) { return true, nil }, func() int { return 2 })
	m.observe("apply", 300*time.Microsecond)
	m.observe("apply", 3*time.Millisecond)
	m.observe("replace", 7*time.Second)
	var b strings.Builder
	m.write(&b)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	for _, name := range []string{"natmap_build_info", "natmap_docker_connected", "natmap_docker_reconnects_total", "natmap_kernel_apply_seconds",
		"process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds_total", "go_goroutines"} {
		if families[name] == nil {
			t.Errorf("no %s in:\n%s", name, b.String())
		}
	}
	for _, mf := range families["natmap_kernel_apply_seconds"].GetMetric() {
		h := mf.GetHistogram()
		op := mf.GetLabel()[0].GetValue()
		want := map[string]uint64{"apply": 2, "replace": 1}[op]
		if h.GetSampleCount() != want {
			t.Errorf("%s: %d samples, want %d", op, h.GetSampleCount(), want)
		}
		// Buckets are cumulative: 0.5 ms holds the first apply, 5 ms both.
		for _, bk := range h.GetBucket() {
			if op == "apply" && bk.GetUpperBound() == 0.0005 && bk.GetCumulativeCount() != 1 ||
				op == "apply" && bk.GetUpperBound() == 0.005 && bk.GetCumulativeCount() != 2 ||
				op == "replace" && bk.GetUpperBound() == 5 && bk.GetCumulativeCount() != 0 {
				t.Errorf("%s bucket %v: %d", op, bk.GetUpperBound(), bk.GetCumulativeCount())
			}
		}
	}
	if !strings.Contains(b.String(), `natmap_build_info{backend="nftables",version="0.1.0"} 1`) {
		t.Errorf("build info:\n%s", b.String())
	}
}
