package nat

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Config is a whole configuration as a file declares it (the wire shapes
// of the single-rule requests). GET /config returns one; POST /apply takes
// one.
type Config struct {
	// Version is the format's version, 1.
	Version int `json:"version" yaml:"version"`
	// Forwarding, when set, is the IP forwarding natmap enables.
	Forwarding *ForwardingConfig `json:"forwarding,omitempty" yaml:"forwarding,omitempty"`
	// Dnat are the DNAT rules.
	Dnat []DnatConfig `json:"dnat" yaml:"dnat"`
	// Snat are the SNAT rules.
	Snat []SnatConfig `json:"snat" yaml:"snat"`
	// Hairpin are the hairpin rules.
	Hairpin []HairpinConfig `json:"hairpin" yaml:"hairpin"`
	// PolicyRoutes are the policy routes.
	PolicyRoutes []PolicyRouteConfig `json:"policy_routes" yaml:"policy_routes"`
	// Docker are the Docker mappings.
	Docker []MappingConfig `json:"docker" yaml:"docker"`
}

// ForwardingConfig is the IP forwarding natmap turns on (it never turns
// forwarding off).
type ForwardingConfig struct {
	// IPv4 enables IPv4 forwarding.
	IPv4 bool `json:"ipv4" yaml:"ipv4"`
	// IPv6 enables IPv6 forwarding.
	IPv6 bool `json:"ipv6" yaml:"ipv6"`
}

// MappingConfig is one Docker mapping in a Config.
type MappingConfig struct {
	// Container is the container's name (or a local service's name).
	Container string `json:"container" yaml:"container"`
	// HostIP is the host address; empty for every address.
	HostIP string `json:"host_ip,omitempty" yaml:"host_ip,omitempty"`
	// HostPort is the host port (required).
	HostPort int `json:"host_port" yaml:"host_port"`
	// ContainerPort is the container's port; 0 means the host port.
	ContainerPort int `json:"container_port,omitempty" yaml:"container_port,omitempty"`
	// TargetIP makes a local service mapping, without Docker.
	TargetIP string `json:"target_ip,omitempty" yaml:"target_ip,omitempty"`
	// Proto is tcp (the default) or udp.
	Proto string `json:"proto,omitempty" yaml:"proto,omitempty"`
}

// sectionOrder orders problems as a file lists its sections.
var sectionOrder = []string{"", "dnat", "snat", "hairpin", "policy_routes", "docker"}

// ConfigVersion is the version of the Config format.
const ConfigVersion = 1

// ApplyRequest is the body of POST /apply.
type ApplyRequest struct {
	// Config is the configuration to apply.
	Config Config `json:"config"`
	// Prune removes the rules the configuration does not name.
	Prune bool `json:"prune"`
	// DryRun only reports what would change.
	DryRun bool `json:"dry_run"`
}

// ApplyResponse says what an apply changed (or, dry, would change).
type ApplyResponse struct {
	// Add are the rules added, Remove those removed, Keep those kept, each
	// as a sentence such as "dnat tcp 203.0.113.43 ports 25 -> 10.0.0.101".
	Add    []string `json:"add"`
	Remove []string `json:"remove"`
	Keep   []string `json:"keep"`
	// Changed reports that Add or Remove is not empty.
	Changed bool `json:"changed"`
	// Applied reports that the change was made (not a dry run).
	Applied bool `json:"applied"`
}

// Problem is one entry of a configuration that cannot be applied.
type Problem struct {
	// Section is the list the entry is in: "dnat", "snat", "hairpin",
	// "policy_routes", "docker", or "" for the whole file.
	Section string `json:"section"`
	// Index is the entry's place in its list, from 0.
	Index int `json:"index"`
	// Error says what is wrong.
	Error string `json:"error"`
}

// ProblemsError is a configuration refused because of its problems.
type ProblemsError struct {
	Problems []Problem
	// cause is the kind of the first problem (ErrInvalid, ErrConflict...).
	cause error
}

func (e *ProblemsError) Error() string {
	msg := fmt.Sprintf("the configuration has %d problems; nothing was changed:", len(e.Problems))
	for _, p := range e.Problems {
		msg += "\n  " + p.String()
	}
	return msg
}

func (e *ProblemsError) Unwrap() error { return e.cause }

func (p Problem) String() string {
	if p.Section == "" {
		return p.Error
	}
	return fmt.Sprintf("%s[%d]: %s", p.Section, p.Index, p.Error)
}

// ConfigOfState is st as a Config.
func ConfigOfState(st State) Config {
	c := Config{Version: ConfigVersion, Dnat: []DnatConfig{}, Snat: []SnatConfig{}, Hairpin: []HairpinConfig{},
		PolicyRoutes: []PolicyRouteConfig{}, Docker: []MappingConfig{}}
	if st.IPForward || st.IPv6Forward {
		c.Forwarding = &ForwardingConfig{IPv4: st.IPForward, IPv6: st.IPv6Forward}
	}
	for _, d := range st.Dnats {
		c.Dnat = append(c.Dnat, ConfigOf(d))
	}
	for _, s := range st.Snats {
		c.Snat = append(c.Snat, SnatConfigOf(s))
	}
	for _, h := range st.Hairpins {
		c.Hairpin = append(c.Hairpin, HairpinConfigOf(h))
	}
	for _, p := range st.PolicyRoutes {
		c.PolicyRoutes = append(c.PolicyRoutes, PolicyRouteConfigOf(p))
	}
	for _, m := range st.Mappings {
		mc := MappingConfig{Container: m.Container, HostPort: int(m.HostPort), ContainerPort: int(m.ContainerPort), Proto: m.Proto.String()}
		if !m.HostIP.IsUnspecified() || m.HostIP.Is6() {
			mc.HostIP = m.HostIP.String()
		}
		if m.TargetIP.IsValid() {
			mc.TargetIP = m.TargetIP.String()
		}
		c.Docker = append(c.Docker, mc)
	}
	return c
}

// Config returns the running configuration.
func (s *Service) Config() Config {
	defer s.lock()()
	return ConfigOfState(s.snapshot())
}

// parsed is a Config parsed into rules, each with its index in its
// section; entries with problems are left out.
type parsed struct {
	dnats    []at[DNAT]
	snats    []at[SNAT]
	hairpins []at[Hairpin]
	routes   []at[PolicyRoute]
	mappings []at[MappingRequest]
	problems []Problem
}

// at is an entry and its index in its section.
type at[T any] struct {
	i int
	v T
}

func parseConfig(c Config) parsed {
	var p parsed
	if c.Version != ConfigVersion {
		p.problems = append(p.problems, Problem{Error: fmt.Sprintf("version %d is not supported (want version: %d)", c.Version, ConfigVersion)})
	}
	p.dnats = parseSection(&p, "dnat", c.Dnat, DnatConfig.ToDNAT)
	p.snats = parseSection(&p, "snat", c.Snat, SnatConfig.ToSNAT)
	p.hairpins = parseSection(&p, "hairpin", c.Hairpin, HairpinConfig.ToHairpin)
	p.routes = parseSection(&p, "policy_routes", c.PolicyRoutes, PolicyRouteConfig.ToPolicyRoute)
	p.mappings = parseSection(&p, "docker", c.Docker, MappingConfig.ToRequest)
	return p
}

// MaxApplyForwards is the most forwards one configuration may ask for:
// every forward is a reserved port (one file descriptor) and an element in
// the kernel, and the whole configuration is built under the service
// lock, so a body of ranges that would expand to millions is refused
// before anything is built.
const MaxApplyForwards = 1 << 18

// checkSize counts, without expanding them, the forwards the parsed
// configuration asks for.
func (p parsed) checkSize() error {
	n := len(p.mappings)
	for _, d := range p.dnats {
		n += d.v.Ports.Count()
	}
	for _, h := range p.hairpins {
		n += h.v.Ports.Count()
	}
	if n > MaxApplyForwards {
		return fmt.Errorf("the configuration asks for %d forwards, more than natmap takes in one request (%d): %w", n, MaxApplyForwards, ErrTooLarge)
	}
	return nil
}

// parseSection parses (and validates) each entry of a section, keeping its
// index; an entry that does not parse is one of p's problems.
func parseSection[C, R any](p *parsed, section string, entries []C, parse func(C) (R, error)) []at[R] {
	var out []at[R]
	for i, e := range entries {
		r, err := parse(e)
		if err != nil {
			p.problems = append(p.problems, Problem{Section: section, Index: i, Error: err.Error()})
			continue
		}
		out = append(out, at[R]{i, r})
	}
	return out
}

// ToRequest parses a configuration's mapping as the API's docker add does,
// but the host port is required.
func (mc MappingConfig) ToRequest() (MappingRequest, error) {
	w := DockerAddMapRequest{HostPort: mc.HostPort, ContainerPort: mc.ContainerPort, Proto: mc.Proto}
	if mc.HostIP != "" {
		w.HostIP = &mc.HostIP
	}
	if mc.TargetIP != "" {
		w.TargetIP = &mc.TargetIP
	}
	req, err := w.ToRequest(mc.Container)
	if err == nil && req.HostPort == 0 {
		err = FieldErr("host_port", "a configuration needs the host port (0 would pick a new one at every apply)")
	}
	if err == nil && req.ContainerPort == 0 {
		req.ContainerPort = req.HostPort
	}
	return req, err
}

// Apply makes natmap's configuration equal to c in one change: every new
// port reserved and the kernel updated in one transaction, or nothing
// changed at all. Without prune, rules c does not name are kept; with
// prune they are removed. A problem anywhere (a bad entry, a port another
// rule or program holds) refuses the whole configuration with every
// problem listed, as a *ProblemsError. Applying what is already there
// changes nothing.
func (s *Service) Apply(ctx context.Context, c Config, prune, dryRun bool) (ApplyResponse, error) {
	p := parseConfig(c)
	if err := p.checkSize(); err != nil {
		return ApplyResponse{}, err
	}
	// Containers are looked up before taking the lock (Docker may be slow).
	known := s.mappingIndex()
	mappings := make([]at[Mapping], 0, len(p.mappings))
	for _, e := range p.mappings {
		i, req := e.i, e.v
		m := Mapping{Container: req.Container, HostIP: req.HostIP, HostPort: req.HostPort,
			ContainerPort: req.ContainerPort, Proto: req.Proto, TargetIP: req.TargetIP}
		if !m.Local() {
			if old, ok := known[m.key()]; ok {
				m = old
			} else if ct, err := s.findContainer(ctx, req.Container); errors.Is(err, ErrUnavailable) {
				// Docker is not up (yet: the daemon may start first at
				// boot). The mapping waits, reserved, and follows the
				// container by name once Docker answers.
				s.log.Warn("Docker is not available: the mapping waits for it", "container", req.Container, "err", err)
			} else if err != nil {
				p.problems = append(p.problems, Problem{Section: "docker", Index: i, Error: err.Error()})
				continue
			} else {
				m.Container, m.ContainerID = ct.Name, ct.ID
				m.ContainerIP = ct.addrFor(m.HostIP)
			}
		}
		mappings = append(mappings, at[Mapping]{i, m})
	}

	defer s.lock()()
	before := s.snapshot()
	want, sources, problems := s.desired(before, p, mappings, c.Forwarding, prune)
	if problems = append(p.problems, problems...); len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b Problem) int {
			return cmp.Or(slices.Index(sectionOrder, a.Section)-slices.Index(sectionOrder, b.Section), a.Index-b.Index)
		})
		cause := ErrConflict
		if len(p.problems) > 0 {
			cause = ErrInvalid
		}
		return ApplyResponse{}, &ProblemsError{Problems: problems, cause: cause}
	}
	resp := diffStates(before, want)
	if !resp.Changed || dryRun {
		return resp, nil
	}
	if err := s.replaceLocked(ctx, want, true); err != nil {
		var busy reserveErrors
		if errors.As(err, &busy) {
			var problems []Problem
			for _, ep := range slices.SortedFunc(maps.Keys(busy), compareEndpoint) {
				src := sources[ep]
				problems = append(problems, Problem{Section: src.section, Index: src.index, Error: fmt.Sprintf("reserving %s: %v", ep, busy[ep])})
			}
			return ApplyResponse{}, &ProblemsError{Problems: problems, cause: ErrPortInUse}
		}
		return ApplyResponse{}, err
	}
	resp.Applied = true
	s.log.Info("configuration applied", "added", len(resp.Add), "removed", len(resp.Remove), "kept", len(resp.Keep), "prune", prune)
	return resp, nil
}

// mappingIndex is every mapping by what it is (container name and
// addresses), so an apply neither asks Docker for a mapping it has nor
// renumbers it.
func (s *Service) mappingIndex() map[mappingKey]Mapping {
	defer s.lock()()
	index := make(map[mappingKey]Mapping, len(s.mappings))
	for _, m := range s.mappings {
		index[m.key()] = m
	}
	return index
}

// mappingKey is what makes two mappings the same: the container (or
// local service) and the addresses, not the ID or the container's
// current address.
type mappingKey struct {
	container               string
	hostIP, targetIP        netip.Addr
	hostPort, containerPort uint16
	proto                   Proto
}

func (m Mapping) key() mappingKey {
	return mappingKey{m.Container, m.HostIP, m.TargetIP, m.HostPort, m.ContainerPort, m.Proto}
}

func sameMapping(a, b Mapping) bool { return a.key() == b.key() }

// source is where a forward comes from in the configuration.
type source struct {
	section string
	index   int
}

// desired is before with the parsed configuration merged in (prune: the
// configuration alone), and where each forward came from. Forwards that
// disagree (one endpoint, two targets) are problems.
func (s *Service) desired(before State, p parsed, mappings []at[Mapping], fwd *ForwardingConfig, prune bool) (State, map[Endpoint]source, []Problem) {
	m := newMerge(before)
	if fwd != nil {
		m.want.IPForward = fwd.IPv4 || (!prune && before.IPForward)
		m.want.IPv6Forward = fwd.IPv6 || (!prune && before.IPv6Forward)
	}
	if !prune {
		m.keep(before)
	}
	m.dnats(p.dnats)
	m.hairpins(p.hairpins, s.router)
	for _, e := range p.snats {
		m.snat[e.v.ID()] = e.v
	}
	m.routes(p.routes, s)
	m.mappings(mappings)
	return m.result(), m.sources, m.problems
}

// merge builds desired's state: the rules merged so far, each forward's
// endpoint with its target and where it came from, and the problems.
type merge struct {
	want     State
	forwards map[Endpoint]Forward
	sources  map[Endpoint]source
	problems []Problem
	dnat     map[DNATID]DNAT
	hairpin  map[HairpinID]Hairpin
	snat     map[SNATID]SNAT
	route    map[PolicyRoute]bool
	tables   map[uint32]PolicyRoute // a route of each table, for its gateway
	kept     []Mapping
	keptKeys map[mappingKey]bool
}

func newMerge(before State) *merge {
	return &merge{
		want:     State{IPForward: before.IPForward, IPv6Forward: before.IPv6Forward, NextMappingID: before.NextMappingID},
		forwards: map[Endpoint]Forward{}, sources: map[Endpoint]source{},
		dnat: map[DNATID]DNAT{}, hairpin: map[HairpinID]Hairpin{}, snat: map[SNATID]SNAT{},
		route: map[PolicyRoute]bool{}, tables: map[uint32]PolicyRoute{}, keptKeys: map[mappingKey]bool{},
	}
}

// claim takes fs's endpoints for src; an endpoint already taken to
// another target is a problem of src's (false).
func (m *merge) claim(src source, fs []Forward) bool {
	ok := true
	for _, f := range fs {
		have, taken := m.forwards[f.Endpoint()]
		switch {
		case !taken:
			m.forwards[f.Endpoint()] = f
			m.sources[f.Endpoint()] = src
		case have != f:
			what := "this configuration"
			if other := m.sources[f.Endpoint()]; other.section != "" {
				what = fmt.Sprintf("%s[%d]", other.section, other.index)
			} else {
				what = "a rule already installed (apply --prune to replace it)"
			}
			m.problems = append(m.problems, Problem{Section: src.section, Index: src.index,
				Error: forwardedElsewhere(f, have) + " by " + what})
			ok = false
		}
	}
	return ok
}

// keep takes every rule of before (apply without --prune).
func (m *merge) keep(before State) {
	for _, d := range before.Dnats {
		m.claim(source{}, d.Forwards())
		m.dnat[d.ID()] = d
	}
	for _, h := range before.Hairpins {
		m.claim(source{}, h.dnat().Forwards())
		m.hairpin[h.ID()] = h
	}
	for _, sn := range before.Snats {
		m.snat[sn.ID()] = sn
	}
	for _, r := range before.PolicyRoutes {
		m.route[r] = true
		m.tables[r.Table] = r
	}
	for _, mp := range before.Mappings {
		m.claim(source{}, []Forward{mp.forward()})
		m.kept = append(m.kept, mp)
		m.keptKeys[mp.key()] = true
	}
}

func (m *merge) dnats(ds []at[DNAT]) {
	for _, e := range ds {
		i, d := e.i, e.v
		if !m.claim(source{"dnat", i}, d.Forwards()) {
			continue
		}
		if old, ok := m.dnat[d.ID()]; ok {
			d.Ports = old.Ports.Union(d.Ports)
		}
		m.dnat[d.ID()] = d
	}
}

// hairpins merges the file's hairpins; one without lan_cidr gets the
// connected network of its internal address.
func (m *merge) hairpins(hs []at[Hairpin], router Router) {
	for _, e := range hs {
		i, h := e.i, e.v
		if !h.LanCIDR.IsValid() {
			lan, err := router.ConnectedPrefix(h.IntIP)
			if err != nil {
				m.problems = append(m.problems, Problem{Section: "hairpin", Index: i, Error: err.Error()})
				continue
			}
			h.LanCIDR = lan
		}
		if !m.claim(source{"hairpin", i}, h.dnat().Forwards()) {
			continue
		}
		if old, ok := m.hairpin[h.ID()]; ok {
			h.Ports = old.Ports.Union(h.Ports)
		}
		m.hairpin[h.ID()] = h
	}
}

// routes merges the file's policy routes: a table keeps one gateway, and
// a route not installed yet needs a gateway on a connected network.
func (m *merge) routes(rs []at[PolicyRoute], s *Service) {
	for _, e := range rs {
		i, r := e.i, e.v
		if err := tableClash(r, maps.Values(m.tables)); err != nil {
			m.problems = append(m.problems, Problem{Section: "policy_routes", Index: i, Error: ErrorText(err)})
			continue
		}
		if _, installed := s.routes[r]; !installed {
			if err := s.router.CheckGateway(r.Via); err != nil {
				m.problems = append(m.problems, Problem{Section: "policy_routes", Index: i, Error: err.Error()})
				continue
			}
		}
		m.route[r] = true
		m.tables[r.Table] = r
	}
}

// mappings merges the file's mappings; a new one gets the next ID.
func (m *merge) mappings(ms []at[Mapping]) {
	for _, e := range ms {
		i, mp := e.i, e.v
		if m.keptKeys[mp.key()] {
			continue
		}
		if !m.claim(source{"docker", i}, []Forward{mp.forward()}) {
			continue
		}
		if mp.ID == 0 {
			mp.ID = m.want.NextMappingID
			m.want.NextMappingID++
		}
		m.kept = append(m.kept, mp)
		m.keptKeys[mp.key()] = true
	}
}

// result is the merged state, each list in its order.
func (m *merge) result() State {
	want := m.want
	want.Dnats = slices.SortedFunc(maps.Values(m.dnat), compareDNAT)
	want.Hairpins = slices.SortedFunc(maps.Values(m.hairpin), compareHairpin)
	want.Snats = slices.SortedFunc(maps.Values(m.snat), compareSNAT)
	want.PolicyRoutes = slices.SortedFunc(maps.Keys(m.route), comparePolicyRoute)
	want.Mappings = m.kept
	slices.SortFunc(want.Mappings, func(a, b Mapping) int { return a.ID - b.ID })
	return want
}

func compareEndpoint(a, b Endpoint) int { return strings.Compare(a.String(), b.String()) }

// diffStates lists the rules of before and after as added, removed and
// kept. A rule whose ports changed is one removed and one added.
func diffStates(before, after State) ApplyResponse {
	lines := func(st State) []string {
		var out []string
		for _, d := range st.Dnats {
			out = append(out, "dnat "+d.String())
		}
		for _, h := range st.Hairpins {
			out = append(out, h.String())
		}
		for _, sn := range st.Snats {
			out = append(out, sn.String())
		}
		for _, r := range st.PolicyRoutes {
			out = append(out, r.String())
		}
		for _, m := range st.Mappings {
			target := m.Container
			if m.TargetIP.IsValid() {
				target += " (" + m.TargetIP.String() + ")"
			}
			out = append(out, fmt.Sprintf("docker %s %s -> %s:%d", m.Proto, netip.AddrPortFrom(m.HostIP, m.HostPort), target, m.ContainerPort))
		}
		if st.IPForward {
			out = append(out, "forwarding ipv4")
		}
		if st.IPv6Forward {
			out = append(out, "forwarding ipv6")
		}
		return out
	}
	set := func(ls []string) map[string]bool {
		in := make(map[string]bool, len(ls))
		for _, l := range ls {
			in[l] = true
		}
		return in
	}
	old, now := lines(before), lines(after)
	inOld, inNow := set(old), set(now)
	resp := ApplyResponse{Add: []string{}, Remove: []string{}, Keep: []string{}}
	for _, l := range now {
		if inOld[l] {
			resp.Keep = append(resp.Keep, l)
		} else {
			resp.Add = append(resp.Add, l)
		}
	}
	for _, l := range old {
		if !inNow[l] {
			resp.Remove = append(resp.Remove, l)
		}
	}
	resp.Changed = len(resp.Add)+len(resp.Remove) > 0
	return resp
}

// reserveErrors are the ports a strict replace could not reserve.
type reserveErrors map[Endpoint]error

func (r reserveErrors) Error() string {
	msg := strconv.Itoa(len(r)) + " ports could not be reserved:"
	for _, ep := range slices.SortedFunc(maps.Keys(r), compareEndpoint) {
		msg += fmt.Sprintf(" %s (%v);", ep, r[ep])
	}
	return msg
}
