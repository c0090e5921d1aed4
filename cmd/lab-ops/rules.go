package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/lab-ops/natmap/compat"
	"github.com/lab-ops/natmap/daemon"
	"github.com/lab-ops/natmap/nat"
)

// SnatCmd adds or deletes a SNAT rule.
type SnatCmd struct {
	IntIP string `name:"int-ip" required:"" help:"Internal host or network (CIDR) whose outgoing traffic is rewritten." placeholder:"IP|CIDR"`
	ExtIf string `name:"ext-if" required:"" help:"Interface the traffic leaves by." placeholder:"IF"`
	ExtIP string `name:"ext-ip" help:"Source address to give the traffic; without it, the traffic is masqueraded: it gets the address --ext-if has at the time, which follows a dynamic (DHCP, PPPoE) address." placeholder:"IP"`
	ruleOp
}

// Run sends the rule to the daemon.
func (c *SnatCmd) Run(g *Globals, out *output) error {
	cfg := nat.SnatConfig{IntIP: c.IntIP, ExtIP: c.ExtIP, ExtIf: c.ExtIf}
	to := c.ExtIP
	if to == "" {
		to = "the address " + c.ExtIf + " has (masquerade)"
	}
	what := fmt.Sprintf("traffic from %s leaving %s gets source %s", c.IntIP, c.ExtIf, to)
	return c.send(g, out, "/snat", "snat", cfg, what)
}

// HairpinCmd adds or deletes a hairpin rule.
type HairpinCmd struct {
	ExtIP   string `name:"ext-ip" help:"External address internal hosts connect to (required unless --ext-if is given)." placeholder:"IP"`
	ExtIf   string `name:"ext-if" help:"Without --ext-ip: the hairpin of a dnat by interface, for whatever addresses this interface has, now or later (followed within a second)." placeholder:"IF"`
	IntIP   string `name:"int-ip" required:"" help:"Internal host that serves the ports." placeholder:"IP"`
	Ports   string `required:"" help:"Ports, as for dnat." placeholder:"LIST"`
	Proto   string `default:"tcp" complete:"tcp,udp" help:"Protocol: tcp or udp."`
	LanCIDR string `name:"lan-cidr" help:"Internal network whose connections are masqueraded (default: the connected network of --int-ip)." placeholder:"CIDR"`
	ruleOp
}

// Run sends the rule to the daemon.
func (c *HairpinCmd) Run(g *Globals, out *output) error {
	cfg := nat.HairpinConfig{ExtIP: c.ExtIP, IntIP: c.IntIP, Ports: c.Ports, Proto: c.Proto}
	if c.ExtIf != "" {
		cfg.ExtIf = &c.ExtIf
	}
	if c.LanCIDR != "" {
		cfg.LanCIDR = &c.LanCIDR
	}
	ext := c.ExtIP
	if ext == "" {
		ext = c.ExtIf + "'s addresses"
	}
	what := fmt.Sprintf("internal hosts reach %s %s ports %s at %s", orTCP(c.Proto), ext, c.Ports, c.IntIP)
	return c.send(g, out, "/hairpin", "hairpin", cfg, what)
}

// PolicyRouteCmd adds or deletes a policy route.
type PolicyRouteCmd struct {
	SrcIP string `name:"src-ip" required:"" help:"Source address whose traffic takes the gateway." placeholder:"IP"`
	Via   string `required:"" help:"Gateway (on a directly connected network)." placeholder:"GW"`
	Table uint32 `required:"" help:"Routing table number (1-252, or 256 and above)." placeholder:"N"`
	ruleOp
}

// Run sends the route to the daemon.
func (c *PolicyRouteCmd) Run(g *Globals, out *output) error {
	cfg := nat.PolicyRouteConfig{SrcIP: c.SrcIP, Via: c.Via, Table: c.Table}
	what := fmt.Sprintf("traffic from %s goes via %s (table %d)", c.SrcIP, c.Via, c.Table)
	return c.send(g, out, "/policy-route", "policy route", cfg, what)
}

// ruleOp is what a rule command does with its rule: add it (the
// default), delete it, or only ask whether it is there.
type ruleOp struct {
	Delete   bool `help:"Delete the rule (for dnat and hairpin, these ports of it) instead of adding it."`
	IfExists bool `name:"if-exists" help:"With --delete: a rule that is not there is no error (exit 0, a note on stderr), so a script may delete what may be absent."`
	Check    bool `help:"Change nothing: exit 0 if the rule is there (every port of it), 1 if it is not, 2 if the question is wrong (the same flags as to add it)."`
}

// send POSTs (or DELETEs, or checks) a rule and reports the outcome.
func (op ruleOp) send(g *Globals, out *output, path, kind string, cfg any, what string) error {
	switch {
	case op.Check && (op.Delete || op.IfExists):
		return usageError{"--check goes alone: not with --delete or --if-exists"}
	case op.IfExists && !op.Delete:
		return usageError{"--if-exists goes with --delete"}
	case op.Check:
		var found map[string]any
		_, err := newClient(g, out).call(http.MethodPost, path+"/check", cfg, &found)
		return answer(out, err, found, "%s present: %s", kind, what)
	}
	cl := newClient(g, out)
	if op.Delete {
		if _, err := cl.call(http.MethodDelete, path, cfg, nil); err != nil {
			if op.IfExists && isNotFound(err) {
				fmt.Fprintf(out.stderr, "note: nothing to delete (%s)\n", err)
				out.done(map[string]any{"deleted": nil, "absent": cfg}, "%s not there: %s", kind, what)
				return nil
			}
			return err
		}
		out.done(map[string]any{"deleted": cfg}, "%s deleted: %s", kind, what)
		return nil
	}
	var echo map[string]any
	h, err := cl.call(http.MethodPost, path, cfg, &echo)
	if err != nil {
		return err
	}
	out.done(echo, "%s %s: %s", kind, addedVerb(h), what)
	return nil
}

func isNotFound(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.code == "not_found"
}

// answer reports a check: present (exit 0, {"present": true, "found":
// ...}), absent (exit 1, {"present": false, "reason": ...}), or the
// question's own failure (exit 2; 4 for a daemon out of reach).
func answer(out *output, err error, found any, format string, args ...any) error {
	switch {
	case err == nil:
		out.done(map[string]any{"present": true, "found": found}, format, args...)
		return nil
	case isNotFound(err) && said(err):
		out.done(map[string]any{"present": false, "reason": err.Error()}, "absent: %s", err)
		return exitStatus(exitAbsent)
	}
	return checkFailed{err}
}

// said reports whether the daemon named the error's code itself: a daemon
// without the check's route answers 404 too, which is no answer.
func said(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.coded
}

// checkFailed is a check that could not be answered (exit 2, so that it
// is never taken for "absent").
type checkFailed struct{ error }

func (e checkFailed) Unwrap() error { return e.error }

// addedVerb says whether an add changed anything, from the reply's header.
func addedVerb(h http.Header) string {
	if h.Get(nat.ChangedHeader) == "false" {
		return "already present, nothing changed"
	}
	return "added"
}

// SaveCmd writes natmap's active ruleset in the form the host reloads at
// boot without the daemon.
type SaveCmd struct {
	Output string `short:"o" type:"path" help:"Write the file here (as the calling user) instead of the daemon's save path (default /etc/natmap/natmap.nft; with the iptables backend, /etc/iptables/rules.v4 and .v6, and --output writes the IPv4 file). An iptables file that exists is merged into: the host's own rules in it are kept." placeholder:"PATH"`
}

// Run asks the daemon to save, or fetches the ruleset and writes it.
func (c *SaveCmd) Run(g *Globals, out *output) error {
	cl := newClient(g, out)
	if c.Output == "" {
		var resp nat.SaveResponse
		if _, err := cl.call(http.MethodPost, "/save", nil, &resp); err != nil {
			return err
		}
		var files []string
		for _, f := range resp.Files {
			files = append(files, f.String())
		}
		out.done(resp, "saved %d forwards to %s", resp.Forwards, strings.Join(files, " and "))
		return nil
	}
	text, err := cl.text(http.MethodGet, "/ruleset")
	if err != nil {
		return err
	}
	saved, err := daemon.WriteSaved(c.Output, text, compat.Rendered(text))
	if err != nil {
		return err
	}
	if saved.Merged {
		out.done(saved, "saved to %s (load it at boot with: iptables-restore < %s)", saved, c.Output)
		return nil
	}
	out.done(saved, "saved to %s (load it at boot with: nft -f %s)", c.Output, c.Output)
	return nil
}
