package main

import (
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

	"github.com/lab-ops/natmap/dockermap"
	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/store"
)

// EnableForwarding implements nat.System.
func (hostSystem) EnableForwarding(ipv6 bool) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return err
	}
	if ipv6 {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
	}
	return nil
}

// Settle implements nat.System.
func (h hostSystem) Settle(need nat.HostNeeds) error { return h.settings.settle(need) }

// hostSettings are the host settings natmap changed, and the value each
// had before, kept in a file beside the state file (PATH.host) that is
// written before a setting changes: route_localnet of each interface
// ("all" too) and natmap's DOCKER-USER rule.
type hostSettings struct {
	path string

	mu    sync.Mutex
	saved savedSettings
}

// savedSettings is the file's content.
type savedSettings struct {
	// RouteLocalnet maps each interface natmap set route_localnet on
	// ("all" for every interface) to the value it found there.
	RouteLocalnet map[string]string `json:"route_localnet"`
	// ForwardHole is set while natmap's DOCKER-USER rule may be in place.
	ForwardHole bool `json:"forward_hole"`
}

// hostSettingsPath is where the daemon with state file statePath keeps
// what it changed on the host.
func hostSettingsPath(statePath string) string { return statePath + ".host" }

// loadHostSettings reads what an earlier run changed (nothing when there
// is no file).
func loadHostSettings(path string) (*hostSettings, error) {
	h := &hostSettings{path: path, saved: savedSettings{RouteLocalnet: map[string]string{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &h.saved)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the host settings natmap changed (%s): %w", path, err)
	}
	if h.saved.RouteLocalnet == nil {
		h.saved.RouteLocalnet = map[string]string{}
	}
	return h, nil
}

func (h *hostSettings) persist() error {
	b, err := json.MarshalIndent(h.saved, "", "  ")
	if err != nil {
		return err
	}
	return store.WriteFile(h.path, append(b, '\n'), 0o600)
}

func localnetPath(ifname string) string {
	return filepath.Join("/proc/sys/net/ipv4/conf", ifname, "route_localnet")
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
		want["all"] = true
	}
	for _, dst := range need.LocalnetTo {
		name, err := interfaceTo(dst)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if name != "lo" {
			want[name] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if err := h.setLocalnet(name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(h.saved.RouteLocalnet)) {
		if !want[name] {
			if err := h.restoreLocalnet(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := h.forwardHole(need.ForwardHole); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// setLocalnet turns route_localnet on for name, remembering what it was
// first; a 1 natmap did not write is left alone and not remembered.
func (h *hostSettings) setLocalnet(name string) error {
	path := localnetPath(name)
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	value := strings.TrimSpace(string(cur))
	if _, ours := h.saved.RouteLocalnet[name]; !ours {
		if value == "1" {
			return nil
		}
		h.saved.RouteLocalnet[name] = value
		if err := h.persist(); err != nil {
			delete(h.saved.RouteLocalnet, name)
			return err
		}
	}
	if value == "1" {
		return nil
	}
	return os.WriteFile(path, []byte("1\n"), 0o644)
}

// restoreLocalnet puts back the value natmap found on name (an interface
// that is gone needs nothing).
func (h *hostSettings) restoreLocalnet(name string) error {
	path := localnetPath(name)
	if err := os.WriteFile(path, []byte(h.saved.RouteLocalnet[name]+"\n"), 0o644); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("putting back %s: %w", path, err)
	}
	delete(h.saved.RouteLocalnet, name)
	return h.persist()
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
