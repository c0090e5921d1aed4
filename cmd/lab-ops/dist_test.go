package main

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Every daemon option can be set from the environment (NATMAP_*, so one
// line in /etc/default/natmap and a restart), the defaults file lists each
// one, and the command line wins over the environment.
func TestDaemonOptionsFromTheEnvironment(t *testing.T) {
	var cli CLI
	parser, err := newParser(&cli, io.Discard, io.Discard, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	defaults := defaultsFile(parser.Model)
	for _, f := range daemonFlags(parser.Model) {
		want := "NATMAP_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if len(f.Envs) == 0 || f.Envs[0] != want {
			t.Errorf("--%s: environment %v, want %s first", f.Name, f.Envs, want)
			continue
		}
		if !strings.Contains(defaults, "\n#"+want+"=") {
			t.Errorf("the defaults file does not list %s:\n%s", want, defaults)
		}
	}

	env := map[string]string{
		"NATMAP_BACKEND":        "iptables",
		"NATMAP_IPTABLES_MODE":  "nft",
		"NATMAP_METRICS_LISTEN": "127.0.0.1:19187",
		"NATMAP_CHECK_INTERVAL": "2s",
		"NATMAP_GROUP_EXT":      "198.51.100.0/24,203.0.113.7",
		"NATMAP_DOCKER_HOST":    "unix:///run/other.sock",
		"NATMAP_VERBOSE":        "1",
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	t.Setenv("DOCKER_HOST", "unix:///run/ignored.sock") // NATMAP_DOCKER_HOST comes first
	cli = CLI{}
	parser, _ = newParser(&cli, io.Discard, io.Discard, func(int) {})
	if _, err := parser.Parse([]string{"natmap", "daemon", "--check-interval", "5s"}); err != nil {
		t.Fatal(err)
	}
	d := cli.Natmap.Daemon
	got := []any{d.Backend, d.IptablesMode, d.MetricsListen, d.CheckInterval, d.GroupExt, d.DockerHost, cli.Verbose}
	want := []any{"iptables", "nft", "127.0.0.1:19187", 5 * time.Second, []string{"198.51.100.0/24", "203.0.113.7"}, "unix:///run/other.sock", 1}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("from the environment: %v, want %v", got, want)
	}
}

// The unit reads the options file, names only the socket on its command
// line, is not pulled in by network.target, and has a watchdog; the
// packaged one runs the packaged binary.
func TestUnitReadsTheDefaultsFile(t *testing.T) {
	for _, unit := range []string{installedUnit(), unitFile("x", packagedBin)} {
		for _, want := range []string{"\nEnvironmentFile=-/etc/default/natmap\n", "\nWatchdogSec=", "\nType=notify\n", "\nAfter=network.target\n"} {
			if !strings.Contains(unit, want) {
				t.Errorf("the unit lacks %q:\n%s", want, unit)
			}
		}
		if strings.Contains(unit, "Wants=network.target") {
			t.Errorf("the unit wants network.target (a target for ordering only):\n%s", unit)
		}
		if strings.Contains(unit, "--state") || strings.Contains(unit, "--socket-group") {
			t.Errorf("the unit's command line pins options the defaults file should set:\n%s", unit)
		}
	}
	if !strings.Contains(unitFile("x", packagedBin), "ExecStart=/usr/bin/lab-ops natmap --socket") {
		t.Errorf("the packaged unit does not run /usr/bin/lab-ops")
	}
}

// lab-ops dist writes what the package ships: the unit, the options file,
// the group's sysusers.d line, a man page for every command, and a
// completion script for each shell.
func TestDistFiles(t *testing.T) {
	dir := t.TempDir()
	if out, code := runCLI(t, "dist", "--dir", dir); code != 0 {
		t.Fatalf("dist: %d %s", code, out)
	}
	for _, name := range []string{"natmap.service", "natmap.default", "natmap.sysusers", "man/lab-ops.8", "man/lab-ops-natmap-daemon.8",
		"completions/lab-ops", "completions/_lab-ops", "completions/lab-ops.fish"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("dist did not write %s: %v", name, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "natmap.sysusers")); !strings.Contains(string(b), "\ng natmap - -\n") {
		t.Errorf("sysusers.d snippet:\n%s", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "completions/_lab-ops")); !strings.HasPrefix(string(b), "#compdef lab-ops\n") {
		t.Errorf("the zsh completion is not an autoload file:\n%s", b)
	}
}
