package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"

	"github.com/lab-ops/natmap/config"
	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/store"
)

// exitChanged is diff's exit status when applying would change something.
const exitChanged = 3

// exitStatus ends the program with a status and no message.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// ExportCmd prints the running configuration as a file.
type ExportCmd struct {
	Output string `short:"o" type:"path" help:"Write to this file (atomically) instead of standard output (with --json, the file is JSON, which apply reads as well)." placeholder:"FILE"`
}

// DiffCmd shows what applying a file would change.
type DiffCmd struct {
	File  string `short:"f" required:"" type:"existingfile" help:"The configuration file (YAML or JSON)." placeholder:"FILE"`
	Prune bool   `help:"Compare as apply --prune would: rules the file does not name would be removed."`
}

// ApplyCmd makes natmap's configuration equal to a file.
type ApplyCmd struct {
	File   string `short:"f" required:"" type:"existingfile" help:"The configuration file (YAML or JSON)." placeholder:"FILE"`
	Prune  bool   `help:"Also remove the rules the file does not name (on a terminal, after showing them and asking)."`
	DryRun bool   `help:"Only say what would change."`
	Yes    bool   `short:"y" help:"Do not ask before --prune removes rules (it never asks when standard input is not a terminal)."`
}

// Run exports.
func (c *ExportCmd) Run(g *Globals, out *output) error {
	var cfg nat.Config
	if _, err := newClient(g, out).call(http.MethodGet, "/config", nil, &cfg); err != nil {
		return err
	}
	var b []byte
	var err error
	if out.json { // JSON is a configuration file too: apply -f reads it back
		b, err = json.MarshalIndent(cfg, "", "  ")
		b = append(b, '\n')
	} else {
		b, err = config.Export(cfg)
	}
	if err != nil {
		return err
	}
	if c.Output == "" {
		_, err = out.stdout.Write(b)
		return err
	}
	if err := store.WriteFile(c.Output, b, 0o644); err != nil {
		return err
	}
	if out.json {
		out.printJSON(map[string]string{"exported": c.Output})
		return nil
	}
	fmt.Fprintf(out.stderr, "exported to %s\n", c.Output)
	return nil
}

// Run shows the difference; the exit status is 3 when there is one.
func (c *DiffCmd) Run(g *Globals, out *output) error {
	resp, err := applyFile(g, out, c.File, c.Prune, true)
	if err != nil {
		return err
	}
	printChanges(out, resp, "would add", "would remove")
	if resp.Changed {
		return exitStatus(exitChanged)
	}
	return nil
}

// Run applies.
func (c *ApplyCmd) Run(g *Globals, out *output) error {
	if c.Prune && !c.DryRun && asks(c.Yes) {
		plan, err := applyFile(g, out, c.File, true, true)
		if err != nil {
			return err
		}
		if len(plan.Remove) > 0 {
			for _, l := range plan.Remove {
				fmt.Fprintf(out.stderr, "- %s\n", l)
			}
			these := fmt.Sprintf("these %d rules", len(plan.Remove))
			if len(plan.Remove) == 1 {
				these = "this rule"
			}
			if err := confirm(out, fmt.Sprintf("apply --prune removes %s, which %s does not name.", these, c.File)); err != nil {
				return err
			}
		}
	}
	resp, err := applyFile(g, out, c.File, c.Prune, c.DryRun)
	if err != nil {
		return err
	}
	if c.DryRun {
		printChanges(out, resp, "would add", "would remove")
		return nil
	}
	printChanges(out, resp, "added", "removed")
	return nil
}

// applyFile sends the file to the daemon; a refusal lists every problem
// with its line in the file.
func applyFile(g *Globals, out *output, path string, prune, dryRun bool) (nat.ApplyResponse, error) {
	var resp nat.ApplyResponse
	data, err := os.ReadFile(path)
	if err != nil {
		return resp, err
	}
	f, err := config.Parse(data)
	if err != nil {
		return resp, fmt.Errorf("%s: %w", path, err)
	}
	_, err = newClient(g, out).call(http.MethodPost, "/apply", nat.ApplyRequest{Config: f.Config, Prune: prune, DryRun: dryRun}, &resp)
	var ae *apiError
	if errors.As(err, &ae) && len(ae.problems) > 0 {
		return resp, fmt.Errorf("%s: %d problems, nothing was changed:\n%s", path, len(ae.problems), f.Problems(path, ae.problems))
	}
	return resp, err
}

func printChanges(out *output, resp nat.ApplyResponse, added, removed string) {
	if out.json {
		out.printJSON(resp)
		return
	}
	for _, l := range resp.Add {
		fmt.Fprintf(out.stdout, "+ %s\n", l)
	}
	for _, l := range resp.Remove {
		fmt.Fprintf(out.stdout, "- %s\n", l)
	}
	if !resp.Changed {
		fmt.Fprintf(out.stdout, "nothing to change (%d rules as they should be)\n", len(resp.Keep))
		return
	}
	fmt.Fprintf(out.stdout, "%s %d, %s %d, kept %d\n", added, len(resp.Add), removed, len(resp.Remove), len(resp.Keep))
}
