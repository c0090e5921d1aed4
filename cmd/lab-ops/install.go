package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/lab-ops/natmap/compat"
	"github.com/lab-ops/natmap/daemon"
	"github.com/lab-ops/natmap/nft"
	"github.com/lab-ops/natmap/store"
)

// InstallCmd installs natmap as a systemd service.
type InstallCmd struct {
	DryRun bool   `help:"Print every action, and the unit file, without doing any of them."`
	Root   string `type:"path" help:"Install into this directory instead of / (an image, a test): writes the files, the group and the enablement; starts nothing." placeholder:"DIR"`
	User   string `help:"User to add to the natmap group (default: the user who ran sudo, $SUDO_USER)." placeholder:"NAME"`
}

// UninstallCmd removes what install did.
type UninstallCmd struct {
	DryRun bool   `help:"Print every action without doing any of them."`
	Root   string `type:"path" help:"Uninstall from this directory instead of /; stops nothing." placeholder:"DIR"`
	Purge  bool   `help:"Also remove every natmap rule from the kernel, the state (/var/lib/natmap) and /etc/natmap (on a terminal, after asking)."`
	Yes    bool   `short:"y" help:"Do not ask before --purge (it never asks when standard input is not a terminal)."`
}

// step is one action of install or uninstall: done reports that there is
// nothing to do, do does it.
type step struct {
	what string
	done func() (bool, error)
	do   func() error
}

// host is the system install acts on: / or --root.
type host struct {
	root string
	run  func(name string, args ...string) error
}

func newHost(root string) host {
	return host{root: root, run: func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}}
}

func (h host) path(p string) string { return filepath.Join(h.root, p) }

// live reports that install acts on the running system, not a directory.
func (h host) live() bool { return h.root == "" || h.root == "/" }

// prefix is the option that points the shadow tools at the root.
func (h host) prefix() []string {
	if h.live() {
		return nil
	}
	return []string{"--prefix", h.root}
}

// systemctl runs systemctl on the root (offline with --root).
func (h host) systemctl(args ...string) error {
	if !h.live() {
		args = append([]string{"--root", h.root}, args...)
	}
	return h.run("systemctl", args...)
}

// groupMembers returns the members of group in the root's /etc/group, and
// whether the group exists.
func (h host) groupMembers(group string) ([]string, bool, error) {
	f, err := os.Open(h.path("/etc/group"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading the groups: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) == 4 && fields[0] == group {
			var members []string
			if fields[3] != "" {
				members = strings.Split(fields[3], ",")
			}
			return members, true, nil
		}
	}
	return nil, false, sc.Err()
}

// sameFile reports that path holds exactly b with mode perm.
func (h host) sameFile(path string, b []byte, perm fs.FileMode) (bool, error) {
	fi, err := os.Stat(h.path(path))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	have, err := os.ReadFile(h.path(path))
	if err != nil {
		return false, err
	}
	return bytes.Equal(have, b) && fi.Mode().Perm() == perm, nil
}

func (h host) absent(path string) func() (bool, error) {
	return func() (bool, error) {
		_, err := os.Lstat(h.path(path))
		if errors.Is(err, fs.ErrNotExist) {
			return true, nil
		}
		return false, err
	}
}

// Run installs natmap: binary, man pages, group, membership, unit,
// enable --now.
func (c *InstallCmd) Run(g *Globals, out *output, app *kong.Kong) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program: %w", err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		return fmt.Errorf("reading this program: %w", err)
	}
	user := c.User
	if user == "" {
		user = os.Getenv("SUDO_USER")
	}
	if user == "root" {
		user = ""
	}
	h := newHost(c.Root)
	unit := []byte(installedUnit())
	pagePaths := map[string]string{}
	for name, page := range manPages(app.Model) {
		pagePaths[filepath.Join(manDir, name)] = page
	}
	p := &installPlan{h: h}
	steps := p.programSteps(self, bin, pagePaths)
	steps = append(steps, p.groupSteps(user)...)
	steps = append(steps, p.configSteps([]byte(defaultsFile(app.Model)), unit)...)
	steps = append(steps, p.serviceSteps()...)
	report := &stepsReport{DryRun: c.DryRun}
	if c.DryRun {
		report.Unit = string(unit)
		if !out.json {
			fmt.Fprintf(out.stdout, "The unit file %s:\n\n%s\n", unitPath, unit)
		}
	}
	if err := runSteps(steps, report, out); err != nil {
		return err
	}
	if p.joined {
		report.note(out, fmt.Sprintf("After %s logs in again, lab-ops natmap works without sudo.\n", user))
	}
	report.note(out, groupNotice)
	report.finish(out)
	return nil
}

// installPlan makes install's steps and records what they did.
type installPlan struct {
	h       host
	changed bool // the binary or the unit: a running service restarts
	joined  bool // the user joined the group
}

// programSteps copy the binary and write its man pages and completions.
func (p *installPlan) programSteps(self string, bin []byte, pages map[string]string) []step {
	h := p.h
	return []step{
		{
			what: "copy " + self + " to " + binPath,
			done: func() (bool, error) { return h.sameFile(binPath, bin, 0o755) },
			do: func() error {
				p.changed = true
				return store.WriteFile(h.path(binPath), bin, 0o755)
			},
		},
		writeStep(h, "write the man pages to "+manDir+" (man lab-ops-natmap)", pages),
		writeStep(h, "write the shell completions where bash-completion, zsh and fish look ("+strings.Join(slices.Sorted(maps.Keys(completionFiles)), ", ")+")", completionFiles),
	}
}

// groupSteps create the socket's group and add user (if any) to it.
func (p *installPlan) groupSteps(user string) []step {
	h := p.h
	steps := []step{{
		what: "create the system group " + serviceGroup,
		done: func() (bool, error) { _, ok, err := h.groupMembers(serviceGroup); return ok, err },
		do:   func() error { return h.run("groupadd", append(h.prefix(), "--system", serviceGroup)...) },
	}}
	if user != "" {
		steps = append(steps, step{
			what: "add " + user + " to the group " + serviceGroup + " (it takes effect at their next login)",
			done: func() (bool, error) {
				members, _, err := h.groupMembers(serviceGroup)
				return slices.Contains(members, user), err
			},
			do: func() error {
				p.joined = true
				return h.run("usermod", append(h.prefix(), "--append", "--groups", serviceGroup, user)...)
			},
		})
	}
	return steps
}

// configSteps write the daemon's options (only if missing) and the unit.
func (p *installPlan) configSteps(defaults, unit []byte) []step {
	h := p.h
	return []step{{
		what: "write the daemon's options, all commented out, to " + defaultsPath + " (kept if it exists: it is yours)",
		done: func() (bool, error) { ok, err := h.absent(defaultsPath)(); return !ok, err },
		do: func() error {
			p.changed = true
			return store.WriteFile(h.path(defaultsPath), defaults, 0o644)
		},
	}, {
		what: "write " + unitPath,
		done: func() (bool, error) { return h.sameFile(unitPath, unit, 0o644) },
		do: func() error {
			p.changed = true
			return store.WriteFile(h.path(unitPath), unit, 0o644)
		},
	}}
}

// serviceSteps enable the unit and, on the running system, reload systemd
// and (re)start the service when something changed.
func (p *installPlan) serviceSteps() []step {
	h := p.h
	var steps []step
	if h.live() {
		steps = append(steps, step{
			what: "systemctl daemon-reload",
			done: func() (bool, error) { return !p.changed, nil },
			do:   func() error { return h.systemctl("daemon-reload") },
		})
	}
	steps = append(steps, step{
		what: "systemctl enable " + unitName,
		done: func() (bool, error) { return h.systemctl("--quiet", "is-enabled", unitName) == nil, nil },
		do:   func() error { return h.systemctl("--quiet", "enable", unitName) },
	})
	if h.live() {
		steps = append(steps, step{
			what: "systemctl start " + unitName + " (or restart it when the binary or the unit changed)",
			done: func() (bool, error) { return !p.changed && h.systemctl("--quiet", "is-active", unitName) == nil, nil },
			do:   func() error { return h.systemctl("restart", unitName) },
		})
	}
	return steps
}

// groupNotice tells the admin what membership of the socket's group
// allows (the README's "Security model" says it at length).
const groupNotice = `Members of the group ` + serviceGroup + ` may forward ports of this host's own addresses to any
machine, SNAT and hairpin them, map ports to containers, enable IP forwarding, save, and
remove every rule (clear). Only root may forward other addresses, loopback, link-local or
multicast ones, expose a service that listens on loopback, SNAT the host's own traffic or
policy-route the host's own addresses; daemon --group-ext CIDR lets the group forward
addresses routed to the host. Add to the group only people you would let change this
host's NAT.
`

// Run uninstalls natmap.
func (c *UninstallCmd) Run(g *Globals, out *output) error {
	h := newHost(c.Root)
	_, err := os.Stat(h.path(unitPath))
	hadUnit := err == nil
	var steps []step
	if h.live() && c.Purge {
		steps = append(steps, clearKernelStep(h, out))
	}
	steps = append(steps, stopSteps(h)...)
	steps = append(steps, removeSteps(h)...)
	if h.live() {
		steps = append(steps, step{
			what: "systemctl daemon-reload",
			done: func() (bool, error) { return !hadUnit, nil },
			do:   func() error { return h.systemctl("daemon-reload") },
		})
	}
	if c.Purge {
		steps = append(steps, purgeSteps(h)...)
	}
	report := &stepsReport{DryRun: c.DryRun}
	if c.Purge && !c.DryRun && asks(c.Yes) {
		what := "the state (" + stateDir + ") and " + configDir
		if h.live() {
			what = "every natmap rule from the kernel, " + what
		}
		if err := confirm(out, "uninstall --purge removes "+what+"."); err != nil {
			return err
		}
	}
	if !c.Purge {
		report.note(out, fmt.Sprintf("The state (%s) stays: install again to carry on where natmap left off, or uninstall --purge to remove it.\n", stateDir))
	}
	if err := runSteps(steps, report, out); err != nil {
		return err
	}
	report.finish(out)
	return nil
}

// clearKernelStep removes every natmap rule from the kernel: through the
// daemon when it runs (it removes its policy routes too), or directly.
func clearKernelStep(h host, out *output) step {
	active := h.systemctl("--quiet", "is-active", unitName) == nil
	return step{
		what: "remove every natmap rule from the kernel",
		done: func() (bool, error) { return false, nil },
		do: func() error {
			if active {
				_, err := newClient(&Globals{Socket: socketLink}, out).call(http.MethodDelete, "/clear", nil, nil)
				return err
			}
			log := slog.New(slog.NewTextHandler(out.stderr, nil))
			nb := nft.New()
			defer nb.Close()
			if err := nb.Remove(); err != nil {
				return err
			}
			daemon.RemoveCompat(log, compat.Legacy, compat.NFT)
			return nil
		},
	}
}

// stopSteps disable the unit and stop the service (its rules stay).
func stopSteps(h host) []step {
	steps := []step{{
		what: "systemctl disable " + unitName,
		done: func() (bool, error) {
			_, err := os.Stat(h.path(unitPath))
			return errors.Is(err, fs.ErrNotExist) || h.systemctl("--quiet", "is-enabled", unitName) != nil, nil
		},
		do: func() error { return h.systemctl("--quiet", "disable", unitName) },
	}}
	if h.live() {
		steps = append(steps, step{
			what: "systemctl stop " + unitName + " (the kernel rules stay unless --purge)",
			done: func() (bool, error) { return h.systemctl("--quiet", "is-active", unitName) != nil, nil },
			do:   func() error { return h.systemctl("stop", unitName) },
		})
	}
	return steps
}

// removeSteps remove what install wrote, and the group.
func removeSteps(h host) []step {
	pages := func() ([]string, error) { return filepath.Glob(h.path(filepath.Join(manDir, "lab-ops-*.8"))) }
	return []step{
		removeStep(h, unitPath),
		removeStep(h, socketLink),
		removeStep(h, binPath),
		{
			what: "remove the man pages from " + manDir,
			done: func() (bool, error) { matches, err := pages(); return len(matches) == 0, err },
			do: func() error {
				matches, _ := pages()
				for _, m := range matches {
					if err := os.Remove(m); err != nil {
						return err
					}
				}
				return nil
			},
		},
		removeStep(h, slices.Sorted(maps.Keys(completionFiles))...),
		{
			what: "delete the group " + serviceGroup,
			done: func() (bool, error) { _, ok, err := h.groupMembers(serviceGroup); return !ok, err },
			do:   func() error { return h.run("groupdel", append(h.prefix(), serviceGroup)...) },
		},
	}
}

// purgeSteps put back the host settings natmap changed (on the running
// system) and remove the state, /etc/natmap and the options file.
func purgeSteps(h host) []step {
	var steps []step
	if h.live() {
		steps = append(steps, step{
			what: "put back the host settings natmap changed (" + daemon.HostSettingsPath(statePath) + "), forwarding included, as natmap found them",
			done: h.absent(daemon.HostSettingsPath(statePath)),
			do:   func() error { return daemon.RestoreHostSettings(daemon.HostSettingsPath(statePath)) },
		})
	}
	return append(steps, removeStep(h, stateDir), removeStep(h, configDir), removeStep(h, defaultsPath))
}

// writeStep writes files (path: text), mode 0644.
func writeStep(h host, what string, files map[string]string) step {
	return step{
		what: what,
		done: func() (bool, error) {
			for path, text := range files {
				if same, err := h.sameFile(path, []byte(text), 0o644); !same || err != nil {
					return false, err
				}
			}
			return true, nil
		},
		do: func() error {
			for path, text := range files {
				if err := store.WriteFile(h.path(path), []byte(text), 0o644); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// completionFiles are where install puts the completion scripts: the
// directories of /usr/local/share that bash-completion (through
// XDG_DATA_DIRS's default) and Debian's zsh ($fpath) read, and fish's
// system-wide directory (fish reads no /usr/local/share by default).
var completionFiles = map[string]string{
	"/usr/local/share/bash-completion/completions/lab-ops": bashCompletion,
	"/usr/local/share/zsh/site-functions/_lab-ops":         zshAutoload,
	"/etc/fish/completions/lab-ops.fish":                   fishCompletion,
}

// removeStep removes paths (a directory with all it holds).
func removeStep(h host, paths ...string) step {
	return step{
		what: "remove " + strings.Join(paths, ", "),
		done: func() (bool, error) {
			for _, p := range paths {
				if gone, err := h.absent(p)(); !gone || err != nil {
					return false, err
				}
			}
			return true, nil
		},
		do: func() error {
			for _, p := range paths {
				if err := os.RemoveAll(h.path(p)); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// stepsReport is what install or uninstall did, for --json.
type stepsReport struct {
	DryRun bool         `json:"dry_run"`
	Steps  []stepResult `json:"steps"`
	// Unit is the unit file install writes (install --dry-run).
	Unit string `json:"unit,omitempty"`
	// Notes are what the text output says after the steps.
	Notes []string `json:"notes,omitempty"`
}

// stepResult is one step: "done", "unchanged", or "would" (a dry run).
type stepResult struct {
	Action string `json:"action"`
	Result string `json:"result"`
}

// note says something after the steps: a paragraph of text, or a note of
// the JSON report.
func (r *stepsReport) note(out *output, text string) {
	if out.json {
		r.Notes = append(r.Notes, strings.Join(strings.Fields(text), " "))
		return
	}
	fmt.Fprint(out.stdout, text)
}

// runSteps does each step that is not done yet (or, with a dry run, says
// what it would do), and says when there was nothing to do; with --json
// it reports the steps instead (finish prints the report).
func runSteps(steps []step, r *stepsReport, out *output) error {
	did := 0
	for _, s := range steps {
		done, err := s.done()
		if err != nil {
			return fmt.Errorf("checking %q: %w", s.what, err)
		}
		result := "done"
		switch {
		case done:
			result = "unchanged"
		case r.DryRun:
			result = "would"
			did++
		default:
			if err := s.do(); err != nil {
				return fmt.Errorf("%s: %w", s.what, err)
			}
			did++
		}
		r.Steps = append(r.Steps, stepResult{Action: s.what, Result: result})
		if !out.json {
			fmt.Fprintf(out.stdout, "  %-9s  %s\n", result, s.what)
		}
	}
	switch {
	case did == 0:
		r.note(out, "Nothing to do: already as it should be.\n")
	case r.DryRun:
		r.note(out, fmt.Sprintf("Dry run: %d actions not done.\n", did))
	}
	return nil
}

// finish prints the JSON report (the text is out already).
func (r *stepsReport) finish(out *output) {
	if out.json {
		out.printJSON(r)
	}
}
