package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// Info describes the daemon for GET /status, and lends the API what it
// needs beyond the Service.
type Info struct {
	// Version is the daemon's version.
	Version string
	// BackendReason says why the backend was chosen.
	BackendReason string
	// Started is when the daemon began serving.
	Started time.Time
	// Render writes a ruleset in the form the host reloads at boot without
	// the daemon (for nftables, a file for `nft -f`; for iptables, the
	// IPv4 iptables-save file).
	Render func(nat.Ruleset) []byte
	// Save writes a ruleset to the daemon's save path(s) and says what it
	// wrote to each file.
	Save func(nat.Ruleset) ([]nat.SavedFile, error)
	// DockerState reports whether Docker answers, and why not.
	DockerState func() (bool, error)
	// ContainerNames lists Docker's containers; nil without Docker.
	ContainerNames func(context.Context) ([]string, error)
	// Policy is what a peer that is not root may add.
	Policy nat.Policy
}

type api struct {
	svc  *nat.Service
	info Info
	log  *slog.Logger
}

// NewHandler returns the HTTP handler of the socket API.
func NewHandler(svc *nat.Service, info Info, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &api{svc: svc, info: info, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /dnat", mutate(a, nat.DnatConfig.ToDNAT, func(ctx context.Context, d nat.DNAT) (bool, error) {
		_, changed, err := svc.AddDNAT(ctx, d)
		return changed, err
	}))
	mux.HandleFunc("DELETE /dnat", mutate(a, nat.DnatConfig.ToDNAT, deleted(svc.DeleteDNAT)))
	mux.HandleFunc("POST /hairpin", mutate(a, nat.HairpinConfig.ToHairpin, func(ctx context.Context, h nat.Hairpin) (bool, error) {
		_, changed, err := svc.AddHairpin(ctx, h)
		return changed, err
	}))
	mux.HandleFunc("DELETE /hairpin", mutate(a, nat.HairpinConfig.ToHairpin, deleted(svc.DeleteHairpin)))
	mux.HandleFunc("POST /snat", mutate(a, nat.SnatConfig.ToSNAT, svc.AddSNAT))
	mux.HandleFunc("DELETE /snat", mutate(a, nat.SnatConfig.ToSNAT, deleted(svc.DeleteSNAT)))
	mux.HandleFunc("POST /policy-route", mutate(a, nat.PolicyRouteConfig.ToPolicyRoute, func(_ context.Context, p nat.PolicyRoute) (bool, error) {
		return svc.AddPolicyRoute(p)
	}))
	mux.HandleFunc("DELETE /policy-route", mutate(a, nat.PolicyRouteConfig.ToPolicyRoute, func(_ context.Context, p nat.PolicyRoute) (bool, error) {
		return true, svc.DeletePolicyRoute(p)
	}))
	// Is this rule there? What a DELETE of the same body would find: the
	// rule that holds it, or not_found.
	mux.HandleFunc("POST /dnat/check", check(a, nat.DnatConfig.ToDNAT, svc.CheckDNAT))
	mux.HandleFunc("POST /hairpin/check", check(a, nat.HairpinConfig.ToHairpin, svc.CheckHairpin))
	mux.HandleFunc("POST /snat/check", check(a, nat.SnatConfig.ToSNAT, func(ctx context.Context, sn nat.SNAT) (nat.SNAT, error) {
		return sn, svc.CheckSNAT(ctx, sn)
	}))
	mux.HandleFunc("POST /policy-route/check", check(a, nat.PolicyRouteConfig.ToPolicyRoute, func(_ context.Context, p nat.PolicyRoute) (nat.PolicyRoute, error) {
		return p, svc.CheckPolicyRoute(p)
	}))
	a.mappingRoutes(mux)
	mux.HandleFunc("GET /mappings", a.mappings)
	mux.HandleFunc("GET /rules", a.rules)
	mux.HandleFunc("DELETE /clear", a.clear)
	mux.HandleFunc("GET /status", a.status)
	mux.HandleFunc("GET /containers", a.containers)
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, svc.Config()) })
	mux.HandleFunc("POST /apply", a.apply)
	mux.HandleFunc("POST /fwd", a.fwd)
	mux.HandleFunc("POST /save", a.save)
	mux.HandleFunc("GET /ruleset", a.ruleset)
	mux.HandleFunc("/", a.noRoute)
	return audit(log, mux)
}

// mutate is the handler of a POST or DELETE of one rule: decode the wire
// config C, parse it into the rule R, run op, and echo the config on POST
// (empty on DELETE), with the Natmap-Changed header.
func mutate[C any, R any](a *api, parse func(C) (R, error), op func(context.Context, R) (bool, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rule, ok := decodeRule(a, w, r, parse)
		if !ok {
			return
		}
		if r.Method == http.MethodPost {
			if err := a.info.Policy.Authorize(r.Context(), rule); err != nil {
				a.fail(w, r, err)
				return
			}
		}
		changed, err := op(r.Context(), rule)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		w.Header().Set(nat.ChangedHeader, fmt.Sprint(changed))
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusOK)
			return
		}
		reply(w, http.StatusOK, echo(rule))
	}
}

// decodeRule reads the body as the wire config C and parses it into the
// rule R; a failure is replied to (false).
func decodeRule[C any, R any](a *api, w http.ResponseWriter, r *http.Request, parse func(C) (R, error)) (R, bool) {
	var c C
	var rule R
	err := decodeBody(w, r, &c, false)
	if err == nil {
		rule, err = parse(c)
	}
	if err != nil {
		a.fail(w, r, err)
		return rule, false
	}
	return rule, true
}

// check is the handler of a rule's query: decode and parse as mutate
// does, and answer with the rule find returns, in its wire shape.
func check[C any, R any](a *api, parse func(C) (R, error), find func(context.Context, R) (R, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rule, ok := decodeRule(a, w, r, parse)
		if !ok {
			return
		}
		rule, err := find(r.Context(), rule)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		reply(w, http.StatusOK, echo(rule))
	}
}

// echo renders a parsed rule back in its wire shape.
func echo(rule any) any {
	switch v := rule.(type) {
	case nat.DNAT:
		return nat.ConfigOf(v)
	case nat.Hairpin:
		return nat.HairpinConfigOf(v)
	case nat.SNAT:
		return nat.SnatConfigOf(v)
	case nat.PolicyRoute:
		return nat.PolicyRouteConfigOf(v)
	}
	return rule
}

func deleted[R any](del func(context.Context, R) error) func(context.Context, R) (bool, error) {
	return func(ctx context.Context, rule R) (bool, error) { return true, del(ctx, rule) }
}

func (a *api) mappings(w http.ResponseWriter, r *http.Request) {
	l := a.svc.List()
	if r.URL.Query().Get("counters") != "" {
		var err error
		if l, err = a.svc.ListCounted(r.Context()); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	resp := a.listed(l)
	for _, st := range l.Mappings {
		pm := nat.PortMapOf(st.Rule)
		pm.Status, pm.Reason, pm.Counter = st.Status, st.Reason, st.Counter
		resp.Docker = append(resp.Docker, pm)
	}
	for _, st := range l.PolicyRoutes {
		resp.PolicyRoutes = append(resp.PolicyRoutes, nat.PolicyRouteEntry{PolicyRouteConfig: nat.PolicyRouteConfigOf(st.Rule), Status: st.Status, Reason: st.Reason})
	}
	reply(w, http.StatusOK, resp)
}

// listed is the reply's dnat, hairpin and snat entries of l, each marked
// standby when its ext_ip is not an address of this host now.
func (a *api) listed(l nat.Listing) nat.ListResponse {
	elsewhere := a.elsewhere()
	resp := nat.ListResponse{Docker: []nat.DockerPortMap{}, Dnats: []nat.DnatEntry{}, Snats: []nat.SnatEntry{}, Hairpins: []nat.HairpinEntry{}, PolicyRoutes: []nat.PolicyRouteEntry{}}
	for _, st := range l.Dnats {
		resp.Dnats = append(resp.Dnats, nat.DnatEntry{DnatConfig: nat.ConfigOf(st.Rule), Status: st.Status, Reason: st.Reason, Counter: st.Counter, Standby: elsewhere(st.Rule.ExtIP)})
	}
	for _, st := range l.Hairpins {
		resp.Hairpins = append(resp.Hairpins, nat.HairpinEntry{HairpinConfig: nat.HairpinConfigOf(st.Rule), Status: st.Status, Reason: st.Reason, Counter: st.Counter, Standby: elsewhere(st.Rule.ExtIP)})
	}
	for _, sn := range l.Snats {
		resp.Snats = append(resp.Snats, nat.SnatEntry{SnatConfig: nat.SnatConfigOf(sn), Status: "active", Standby: elsewhere(sn.ExtIP)})
	}
	return resp
}

// elsewhere reports whether a rule's external address is not one of this
// host's now (another router of a pair holds it). A rule without one (by
// interface, a masquerade) is never elsewhere, nor is any when the
// daemon cannot list the host's addresses: a listing only says so, and
// refuses nothing.
func (a *api) elsewhere() func(netip.Addr) bool {
	no := func(netip.Addr) bool { return false }
	if a.info.Policy.Addrs == nil {
		return no
	}
	addrs, err := a.info.Policy.Addrs()
	if err != nil {
		a.log.Debug("listing the host's addresses", "err", err)
		return no
	}
	return func(ip netip.Addr) bool {
		_, here := addrs[ip]
		return ip.IsValid() && !ip.IsUnspecified() && !here
	}
}

func (a *api) rules(w http.ResponseWriter, r *http.Request) {
	l := a.svc.List()
	live := []nat.LiveRule{}
	add := func(kind string, ext, in netip.Addr, ports nat.PortList, proto nat.Proto, inactive []uint16) {
		var installed []uint16
		for _, p := range ports.Pairs() {
			if !slices.Contains(inactive, p.Ext) {
				installed = append(installed, p.Ext)
			}
		}
		if len(installed) > 0 {
			live = append(live, nat.LiveRule{Kind: kind, ExtIP: ext.String(), IntIP: in.String(), Ports: installed, Proto: proto.String()})
		}
	}
	for _, st := range l.Dnats {
		add("dnat", st.Rule.ExtIP, st.Rule.IntIP, st.Rule.Ports, st.Rule.Proto, st.Inactive)
	}
	for _, st := range l.Hairpins {
		add("hairpin", st.Rule.ExtIP, st.Rule.IntIP, st.Rule.Ports, st.Rule.Proto, st.Inactive)
	}
	for _, st := range l.Mappings {
		if st.Status == "active" {
			m := st.Rule
			live = append(live, nat.LiveRule{Kind: "mapping", ExtIP: m.HostIP.String(), IntIP: m.Target().String(), Ports: []uint16{m.HostPort}, Proto: m.Proto.String()})
		}
	}
	for _, sn := range l.Snats {
		live = append(live, nat.LiveRule{Kind: "snat", ExtIP: sn.To(), IntIP: nat.PrefixString(sn.IntNet), Ports: []uint16{}})
	}
	reply(w, http.StatusOK, live)
}

func (a *api) clear(w http.ResponseWriter, r *http.Request) {
	if err := a.svc.Clear(r.Context()); err != nil {
		a.fail(w, r, err)
		return
	}
	w.Header().Set(nat.ChangedHeader, "true")
	w.WriteHeader(http.StatusOK)
}

func (a *api) status(w http.ResponseWriter, r *http.Request) {
	docker := "not configured"
	if a.info.DockerState != nil {
		docker = "connected"
		if ok, err := a.info.DockerState(); !ok {
			docker = fmt.Sprintf("unavailable: %v", err)
		}
	}
	reply(w, http.StatusOK, nat.StatusResponse{
		Version:       a.info.Version,
		Backend:       a.svc.BackendName(),
		BackendReason: a.info.BackendReason,
		Docker:        docker,
		Rules:         a.svc.Stats(),
		Standby:       a.standbyRules(),
		UptimeSeconds: int64(time.Since(a.info.Started).Seconds()),
	})
}

// standbyRules counts the rules that ls lists as standby, from the rules
// themselves (status need not build the sorted listing).
func (a *api) standbyRules() int {
	elsewhere, n := a.elsewhere(), 0
	a.svc.EachExtAddr(func(ip netip.Addr) { n += ones(elsewhere(ip)) })
	return n
}

func ones(b bool) int {
	if b {
		return 1
	}
	return 0
}

// containers lists the names of the containers natmap maps and, when
// Docker answers, of all of Docker's containers (for completion).
func (a *api) containers(w http.ResponseWriter, r *http.Request) {
	names := a.svc.ContainerNames()
	if a.info.ContainerNames != nil {
		if more, err := a.info.ContainerNames(r.Context()); err == nil {
			names = append(names, more...)
		}
	}
	slices.Sort(names)
	reply(w, http.StatusOK, nat.ContainersResponse{Containers: slices.Compact(names)})
}

func (a *api) fwd(w http.ResponseWriter, r *http.Request) {
	var req nat.FwdRequest
	if err := decodeBody(w, r, &req, true); err != nil {
		a.fail(w, r, err)
		return
	}
	changed, err := a.svc.EnableForwarding(req.IPv6)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, nat.FwdResponse{IPv6: req.IPv6, Changed: changed})
}

// save writes the active ruleset to the daemon's save path. The path is the
// daemon's, never the client's: a socket user must not choose where root
// writes.
func (a *api) save(w http.ResponseWriter, r *http.Request) {
	var req struct{}
	if err := decodeBody(w, r, &req, true); err != nil {
		a.fail(w, r, err)
		return
	}
	if a.info.Render == nil || a.info.Save == nil {
		a.fail(w, r, fmt.Errorf("saving is not available with this backend: %w", nat.ErrUnavailable))
		return
	}
	rs := a.svc.Ruleset()
	files, err := a.info.Save(rs)
	if err != nil {
		a.fail(w, r, fmt.Errorf("saving the ruleset: %w", err))
		return
	}
	resp := nat.SaveResponse{Forwards: len(rs.Forwards), Files: files}
	for _, f := range files {
		resp.Paths = append(resp.Paths, f.Path)
		a.log.Info("ruleset saved", "path", f.Path, "written", f.Summary, "forwards", len(rs.Forwards))
	}
	resp.Path = resp.Paths[0]
	reply(w, http.StatusOK, resp)
}

// ruleset returns the active ruleset as the backend's reload file.
func (a *api) ruleset(w http.ResponseWriter, r *http.Request) {
	if a.info.Render == nil {
		a.fail(w, r, fmt.Errorf("rendering is not available with this backend: %w", nat.ErrUnavailable))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write(a.info.Render(a.svc.Ruleset()))
}

// knownPaths are the routes whose other methods get 405, not 404.
var knownPaths = []string{"/mapping", "/remap", "/dnat", "/hairpin", "/snat", "/policy-route", "/mappings", "/rules", "/clear", "/status", "/fwd", "/save", "/ruleset",
	"/dnat/check", "/hairpin/check", "/snat/check", "/policy-route/check", "/config", "/apply", "/containers"}

func (a *api) noRoute(w http.ResponseWriter, r *http.Request) {
	if slices.Contains(knownPaths, r.URL.Path) {
		reply(w, http.StatusMethodNotAllowed, nat.ErrorResponse{Error: fmt.Sprintf("method %s is not allowed on %s", r.Method, r.URL.Path)})
		return
	}
	reply(w, http.StatusNotFound, nat.ErrorResponse{Error: fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path)})
}

// apply makes the configuration equal to the body's (POST /apply).
func (a *api) apply(w http.ResponseWriter, r *http.Request) {
	var req nat.ApplyRequest
	if err := decodeBody(w, r, &req, false); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.info.Policy.AuthorizeConfig(r.Context(), req.Config); err != nil {
		a.fail(w, r, err)
		return
	}
	resp, err := a.svc.Apply(r.Context(), req.Config, req.Prune, req.DryRun)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, resp)
}

// fail replies with the error's status and code (nat's error kinds say
// which), and logs the refusal.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := nat.ErrStatus(err)
	var pe *nat.ProblemsError
	if errors.As(err, &pe) {
		a.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "status", code, "problems", len(pe.Problems))
		reply(w, code, nat.ErrorResponse{Error: nat.ErrorText(err), Problems: pe.Problems, Code: nat.ErrCode(err)})
		return
	}
	level := slog.LevelInfo
	switch {
	case code >= 500:
		level = slog.LevelError
	case code == http.StatusNotFound && isQuery(r):
		level = slog.LevelDebug // an answer ("not there"), not a refusal
	}
	a.log.Log(r.Context(), level, "request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	resp := nat.ErrorResponse{Error: nat.ErrorText(err), Code: nat.ErrCode(err)}
	var fb *nat.Forbidden
	if errors.As(err, &fb) {
		resp.Rule = fb.Rule
	}
	var fe *nat.FieldError
	if errors.As(err, &fe) {
		resp.Field = fe.Field
	}
	reply(w, code, resp)
}

// errorText drops the sentinel suffix ": not found" and the like, which only
// classify the error.
func errorText(err error) string {
	msg := err.Error()
	for _, s := range []error{nat.ErrInvalid, nat.ErrNotFound, nat.ErrConflict, nat.ErrPortInUse, nat.ErrUnavailable, nat.ErrTooLarge} {
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

// decodeBody reads one JSON object of at most nat.MaxBodyBytes into v. Unknown
// fields and trailing data are errors. An empty body is allowed only when
// optional is set.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	body := http.MaxBytesReader(w, r.Body, nat.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, extra := dec.Token(); extra != io.EOF {
			return fmt.Errorf("request body: unexpected data after the JSON object: %w", nat.ErrInvalid)
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
		return fmt.Errorf("request body: empty, want a JSON object: %w", nat.ErrInvalid)
	case errors.As(err, &tooBig):
		return fmt.Errorf("request body: larger than %d bytes: %w", nat.MaxBodyBytes, nat.ErrInvalid)
	case errors.As(err, &syntax):
		return fmt.Errorf("request body: malformed JSON at byte %d: %v: %w", syntax.Offset, err, nat.ErrInvalid)
	case errors.As(err, &typ) && typ.Field == "":
		return fmt.Errorf("request body: want a JSON object, got %s: %w", typ.Value, nat.ErrInvalid)
	case errors.As(err, &typ):
		return &nat.FieldError{Field: typ.Field, Msg: fmt.Sprintf("want a JSON %s, got %s", typ.Type.Kind(), typ.Value)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("request body: %s: %w", strings.TrimPrefix(err.Error(), "json: "), nat.ErrInvalid)
	}
	return fmt.Errorf("request body: %v: %w", err, nat.ErrInvalid)
}
