package nat

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"
)

// MaxBodyBytes is the largest request body the API reads.
const MaxBodyBytes = 1 << 20

// ChangedHeader is set on replies of mutating requests: "true" when the
// request changed something, "false" when it was already in place.
const ChangedHeader = "Natmap-Changed"

// Info describes the daemon for GET /status.
type Info struct {
	// Version is the daemon's version.
	Version string
	// BackendReason says why the backend was chosen.
	BackendReason string
	// Started is when the daemon began serving.
	Started time.Time
}

type api struct {
	svc  *Service
	info Info
	log  *slog.Logger
}

// NewHandler returns the HTTP handler of the socket API.
func NewHandler(svc *Service, info Info, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &api{svc: svc, info: info, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /dnat", a.addDNAT)
	mux.HandleFunc("DELETE /dnat", a.deleteDNAT)
	mux.HandleFunc("GET /mappings", a.mappings)
	mux.HandleFunc("GET /rules", a.rules)
	mux.HandleFunc("DELETE /clear", a.clear)
	mux.HandleFunc("GET /status", a.status)
	mux.HandleFunc("POST /fwd", a.fwd)
	mux.HandleFunc("/", a.noRoute)
	return mux
}

func (a *api) addDNAT(w http.ResponseWriter, r *http.Request) {
	var c DnatConfig
	if err := decodeBody(w, r, &c, false); err != nil {
		a.fail(w, r, err)
		return
	}
	d, err := c.toDNAT()
	if err != nil {
		a.fail(w, r, err)
		return
	}
	_, changed, err := a.svc.AddDNAT(r.Context(), d)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(ChangedHeader, fmt.Sprint(changed))
	reply(w, http.StatusOK, ConfigOf(d))
}

func (a *api) deleteDNAT(w http.ResponseWriter, r *http.Request) {
	var c DnatConfig
	if err := decodeBody(w, r, &c, false); err != nil {
		a.fail(w, r, err)
		return
	}
	d, err := c.toDNAT()
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.svc.DeleteDNAT(r.Context(), d); err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(ChangedHeader, "true")
	w.WriteHeader(http.StatusOK)
}

func (a *api) mappings(w http.ResponseWriter, r *http.Request) {
	resp := ListResponse{Docker: []any{}, Dnats: []DnatEntry{}, Snats: []any{}, Hairpins: []any{}, PolicyRoutes: []any{}}
	for _, st := range a.svc.List() {
		resp.Dnats = append(resp.Dnats, DnatEntry{DnatConfig: ConfigOf(st.Rule), Status: st.Status, Reason: st.Reason})
	}
	reply(w, http.StatusOK, resp)
}

func (a *api) rules(w http.ResponseWriter, r *http.Request) {
	live := []LiveRule{}
	for _, st := range a.svc.List() {
		var ports []uint16
		for _, p := range st.Rule.Ports.Pairs() {
			if !slices.Contains(st.Inactive, p.Ext) {
				ports = append(ports, p.Ext)
			}
		}
		if len(ports) == 0 {
			continue
		}
		live = append(live, LiveRule{
			Kind:  "dnat",
			ExtIP: st.Rule.ExtIP.String(),
			IntIP: st.Rule.IntIP.String(),
			Ports: ports,
			Proto: st.Rule.Proto.String(),
		})
	}
	reply(w, http.StatusOK, live)
}

func (a *api) clear(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.Clear(r.Context()); err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(ChangedHeader, "true")
	w.WriteHeader(http.StatusOK)
}

func (a *api) status(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, StatusResponse{
		Version:       a.info.Version,
		Backend:       a.svc.BackendName(),
		BackendReason: a.info.BackendReason,
		Rules:         a.svc.Stats(),
		UptimeSeconds: int64(time.Since(a.info.Started).Seconds()),
	})
}

func (a *api) fwd(w http.ResponseWriter, r *http.Request) {
	var req FwdRequest
	if err := decodeBody(w, r, &req, true); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.svc.EnableForwarding(req.IPv6); err != nil {
		a.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, req)
}

var knownPaths = []string{"/dnat", "/mappings", "/rules", "/clear", "/status", "/fwd"}

func (a *api) noRoute(w http.ResponseWriter, r *http.Request) {
	if slices.Contains(knownPaths, r.URL.Path) {
		reply(w, http.StatusMethodNotAllowed, ErrorResponse{Error: fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path)})
		return
	}
	reply(w, http.StatusNotFound, ErrorResponse{Error: fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path)})
}

// fail replies with the error's status; the mapping lives in ErrStatus.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := ErrStatus(err)
	level := slog.LevelInfo
	if code >= 500 {
		level = slog.LevelError
	}
	a.log.Log(r.Context(), level, "request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	reply(w, code, ErrorResponse{Error: errorText(err)})
}

// errorText drops the sentinel suffix ": not found" and the like, which only
// classify the error.
func errorText(err error) string {
	msg := err.Error()
	for _, s := range []error{ErrInvalid, ErrNotFound, ErrConflict, ErrPortInUse, ErrUnavailable} {
		msg = strings.TrimSuffix(msg, ": "+s.Error())
	}
	return msg
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client went away; nothing to do
}

// decodeBody reads one JSON object of at most MaxBodyBytes into v. Unknown
// fields and trailing data are errors. An empty body is allowed only when
// optional is set.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			return fmt.Errorf("request body: unexpected data after the JSON object: %w", ErrInvalid)
		}
		return nil
	}
	var (
		tooBig *http.MaxBytesError
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	switch {
	case errors.Is(err, io.EOF):
		if optional {
			return nil
		}
		return fmt.Errorf("request body: empty, want a JSON object: %w", ErrInvalid)
	case errors.As(err, &tooBig):
		return fmt.Errorf("request body: larger than %d bytes: %w", MaxBodyBytes, ErrInvalid)
	case errors.As(err, &syntax):
		return fmt.Errorf("request body: malformed JSON at byte %d: %v: %w", syntax.Offset, err, ErrInvalid)
	case errors.As(err, &typ) && typ.Field == "":
		return fmt.Errorf("request body: want a JSON object, got %s: %w", typ.Value, ErrInvalid)
	case errors.As(err, &typ):
		return &FieldError{Field: typ.Field, Msg: fmt.Sprintf("want a JSON %s, got %s", typ.Type.Kind(), typ.Value)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("request body: %s: %w", strings.TrimPrefix(err.Error(), "json: "), ErrInvalid)
	}
	return fmt.Errorf("request body: %v: %w", err, ErrInvalid)
}
