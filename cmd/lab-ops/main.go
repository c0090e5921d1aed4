// Command lab-ops is the natmap CLI and daemon: `lab-ops natmap ...`.
//
// Every rule command is a thin client of the daemon's socket API; the
// daemon (`lab-ops natmap daemon`) is the one writer of the host's NAT.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"

	"github.com/alecthomas/kong"

	"github.com/lab-ops/natmap/cmd/lab-ops/internal/oneproc"
	"github.com/lab-ops/natmap/daemon"
)

// Exit codes (README and the man pages' EXIT STATUS say the same).
const (
	exitOK          = 0
	exitFailed      = 1 // the request was refused or failed
	exitUsage       = 2 // the command line is wrong
	exitUnreachable = 4 // the daemon could not be reached (not running, or no permission)
	exitAbsent      = 1 // --check: the rule is not there
	exitUnknown     = 1
)

// DaemonCmd runs the daemon (package daemon).
type DaemonCmd struct {
	daemon.Options `embed:""`
}

// Run runs the daemon until SIGTERM or SIGINT.
func (c *DaemonCmd) Run(g *Globals, out *output) error {
	oneproc.Restore()
	return c.Options.Run(g.Socket, g.Verbose, out.stderr, version())
}

// CLI is the whole command line.
type CLI struct {
	Globals

	Natmap     NatmapCmd     `cmd:"" help:"Manage the host's NAT: DNAT, port reservations, the natmap daemon."`
	Completion CompletionCmd `cmd:"" help:"Print a shell completion script: source <(lab-ops completion bash)."`
	Man        ManCmd        `cmd:"" hidden:"" help:"Write man pages generated from the command line (just man)."`
	Dist       DistCmd       `cmd:"" hidden:"" help:"Write the files a package ships beside the binary (scripts/package)."`
}

// NatmapCmd groups natmap's commands.
type NatmapCmd struct {
	Daemon      DaemonCmd      `cmd:"" help:"Run the natmap daemon (as root): it owns the NAT rules and serves the socket API."`
	Install     InstallCmd     `cmd:"" help:"Install natmap as a systemd service (as root): binary, natmap group, unit, enable --now."`
	Uninstall   UninstallCmd   `cmd:"" help:"Remove what install did (the state stays unless --purge)."`
	Dnat        DnatCmd        `cmd:"" help:"Forward ports of an external address to an internal host (--delete to remove)."`
	Snat        SnatCmd        `cmd:"" help:"Rewrite the source address of an internal host's outgoing traffic (--delete to remove)."`
	Hairpin     HairpinCmd     `cmd:"" help:"Let internal hosts reach a forwarded service through the external address (--delete to remove)."`
	PolicyRoute PolicyRouteCmd `cmd:"" name:"policy-route" help:"Route a source address's traffic through a gateway, to keep client addresses end to end (--delete to remove)."`
	Save        SaveCmd        `cmd:"" help:"Write natmap's active ruleset to disk in the form the host reloads at boot."`
	Docker      DockerCmd      `cmd:"" help:"Map host ports to Docker containers and change them at runtime."`
	Ls          LsCmd          `cmd:"" aliases:"list" help:"List every rule natmap manages, with its status."`
	Status      StatusCmd      `cmd:"" help:"Show the daemon's backend, version and rule counts."`
	Fwd         FwdCmd         `cmd:"" help:"Enable IP forwarding (required for DNAT), now and at every daemon start."`
	Clear       ClearCmd       `cmd:"" help:"Remove every natmap rule, release every reserved port and reset the state."`
	Export      ExportCmd      `cmd:"" help:"Print the whole configuration as a YAML file (for version control and apply)."`
	Diff        DiffCmd        `cmd:"" help:"Show what applying a configuration file would add, remove and keep (exit 3 when something would change)."`
	Apply       ApplyCmd       `cmd:"" help:"Make natmap's configuration equal to a file, in one change or not at all."`
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if _, _, completing := completionRequest(); !completing {
		if cmd, globals, ok := quickParse(args); ok {
			out := newOutput(globals, stdout, stderr)
			return exitOf(cmd.Run(globals, out), out)
		}
	}
	return runKong(args, stdout, stderr)
}

// runKong runs args through kong's model of the command line.
func runKong(args []string, stdout, stderr io.Writer) int {
	var cli CLI
	exitCode := -1
	exit := func(code int) { exitCode = code }
	line, shell, completing := completionRequest()
	parser, globals, narrow := narrowParser(args, stdout, stderr, exit)
	if completing || !narrow {
		var err error
		if parser, err = newParser(&cli, stdout, stderr, exit); err != nil {
			fmt.Fprintln(stderr, "internal error:", err)
			return exitUnknown
		}
		globals = &cli.Globals
	}
	if completing {
		for _, c := range completions(parser.Model, line, shell == "bash", daemonContainers) {
			fmt.Fprintln(stdout, c.format(shell))
		}
		return exitOK
	}
	ctx, err := parser.Parse(args)
	if exitCode >= 0 { // --help and the like
		return exitCode
	}
	out := &output{stdout: stdout, stderr: stderr, json: slices.Contains(args, "--json")}
	if err != nil {
		out.fail(usageError{fmt.Sprintf("%v (see lab-ops --help)", err)})
		return exitUsage
	}
	out = newOutput(globals, stdout, stderr)
	return exitOf(ctx.Run(globals, out, parser), out)
}

// exitOf reports a command's error and returns its exit status.
func exitOf(err error, out *output) int {
	if err == nil {
		return exitOK
	}
	var status exitStatus
	if errors.As(err, &status) {
		return int(status)
	}
	out.fail(err)
	var ue usageError
	var ur *unreachableError
	var cf checkFailed
	switch {
	case errors.As(err, &ur):
		return exitUnreachable
	case errors.As(err, &ue), errors.As(err, &cf):
		return exitUsage
	}
	return exitFailed
}

// newParser builds the command line's model.
func newParser(cli *CLI, stdout, stderr io.Writer, exit func(int)) (*kong.Kong, error) {
	return newParserOf(cli, stdout, stderr, exit)
}

// newParserOf builds the model of cli (a *CLI, or narrowParser's part of
// it).
func newParserOf(cli any, stdout, stderr io.Writer, exit func(int)) (*kong.Kong, error) {
	return kong.New(cli,
		kong.Name("lab-ops"),
		kong.Description("natmap: the single authority for this host's NAT."),
		kong.Writers(stdout, stderr),
		kong.Exit(exit),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Vars{"version": version()},
	)
}

// usageError is a command line that parsed but makes no sense.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// buildVersion is the release's version, set at build time by
// scripts/package and scripts/release (-ldflags -X main.buildVersion=...).
var buildVersion string

// version is the release's version, the module version (go install), or
// the VCS revision of a development build.
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev-" + s.Value[:12]
		}
	}
	return "dev"
}
