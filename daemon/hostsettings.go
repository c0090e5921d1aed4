package daemon

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/lab-ops/natmap/compat"
	"github.com/lab-ops/natmap/dockermap"
	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/store"
)

// EnableForwarding implements nat.System.
func (h hostSystem) EnableForwarding(ipv6 bool) ([]string, error) { return h.settings.forwarding(ipv6) }

// Settle implements nat.System.
func (h hostSystem) Settle(need nat.HostNeeds) error { return h.settings.settle(need) }

// hostSettings are the host settings natmap changed, and the value each
// had before, kept in a file beside the state file (PATH.host) that is
// written before a setting changes: sysctls (route_localnet, forwarding,
// accept_ra) and natmap's DOCKER-USER rule. restoreAll puts them all back
// (uninstall --purge).
type hostSettings struct {
	path string

	mu    sync.Mutex
	saved savedSettings
}

// savedSettings is the file's content.
type savedSettings struct {
	// Sysctl maps each setting natmap changed (its name under /proc/sys,
	// such as net/ipv4/conf/all/route_localnet) to the value it found.
	Sysctl map[string]string `json:"sysctl"`
	// ForwardHole is set while natmap's DOCKER-USER rule may be in place.
	ForwardHole bool `json:"forward_hole"`
}

// HostSettingsPath is where the daemon with state file statePath keeps
// what it changed on the host.
func HostSettingsPath(statePath string) string { return statePath + ".host" }

// loadHostSettings reads what an earlier run changed (nothing when there
// is no file).
func loadHostSettings(path string) (*hostSettings, error) {
	h := &hostSettings{path: path}
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, &h.saved)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the host settings natmap changed (%s): %w", path, err)
	}
	if h.saved.Sysctl == nil {
		h.saved.Sysctl = map[string]string{}
	}
	return h, nil
}

// RestoreHostSettings puts back every host setting recorded at path (the
// state's HostSettingsPath) as natmap found it, forwarding included
// (uninstall --purge).
func RestoreHostSettings(path string) error {
	settings, err := loadHostSettings(path)
	if err != nil {
		return err
	}
	return settings.restoreAll()
}

func (h *hostSettings) persist() error {
	b, err := json.MarshalIndent(h.saved, "", "  ")
	if err != nil {
		return err
	}
	return store.WriteFile(h.path, append(b, '\n'), 0o600)
}

func localnetName(ifname string) string { return "net/ipv4/conf/" + ifname + "/route_localnet" }

// set gives the sysctl name the value, remembering the value it had
// first; a setting that already has the value is left alone and not
// remembered. It returns what changed, as "name old -> new", or "".
func (h *hostSettings) set(name, value string) (string, error) {
	path := filepath.Join("/proc/sys", name)
	cur, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	old := strings.TrimSpace(string(cur))
	if old == value {
		return "", nil
	}
	if _, ours := h.saved.Sysctl[name]; !ours {
		h.saved.Sysctl[name] = old
		if err := h.persist(); err != nil {
			delete(h.saved.Sysctl, name)
			return "", err
		}
	}
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return fmt.Sprintf("%s %s -> %s", strings.ReplaceAll(name, "/", "."), old, value), nil
}

// restore puts back the value natmap found for name (an interface that is
// gone needs nothing).
func (h *hostSettings) restore(name string) error {
	path := filepath.Join("/proc/sys", name)
	if err := os.WriteFile(path, []byte(h.saved.Sysctl[name]+"\n"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("putting back %s: %w", path, err)
	}
	delete(h.saved.Sysctl, name)
	return h.persist()
}

// settle makes need true: route_localnet on "all" and on the interfaces
// that reach need.LocalnetTo, natmap's DOCKER-USER rule while it forwards
// anything; and puts back what natmap changed that is not needed.
func (h *hostSettings) settle(need nat.HostNeeds) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	want := map[string]bool{}
	if need.LocalnetAll {
		want[localnetName("all")] = true
	}
	for _, dst := range need.LocalnetTo {
		name, err := interfaceTo(dst)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if name != "lo" {
			want[localnetName(name)] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if _, err := h.set(name, "1"); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(h.saved.Sysctl)) {
		if strings.HasSuffix(name, "/route_localnet") && !want[name] {
			if err := h.restore(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// The rule is added only once Docker answered, and removed whenever
	// nothing is forwarded.
	if !need.ForwardHole || need.Docker {
		if err := h.forwardHole(need.ForwardHole); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// forwarding turns IPv4 forwarding on, and IPv6 forwarding with ipv6. With
// IPv6 forwarding on, the kernel ignores router advertisements on an
// interface whose accept_ra is 1, and a default route learnt from them
// (SLAAC) silently goes: such interfaces, and the default for new ones,
// get accept_ra 2 (accept them while forwarding). It says what changed.
func (h *hostSettings) forwarding(ipv6 bool) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := []string{"net/ipv4/ip_forward"}
	var changed []string
	if ipv6 && !compat.KernelHasIPv6() {
		ipv6 = false
		changed = append(changed, "net.ipv6: this kernel has no IPv6 (booted with ipv6.disable=1): IPv4 forwarding only")
	}
	if ipv6 {
		ras, _ := filepath.Glob("/proc/sys/net/ipv6/conf/*/accept_ra")
		for _, path := range ras {
			b, err := os.ReadFile(path)
			if ifname := filepath.Base(filepath.Dir(path)); err == nil && strings.TrimSpace(string(b)) == "1" && ifname != "all" && ifname != "lo" {
				names = append(names, strings.TrimPrefix(path, "/proc/sys/"))
			}
		}
		names = append(names, "net/ipv6/conf/all/forwarding")
	}
	for _, name := range names {
		value := "1"
		if strings.HasSuffix(name, "/accept_ra") {
			value = "2"
		}
		what, err := h.set(name, value)
		if err != nil {
			return changed, err
		}
		if what != "" {
			changed = append(changed, what)
		}
	}
	return changed, nil
}

// restoreAll puts back everything natmap changed on the host, as it found
// it: sysctls, forwarding included, and the DOCKER-USER rule.
func (h *hostSettings) restoreAll() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	// Forwarding goes off before accept_ra goes back, so the kernel never
	// forwards while ignoring router advertisements.
	names := slices.SortedFunc(maps.Keys(h.saved.Sysctl), func(a, b string) int {
		return cmp.Compare(sysctlOrder(a), sysctlOrder(b))
	})
	for _, name := range names {
		if err := h.restore(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := h.forwardHole(false); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func sysctlOrder(name string) int {
	if strings.HasSuffix(name, "/forwarding") || strings.HasSuffix(name, "ip_forward") {
		return 0
	}
	return 1
}

// forwardHole adds or removes natmap's rule in Docker's DOCKER-USER chain
// (where Docker made one). Removing what natmap never added runs nothing.
func (h *hostSettings) forwardHole(open bool) error {
	if !open {
		if !h.saved.ForwardHole {
			return nil
		}
		if err := dockermap.CloseForwardHole(nat.MarkForwarded); err != nil {
			return err
		}
		h.saved.ForwardHole = false
		return h.persist()
	}
	if !h.saved.ForwardHole {
		h.saved.ForwardHole = true
		if err := h.persist(); err != nil {
			return err
		}
	}
	return dockermap.OpenForwardHole(nat.MarkForwarded)
}

// hostAddrs lists the host's own addresses, each with its interface's
// name.
func hostAddrs() (map[netip.Addr]string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	names := map[int]string{}
	out := map[netip.Addr]string{}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		if _, seen := names[a.LinkIndex]; !seen {
			names[a.LinkIndex] = fmt.Sprint(a.LinkIndex)
			if link, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
				names[a.LinkIndex] = link.Attrs().Name
			}
		}
		out[ip.Unmap()] = names[a.LinkIndex]
	}
	return out, nil
}

// interfaceTo is the interface the host reaches dst by.
func interfaceTo(dst netip.Addr) (string, error) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", fmt.Errorf("finding the route to %v: %v", dst, err)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("finding the interface to %v: %w", dst, err)
	}
	return link.Attrs().Name, nil
}
