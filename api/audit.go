package api

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// statusRecorder remembers the status a handler replied with, and puts the
// request's warnings in the reply's headers before they are sent.
type statusRecorder struct {
	http.ResponseWriter
	status   int
	warnings *nat.Warnings
	sent     bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.sent {
		r.sent = true
		r.status = code
		for _, msg := range r.warnings.Take() {
			r.Header().Add(nat.WarningHeader, msg)
		}
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if !r.sent {
		r.WriteHeader(http.StatusOK)
	}
	return r.ResponseWriter.Write(b)
}

// audit logs every mutating request with its peer's uid and pid, its
// status and how long it took, and collects the warnings the change
// gives (WarningHeader). A mutating request runs to its end even when
// its client goes away (Ctrl-C, a client's timeout): a change already
// started is never cut short halfway (an iptables-restore killed between
// its two families).
// isQuery reports whether r only reads: a GET, or a rule's check (a POST
// only because its question is a rule's body).
func isQuery(r *http.Request) bool {
	return r.Method == http.MethodGet || r.Method == http.MethodHead || strings.HasSuffix(r.URL.Path, "/check")
}

func audit(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isQuery(r) {
			next.ServeHTTP(w, r)
			return
		}
		ctx, warned := nat.WithWarnings(context.WithoutCancel(r.Context()))
		r = r.WithContext(ctx)
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK, warnings: warned}
		start := time.Now()
		next.ServeHTTP(rec, r)
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", rec.status, "took", time.Since(start).Round(time.Microsecond)}
		if p, ok := nat.PeerOf(r.Context()); ok {
			attrs = append(attrs, "uid", p.UID, "pid", p.PID)
		}
		log.Info("request", attrs...)
	})
}
