package dockermap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// fakeEngine serves the few Engine API calls natmap makes on a Unix
// socket, as dockerd answers them, and returns the Docker host URL.
func fakeEngine(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + path
}

// engineAPI is a dockerd with three containers: web (running, on two
// networks), old (stopped), and two whose IDs share the prefix "ab".
func engineAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_ping", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "OK") })
	mux.HandleFunc("GET /containers/json", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `[{"Id":"ab1111111111ffff","Names":["/one"]},{"Id":"ab2222222222ffff","Names":["/two"]},{"Id":"cd33","Names":["/web"]}]`)
	})
	mux.HandleFunc("GET /containers/{ref}/json", func(w http.ResponseWriter, r *http.Request) {
		switch r.PathValue("ref") {
		case "web":
			fmt.Fprint(w, `{"Id":"cd33","Name":"/web","State":{"Running":true},"Unknown":{"x":1},"NetworkSettings":{"Networks":{
				"zeta":{"IPAddress":"172.19.0.9","GlobalIPv6Address":""},
				"alpha":{"IPAddress":"172.18.0.2","GlobalIPv6Address":"fd00::2"}}}}`)
		case "old":
			fmt.Fprint(w, `{"Id":"ef44","Name":"/old","State":{"Running":false},"NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.17.0.5"}}}}`)
		case "ab":
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"message":"Multiple IDs found with provided prefix: ab"}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"message":"No such container: %s"}`, r.PathValue("ref"))
		}
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"Action":"start","Actor":{"Attributes":{"name":"web"}}}`+"\n")
		fmt.Fprint(w, `{"Action":"rename","Actor":{"Attributes":{"name":"new","oldName":"/old"}}}`+"\n")
	})
	return mux
}

// connected is a Docker that Watch has connected (what its session sets).
func connected(t *testing.T, host string, timeout time.Duration) *Docker {
	d := New(host, timeout, slog.New(slog.DiscardHandler))
	d.connected, d.lastErr = true, nil
	return d
}

func TestContainerLookups(t *testing.T) {
	d := connected(t, fakeEngine(t, engineAPI()), 5*time.Second)
	ctx := context.Background()

	web, err := d.Container(ctx, "web")
	want := nat.Container{ID: "cd33", Name: "web", Running: true, IP: netip.MustParseAddr("172.18.0.2"), IP6: netip.MustParseAddr("fd00::2")}
	if err != nil || web != want {
		t.Errorf("web: %+v %v; want %+v (the first network by name, fields natmap does not know ignored)", web, err, want)
	}
	old, err := d.Container(ctx, "old")
	if err != nil || old.Running || old.IP.IsValid() || old.Name != "old" {
		t.Errorf("a stopped container: %+v %v; want no address", old, err)
	}
	if _, err := d.Container(ctx, "nope"); !errors.Is(err, nat.ErrNotFound) {
		t.Errorf("an unknown container: %v, want ErrNotFound", err)
	}
	_, err = d.Container(ctx, "ab")
	var fe *nat.FieldError
	if !errors.As(err, &fe) || fe.Field != "container" || !strings.Contains(fe.Msg, "ab1111111111 (one), ab2222222222 (two)") {
		t.Errorf("an ambiguous prefix: %v; want the candidates named", err)
	}
	names, err := d.Names(ctx)
	if err != nil || !slices.Equal(names, []string{"one", "two", "web"}) {
		t.Errorf("names: %v %v", names, err)
	}
}

// An engine that is not there, or hangs, is "unavailable", fast; it
// marks Docker lost for status and metrics.
func TestEngineAwayOrHanging(t *testing.T) {
	ctx := context.Background()
	away := connected(t, "unix://"+filepath.Join(t.TempDir(), "none.sock"), 5*time.Second)
	if _, err := away.Container(ctx, "web"); !errors.Is(err, nat.ErrUnavailable) {
		t.Errorf("no engine: %v, want ErrUnavailable", err)
	}
	if ok, err := away.State(); ok || err == nil {
		t.Errorf("no engine: state %v %v, want lost", ok, err)
	}
	if _, err := away.Container(ctx, "web"); !errors.Is(err, nat.ErrUnavailable) || !strings.Contains(err.Error(), "Docker is not available") {
		t.Errorf("once lost: %v", err)
	}

	release := make(chan struct{})
	defer close(release)
	hang := connected(t, fakeEngine(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release })), 200*time.Millisecond)
	start := time.Now()
	_, err := hang.Names(ctx)
	if !errors.Is(err, nat.ErrUnavailable) || !strings.Contains(err.Error(), "did not answer within 200ms") {
		t.Errorf("a hanging engine: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a hanging engine held the call %s", took)
	}
}

func TestEventsStream(t *testing.T) {
	e, err := newEngine(fakeEngine(t, engineAPI()))
	if err != nil {
		t.Fatal(err)
	}
	msgs, errs := e.events(context.Background())
	var got []string
	for len(got) < 2 {
		select {
		case m := <-msgs:
			got = append(got, m.Action+" "+m.Actor.Attributes["name"]+" "+m.Actor.Attributes["oldName"])
		case err := <-errs:
			t.Fatalf("the stream ended early: %v (got %v)", err, got)
		}
	}
	if want := []string{"start web ", "rename new /old"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if err := <-errs; err != nil {
		t.Errorf("the engine closed the stream: %v, want nil", err)
	}
}

func TestEngineHosts(t *testing.T) {
	for host, want := range map[string]string{
		"unix:///var/run/docker.sock": "http://docker",
		"tcp://127.0.0.1:2375":        "http://127.0.0.1:2375",
	} {
		if e, err := newEngine(host); err != nil || e.base != want {
			t.Errorf("%s: %v %v, want base %s", host, e, err, want)
		}
	}
	if _, err := newEngine("https://docker.example:2376"); err == nil || !strings.Contains(err.Error(), "only unix:// and tcp://") {
		t.Errorf("TLS host: %v", err)
	}
}
