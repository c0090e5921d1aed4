package main

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/lab-ops/natmap/nat"
)

// DnatCmd adds or deletes a static DNAT rule.
type DnatCmd struct {
	ExtIP string `name:"ext-ip" help:"External address clients connect to (required unless --ext-if is given: without it the rule forwards whatever address --ext-if has, now or later, such as a DHCP or PPPoE WAN address)." placeholder:"IP"`
	IntIP string `name:"int-ip" required:"" help:"Internal host to forward to." placeholder:"IP"`
	Ports string `required:"" help:"Ports: a comma-separated list of ports and ranges, EXT:INT to translate (25,465,8000-8100,2222:22)." placeholder:"LIST"`
	Proto string `default:"tcp" complete:"tcp,udp" help:"Protocol: tcp or udp."`
	ExtIf string `name:"ext-if" help:"Only forward traffic arriving on this interface; alone (no --ext-ip), forward traffic for any address of it." placeholder:"IF"`
	ruleOp
}

// Run sends the rule to the daemon.
func (c *DnatCmd) Run(g *Globals, out *output) error {
	cfg := nat.DnatConfig{ExtIP: c.ExtIP, IntIP: c.IntIP, Ports: c.Ports, Proto: c.Proto}
	if c.ExtIf != "" {
		cfg.ExtIf = &c.ExtIf
	}
	return c.send(g, out, "/dnat", "dnat", cfg, describe(cfg))
}

func describe(c nat.DnatConfig) string {
	ext := c.ExtIP
	if ext == "" && c.ExtIf != nil {
		ext = "any address of"
	}
	s := fmt.Sprintf("%s %s ports %s -> %s", strings.ToLower(orTCP(c.Proto)), ext, c.Ports, c.IntIP)
	if c.ExtIf != nil && *c.ExtIf != "" {
		s += " on " + *c.ExtIf
	}
	return s
}

func orTCP(p string) string {
	if p == "" {
		return "tcp"
	}
	return p
}

// LsCmd lists rules.
type LsCmd struct {
	Filter   string `arg:"" optional:"" help:"Only mappings of containers whose name or ID starts with this text, and rules whose addresses or interface contain it."`
	Counters bool   `short:"c" help:"Show the packets and bytes each forwarding rule's clients sent, read from the kernel."`
}

// Run prints the rules as a table or as the API's JSON.
func (c *LsCmd) Run(g *Globals, out *output) error {
	var list nat.ListResponse
	path := "/mappings"
	if c.Counters {
		path += "?counters=1"
	}
	if out.json && c.Filter == "" {
		// The daemon's reply is the answer: indent it rather than decode
		// and encode it again (with 10,000 dnats and 10,000 hairpins the
		// command took 175 ms that way, 95-115 ms this way).
		var raw rawReply
		if _, err := newClient(g, out).call(http.MethodGet, path, nil, &raw); err != nil {
			return err
		}
		return out.printRawJSON(raw)
	}
	if _, err := newClient(g, out).call(http.MethodGet, path, nil, &list); err != nil {
		return err
	}
	if c.Filter != "" {
		list = filterList(list, c.Filter)
	}
	if out.json {
		out.printJSON(list)
		return nil
	}
	rows := listRows(list, c.Counters)
	if len(rows) == 0 {
		fmt.Fprintln(out.stdout, "no rules")
		return nil
	}
	header := []string{"KIND", "EXT-IP", "PORTS", "PROTO", "INT-IP", "DETAIL", "STATUS"}
	if c.Counters {
		header = append(header, "PACKETS", "BYTES")
	}
	out.table(header, rows)
	return nil
}

func withReason(status, reason string) string {
	if reason == "" {
		return status
	}
	return status + " (" + reason + ")"
}

// standby is how ls shows the status of a rule whose external address
// is not on this host now: "standby" for an active one (installed, its
// ports reserved: ready for the address), the status otherwise.
func standby(status string, elsewhere bool) string {
	if elsewhere && status == "active" {
		return "standby"
	}
	return status
}

func listRows(l nat.ListResponse, counters bool) [][]string {
	var rows [][]string
	count := func(c *nat.Counter) []string {
		switch {
		case !counters:
			return nil
		case c == nil:
			return []string{"-", "-"}
		}
		return []string{fmt.Sprint(c.Packets), fmt.Sprint(c.Bytes)}
	}
	for _, d := range l.Dnats {
		detail, ext := "any interface", d.ExtIP
		if d.ExtIf != nil {
			detail = "in " + *d.ExtIf
		}
		if ext == "" && d.ExtIf != nil {
			ext = *d.ExtIf + "'s addresses"
		}
		rows = append(rows, append([]string{"dnat", ext, d.Ports, d.Proto, d.IntIP, detail, withReason(standby(d.Status, d.Standby), d.Reason)}, count(d.Counter)...))
	}
	for _, h := range l.Hairpins {
		lan := ""
		if h.LanCIDR != nil {
			lan = "lan " + *h.LanCIDR
		}
		rows = append(rows, append([]string{"hairpin", h.ExtIP, h.Ports, h.Proto, h.IntIP, lan, withReason(standby(h.Status, h.Standby), h.Reason)}, count(h.Counter)...))
	}
	for _, s := range l.Snats {
		to := s.ExtIP
		if to == "" {
			to = "masquerade"
		}
		rows = append(rows, append([]string{"snat", to, "-", "-", s.IntIP, "out " + s.ExtIf, standby(s.Status, s.Standby)}, count(nil)...))
	}
	for _, m := range l.Docker {
		target := m.Request.ContainerAddr
		if target == "" {
			target = "-"
		}
		host, port := m.Request.HostAddr, "-"
		if i := strings.LastIndex(host, ":"); i >= 0 {
			host, port = host[:i], host[i+1:]
		}
		rows = append(rows, append([]string{"docker", host, port, m.Request.Proto, target, fmt.Sprintf("%s (id %d)", m.ContainerName, m.ID), withReason(m.Status, m.Reason)}, count(m.Counter)...))
	}
	for _, p := range l.PolicyRoutes {
		rows = append(rows, append([]string{"policy-route", "-", "-", "-", p.SrcIP, fmt.Sprintf("via %s table %d", p.Via, p.Table), withReason(p.Status, p.Reason)}, count(nil)...))
	}
	return rows
}

// filterList keeps the rules whose addresses or interfaces contain f.
func filterList(l nat.ListResponse, f string) nat.ListResponse {
	has := func(fields ...string) bool {
		for _, s := range fields {
			if strings.Contains(s, f) {
				return true
			}
		}
		return false
	}
	out := nat.ListResponse{Docker: []nat.DockerPortMap{}, Dnats: []nat.DnatEntry{}, Snats: []nat.SnatEntry{}, Hairpins: []nat.HairpinEntry{}, PolicyRoutes: []nat.PolicyRouteEntry{}}
	for _, m := range l.Docker {
		if strings.HasPrefix(m.ContainerName, f) || (m.ContainerID != "" && strings.HasPrefix(m.ContainerID, f)) || has(m.Request.HostAddr) {
			out.Docker = append(out.Docker, m)
		}
	}
	for _, d := range l.Dnats {
		ifname := ""
		if d.ExtIf != nil {
			ifname = *d.ExtIf
		}
		if has(d.ExtIP, d.IntIP, ifname) {
			out.Dnats = append(out.Dnats, d)
		}
	}
	for _, h := range l.Hairpins {
		if has(h.ExtIP, h.IntIP) {
			out.Hairpins = append(out.Hairpins, h)
		}
	}
	for _, s := range l.Snats {
		if has(s.ExtIP, s.IntIP, s.ExtIf) {
			out.Snats = append(out.Snats, s)
		}
	}
	for _, p := range l.PolicyRoutes {
		if has(p.SrcIP, p.Via) {
			out.PolicyRoutes = append(out.PolicyRoutes, p)
		}
	}
	return out
}

// StatusCmd shows the daemon's status.
type StatusCmd struct{}

// Run prints the status.
func (c *StatusCmd) Run(g *Globals, out *output) error {
	var st nat.StatusResponse
	if _, err := newClient(g, out).call(http.MethodGet, "/status", nil, &st); err != nil {
		return err
	}
	if out.json {
		out.printJSON(st)
		return nil
	}
	fmt.Fprintf(out.stdout, "natmap %s, up %s\n", st.Version, time.Duration(st.UptimeSeconds)*time.Second)
	fmt.Fprintf(out.stdout, "backend: %s (%s)\n", st.Backend, st.BackendReason)
	fmt.Fprintf(out.stdout, "Docker: %s\n", st.Docker)
	fmt.Fprintln(out.stdout, "rules:")
	for _, k := range []struct{ key, name string }{{"dnat", "dnat"}, {"hairpin", "hairpin"}, {"snat", "snat"},
		{"policy_route", "policy routes"}, {"mapping", "docker mappings"}} {
		by := st.Rules.ByState[k.key]
		total := by["active"] + by["partial"] + by["inactive"]
		fmt.Fprintf(out.stdout, "  %-16s %d", k.name+":", total)
		if total > 0 {
			fmt.Fprintf(out.stdout, " (%d active, %d partial, %d inactive)", by["active"], by["partial"], by["inactive"])
		}
		fmt.Fprintln(out.stdout)
	}
	if st.Standby > 0 {
		fmt.Fprintf(out.stdout, "standby: %d of these rules are for an address this host does not have now (installed, ports reserved)\n", st.Standby)
	}
	fmt.Fprintf(out.stdout, "forwarded ports: %d (%d inactive), reserved ports: %d\n",
		st.Rules.Forwards, st.Rules.Inactive, st.Rules.Reservations)
	fmt.Fprintf(out.stdout, "changes since start: %d, IP forwarding set by natmap: %v\n", st.Rules.Changes, st.Rules.IPForward)
	repair := "never"
	if st.Rules.LastRepair != nil {
		repair = fmt.Sprintf("%s (%s ago), %d repairs since start", st.Rules.LastRepair.Format(time.RFC3339),
			time.Since(*st.Rules.LastRepair).Round(time.Second), st.Rules.Repairs)
	}
	fmt.Fprintf(out.stdout, "last repair of rules changed from outside: %s\n", repair)
	return nil
}

// FwdCmd enables IP forwarding through the daemon.
type FwdCmd struct {
	IPv6 bool `name:"ipv6" default:"true" negatable:"" help:"Enable IPv6 forwarding too (the default; --no-ipv6 leaves it alone). Interfaces with accept_ra=1, which would ignore router advertisements once the host forwards (and lose a SLAAC default route), get accept_ra=2."`
}

// Run asks the daemon to enable forwarding.
func (c *FwdCmd) Run(g *Globals, out *output) error {
	req := nat.FwdRequest{IPv6: c.IPv6}
	var resp nat.FwdResponse
	if _, err := newClient(g, out).call(http.MethodPost, "/fwd", req, &resp); err != nil {
		return err
	}
	what := "IPv4 forwarding enabled"
	if c.IPv6 {
		what = "IPv4 and IPv6 forwarding enabled"
	}
	changed := "nothing needed changing"
	if len(resp.Changed) > 0 {
		changed = "changed: " + strings.Join(resp.Changed, ", ")
	}
	out.done(resp, "%s (and enabled again at every daemon start); %s", what, changed)
	return nil
}

// ClearCmd removes every rule.
type ClearCmd struct {
	Yes bool `short:"y" help:"Do not ask (it never asks when standard input is not a terminal)."`
}

// Run asks the daemon to clear.
func (c *ClearCmd) Run(g *Globals, out *output) error {
	if asks(c.Yes) {
		if err := confirm(out, "clear removes every natmap rule (DNAT, SNAT, hairpin, policy routes, Docker mappings) and releases every reserved port."); err != nil {
			return err
		}
	}
	if _, err := newClient(g, out).call(http.MethodDelete, "/clear", nil, nil); err != nil {
		return err
	}
	out.done(map[string]bool{"cleared": true}, "all natmap rules cleared and their ports released")
	return nil
}
