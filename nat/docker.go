package nat

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Container is what natmap needs to know of a Docker container.
type Container struct {
	// ID is the full container ID.
	ID string
	// Name is the container's name, without Docker's leading "/".
	Name string
	// IP is the container's IPv4 address on its first network; invalid
	// when it has none (not running).
	IP netip.Addr
	// IP6 is its IPv6 address on its first network that has one; invalid
	// when none has (or it does not run).
	IP6 netip.Addr
	// Running reports whether the container runs.
	Running bool
}

// addrFor is the container's address of the family of a mapping on
// hostIP (invalid when it has none, or does not run).
func (c Container) addrFor(hostIP netip.Addr) netip.Addr {
	if !c.Running {
		return netip.Addr{}
	}
	if hostIP.Is4() {
		return c.IP
	}
	return c.IP6
}

// Containers finds Docker containers by name, full ID or unique ID prefix.
// Errors wrap ErrNotFound (no such container), ErrInvalid (an ambiguous
// prefix, naming the candidates) or ErrUnavailable (Docker cannot be
// reached).
type Containers interface {
	Container(ctx context.Context, ref string) (Container, error)
}

// Mapping maps a host port to a port of a Docker container (found by name,
// so the mapping follows the container through restarts and re-creation),
// or to a target address given outright (a "local service").
type Mapping struct {
	// ID numbers the mapping; `docker rm --id` takes it.
	ID int `json:"id"`
	// Container is the container's name (or the local service's name).
	Container string `json:"container"`
	// HostIP is the address the mapping answers on; 0.0.0.0 or :: for
	// every local address.
	HostIP netip.Addr `json:"host_ip"`
	// HostPort is the host port.
	HostPort uint16 `json:"host_port"`
	// ContainerPort is the port on the container or target.
	ContainerPort uint16 `json:"container_port"`
	// Proto is tcp or udp.
	Proto Proto `json:"proto"`
	// TargetIP, when set, is the local service's address: Docker is not
	// asked.
	TargetIP netip.Addr `json:"target_ip,omitzero"`
	// ContainerID is the ID of the container last seen with the name.
	ContainerID string `json:"container_id,omitempty"`
	// ContainerIP is where the mapping sends traffic now; invalid while
	// the container is not running.
	ContainerIP netip.Addr `json:"container_ip,omitzero"`
	// net is the directly connected network of ContainerIP (the bridge's).
	net netip.Prefix
}

// Local reports whether the mapping is to a local service, not a container.
func (m Mapping) Local() bool { return m.TargetIP.IsValid() }

// Target is where traffic goes now.
func (m Mapping) Target() netip.Addr {
	if m.Local() {
		return m.TargetIP
	}
	return m.ContainerIP
}

// forward is the mapping's kernel forward. Its target is invalid while the
// container is not running (the forward is then parked: reserved, not
// installed).
func (m Mapping) forward() Forward {
	return Forward{Proto: m.Proto, Ext: netip.AddrPortFrom(m.HostIP, m.HostPort), Int: netip.AddrPortFrom(m.Target(), m.ContainerPort)}
}

func (m Mapping) String() string {
	return fmt.Sprintf("mapping %d: %s %s -> %s:%d", m.ID, m.Proto, netip.AddrPortFrom(m.HostIP, m.HostPort), m.Container, m.ContainerPort)
}

// CheckContainerRef accepts a container name or ID (prefix) as Docker
// spells them.
func CheckContainerRef(ref string) error {
	if ref == "" {
		return FieldErr("container", "missing container name or ID")
	}
	if len(ref) > 255 || !containerName(ref) {
		return FieldErr("container", "%q is not a container name or ID", ref)
	}
	return nil
}

// containerName is Docker's form of a name (or ID): /?[a-zA-Z0-9][a-zA-Z0-9_.-]*.
func containerName(s string) bool {
	s = strings.TrimPrefix(s, "/")
	return s != "" && alnum(s[0]) && nameChars(s)
}

// alnum is an ASCII letter or digit.
func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

// nameChars is true when s has only ASCII letters, digits and "_.-".
func nameChars(s string) bool {
	for i := range len(s) {
		if c := s[i]; !alnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// MappingRequest asks for a mapping.
type MappingRequest struct {
	// Container is the container's name, ID or ID prefix; for a local
	// service, its name.
	Container string
	// HostIP is the host address; invalid means 0.0.0.0.
	HostIP netip.Addr
	// HostPort is the host port; 0 asks the daemon to pick a free one.
	HostPort uint16
	// ContainerPort is the target port; 0 means the host port.
	ContainerPort uint16
	// TargetIP makes a local service mapping.
	TargetIP netip.Addr
	// Proto is tcp or udp.
	Proto Proto
	// BothFamilies asks, when no host address was given, for an IPv6
	// twin on [::] as well when the container has an IPv6 address (what
	// docker run -p does). The socket API's docker add sets it.
	BothFamilies bool
}

func (r *MappingRequest) normalize() error {
	if err := CheckContainerRef(r.Container); err != nil {
		return err
	}
	r.Container = strings.TrimPrefix(r.Container, "/")
	if !r.HostIP.IsValid() {
		r.HostIP = netip.IPv4Unspecified()
	}
	if r.HostIP.Zone() != "" || r.HostIP.IsMulticast() {
		return FieldErr("host_ip", "%s is not a host address", r.HostIP)
	}
	if r.TargetIP.IsValid() {
		if err := checkHostAddr("target_ip", r.TargetIP); err != nil {
			return err
		}
		if r.TargetIP.Is4() != r.HostIP.Is4() {
			return FieldErr("target_ip", "%s and host_ip %s are of different IP versions", r.TargetIP, r.HostIP)
		}
		if r.TargetIP == netip.IPv6Loopback() {
			return FieldErr("target_ip", "::1 cannot be reached from other hosts: IPv6 has no route_localnet, so the kernel drops packets from the network to ::1 even after a DNAT; make the service listen on :: or the host's address, or map to 127.0.0.1")
		}
	}
	if r.Proto != ProtoTCP && r.Proto != ProtoUDP {
		return FieldErr("proto", "unknown protocol %s (want tcp or udp)", r.Proto)
	}
	if r.ContainerPort == 0 {
		if r.HostPort == 0 {
			return FieldErr("container_port", "missing: with host_port 0 the container port must be given")
		}
		r.ContainerPort = r.HostPort
	}
	return nil
}

// AddMapping adds a Docker mapping. The container is looked up (by name,
// ID or unique prefix) unless a target IP is given; a mapping of a
// container that is not running is kept with its port reserved and goes
// live when the container runs. The same mapping again is a no-op.
func (s *Service) AddMapping(ctx context.Context, req MappingRequest) (m Mapping, changed bool, err error) {
	if err := req.normalize(); err != nil {
		return Mapping{}, false, err
	}
	m = Mapping{Container: req.Container, HostIP: req.HostIP, HostPort: req.HostPort,
		ContainerPort: req.ContainerPort, Proto: req.Proto, TargetIP: req.TargetIP}
	var also *Mapping // the IPv6 twin of a mapping given no host address
	if !m.Local() {
		c, err := s.findContainer(ctx, req.Container)
		if err != nil {
			return Mapping{}, false, err
		}
		m.Container, m.ContainerID = c.Name, c.ID
		m.ContainerIP = c.addrFor(m.HostIP)
		if c.Running && !m.ContainerIP.IsValid() && m.HostIP.Is6() {
			return Mapping{}, false, FieldErr("host_ip", "container %s has no IPv6 address: none of its networks has IPv6 (docker network create --ipv6), so a mapping on %s cannot reach it", c.Name, m.HostIP)
		}
		if req.BothFamilies && m.HostIP == netip.IPv4Unspecified() && c.IP6.IsValid() && m.HostPort != 0 {
			// Like docker run -p 8080:80: both families when the
			// container has both.
			six := m
			six.HostIP, six.ContainerIP = netip.IPv6Unspecified(), c.addrFor(netip.IPv6Unspecified())
			also = &six
		}
	}
	defer s.lock()()
	m.net = s.netOf(m.ContainerIP)
	if m.HostPort == 0 {
		if m.HostPort, err = s.pickPort(m.HostIP, m.Proto); err != nil {
			return Mapping{}, false, err
		}
	}
	for _, old := range s.mappings {
		if sameMapping(old, m) {
			return old, false, nil
		}
	}
	added := []Mapping{m}
	if also != nil {
		six := *also
		six.HostPort, six.net = m.HostPort, s.netOf(six.ContainerIP)
		added = append(added, six)
	}
	tx := &txn{}
	prevID := s.nextID
	tx.undo = append(tx.undo, func() { s.nextID = prevID })
	var fresh []Forward
	for i := range added {
		added[i].ID = s.nextID
		s.nextID++
		f, err := s.own(tx, []Forward{added[i].forward()})
		if err != nil {
			tx.rollback()
			return Mapping{}, false, err
		}
		fresh = append(fresh, f...)
		if !added[i].Target().IsValid() {
			put(tx, s.parked, added[i].forward().Endpoint(), fmt.Sprintf("container %s is not running", added[i].Container))
		}
		put(tx, s.mappings, added[i].ID, added[i])
	}
	if err := s.commit(ctx, tx, edit{fresh: fresh, rules: true}); err != nil {
		return Mapping{}, false, fmt.Errorf("adding %s: %w", m, err)
	}
	for _, a := range added {
		s.log.Info("mapping added", "mapping", a.String(), "target", a.Target())
	}
	return added[0], true, nil
}

// findContainer asks Docker, which must be there.
func (s *Service) findContainer(ctx context.Context, ref string) (Container, error) {
	if s.docker == nil {
		return Container{}, fmt.Errorf("Docker is not available: natmap was started without Docker support: %w", ErrUnavailable)
	}
	return s.docker.Container(ctx, ref)
}

// pickPort finds a free host port for an endpoint, from the top of the
// port range down.
func (s *Service) pickPort(ip netip.Addr, proto Proto) (uint16, error) {
	for p := 65535; p >= 32768; p-- {
		ep := Endpoint{Addr: netip.AddrPortFrom(ip, uint16(p)), Proto: proto}
		if _, used := s.forwards[ep]; used {
			continue
		}
		c, err := s.reserver.Reserve(ep)
		if err != nil {
			continue
		}
		c.Close()
		return uint16(p), nil
	}
	return 0, fmt.Errorf("no free %s port on %s: %w", proto, ip, ErrUnavailable)
}

// MappingSelector picks the mappings a removal acts on.
type MappingSelector struct {
	// ID selects one mapping by its ID (when not 0).
	ID int
	// Container selects by container name, ID or ID prefix.
	Container string
	// HostPort selects the container's mapping of this host port (0: all
	// of the container's mappings).
	HostPort uint16
	// Proto goes with HostPort.
	Proto Proto
}

// RemoveMappings removes the selected mappings; none selected is
// ErrNotFound.
func (s *Service) RemoveMappings(ctx context.Context, sel MappingSelector) ([]Mapping, error) {
	name, err := s.selectorOwner(ctx, sel)
	if err != nil {
		return nil, err
	}
	defer s.lock()()
	gone, err := s.selectMappings(sel, name)
	if err != nil {
		return nil, err
	}
	tx := &txn{}
	var fs []Forward
	for _, m := range gone {
		fs = append(fs, m.forward())
		drop(tx, s.mappings, m.ID)
	}
	if err := s.commit(ctx, tx, edit{gone: s.disown(tx, fs), rules: true}); err != nil {
		return nil, fmt.Errorf("removing mappings: %w", err)
	}
	for _, m := range gone {
		s.log.Info("mapping removed", "mapping", m.String())
	}
	return gone, nil
}

// FindMappings returns the mappings sel selects, as RemoveMappings would
// remove them, or an error that wraps ErrNotFound.
func (s *Service) FindMappings(ctx context.Context, sel MappingSelector) ([]Mapping, error) {
	name, err := s.selectorOwner(ctx, sel)
	if err != nil {
		return nil, err
	}
	defer s.lock()()
	return s.selectMappings(sel, name)
}

// selectorOwner is the name under which sel's container's mappings are
// kept ("" for a selector by ID).
func (s *Service) selectorOwner(ctx context.Context, sel MappingSelector) (string, error) {
	if sel.ID != 0 {
		return "", nil
	}
	if err := CheckContainerRef(sel.Container); err != nil {
		return "", err
	}
	return s.mappingOwner(ctx, sel.Container), nil
}

// selectMappings returns the mappings of sel, by ID, sorted; name is the
// container's as selectorOwner found it.
func (s *Service) selectMappings(sel MappingSelector, name string) ([]Mapping, error) {
	var found []Mapping
	for _, m := range s.mappings {
		switch {
		case sel.ID != 0 && m.ID == sel.ID,
			sel.ID == 0 && m.Container == name && (sel.HostPort == 0 || m.HostPort == sel.HostPort && m.Proto == sel.Proto):
			found = append(found, m)
		}
	}
	if len(found) == 0 {
		switch {
		case sel.ID != 0:
			return nil, fmt.Errorf("no mapping with id %d: %w", sel.ID, ErrNotFound)
		case sel.HostPort != 0:
			return nil, fmt.Errorf("no mapping of %s on host port %d/%s: %w", sel.Container, sel.HostPort, sel.Proto, ErrNotFound)
		}
		return nil, fmt.Errorf("no mappings of %s: %w", sel.Container, ErrNotFound)
	}
	slices.SortFunc(found, func(a, b Mapping) int { return a.ID - b.ID })
	return found, nil
}

// mappingOwner turns a container reference into the name mappings are
// kept under: a name that has mappings is used as it is; an ID or prefix is
// looked up in Docker (when it answers).
func (s *Service) mappingOwner(ctx context.Context, ref string) string {
	ref = strings.TrimPrefix(ref, "/")
	s.mu.Lock()
	for _, m := range s.mappings {
		if m.Container == ref {
			s.mu.Unlock()
			return ref
		}
	}
	for _, m := range s.mappings {
		if m.ContainerID != "" && strings.HasPrefix(m.ContainerID, ref) {
			s.mu.Unlock()
			return m.Container
		}
	}
	s.mu.Unlock()
	if s.docker != nil {
		if c, err := s.docker.Container(ctx, ref); err == nil {
			return c.Name
		}
	}
	return ref
}

// Remap moves a mapping to a new host port without touching the container:
// the new port is reserved and installed, and the old one withdrawn, in one
// kernel transaction. On any failure the old mapping is untouched.
func (s *Service) Remap(ctx context.Context, container string, proto Proto, from, to uint16) ([]Mapping, error) {
	if err := CheckContainerRef(container); err != nil {
		return nil, err
	}
	if to == 0 {
		return nil, FieldErr("new_host_port", "port 0 is out of range 1-65535")
	}
	name := s.mappingOwner(ctx, container)
	defer s.lock()()
	// Every mapping of the port moves: IPv4 and IPv6 alike.
	var olds []Mapping
	for _, m := range s.mappings {
		if m.Container == name && m.HostPort == from && m.Proto == proto {
			olds = append(olds, m)
		}
	}
	slices.SortFunc(olds, func(a, b Mapping) int { return a.ID - b.ID })
	if len(olds) == 0 {
		return nil, fmt.Errorf("no mapping of %s on host port %d/%s: %w", container, from, proto, ErrNotFound)
	}
	if from == to {
		return olds, nil
	}
	tx := &txn{}
	var e edit
	moved := make([]Mapping, len(olds))
	for i, old := range olds {
		m := old
		m.HostPort = to
		fresh, err := s.own(tx, []Forward{m.forward()})
		if err != nil {
			tx.rollback()
			return nil, err
		}
		if reason, down := s.parked[old.forward().Endpoint()]; down {
			put(tx, s.parked, m.forward().Endpoint(), reason)
		}
		e.fresh = append(e.fresh, fresh...)
		e.gone = append(e.gone, s.disown(tx, []Forward{old.forward()})...)
		put(tx, s.mappings, m.ID, m)
		moved[i] = m
	}
	if err := s.commit(ctx, tx, e); err != nil {
		return nil, fmt.Errorf("remapping %s to port %d: %w", olds[0], to, err)
	}
	for _, m := range moved {
		s.log.Info("mapping remapped", "mapping", m.String(), "old_port", from)
	}
	return moved, nil
}

// flushUDP queues the UDP forwards removed from the kernel for a flush of
// their conntrack entries, done once the service lock is released (lock).
func (s *Service) flushUDP(fs []Forward) {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	for _, f := range fs {
		if f.Proto == ProtoUDP {
			s.toFlush = append(s.toFlush, f)
		}
	}
}
