package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lab-ops/natmap/nat"
)

// rig is a Service on nat's strict fakes, as nat's own tests build it.
type rig struct {
	svc    *nat.Service
	fake   *nat.Fake
	res    *nat.FakeReserver
	store  *nat.MemStore
	router *nat.FakeRouter
}

func (r *rig) deps() nat.Deps {
	if r.router == nil {
		r.router = nat.NewFakeRouter()
	}
	return nat.Deps{Backend: r.fake, Reserver: r.res, Store: r.store, System: &nat.NoSystem{}, Router: r.router}
}

func newRig(t testing.TB, st nat.State) *rig {
	t.Helper()
	r := &rig{fake: nat.NewFake(), res: nat.NewFakeReserver(), store: &nat.MemStore{}}
	r.svc = nat.NewService(r.deps())
	if err := r.svc.Start(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return r
}

// snapshot is everything a failed request must leave as it was.
func (r *rig) snapshot() string {
	return fmt.Sprintf("kernel:\n%sheld: %s\nsaves: %d\nroutes: %s\nrules: %+v", r.fake.Dump(), r.res.Dump(), r.store.Saves(), r.router.Dump(), r.svc.List())
}

// as sends a request to h as the user uid (the peer the daemon would
// have read from the socket) and records the reply.
func as(h http.Handler, uid int, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req = req.WithContext(nat.WithPeer(req.Context(), nat.Peer{UID: uid, PID: 1}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}
