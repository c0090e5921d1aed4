package main

import (
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// quickAgrees checks one command line: where quickParse reads it, the
// whole model must read it too, to the same command and values. It
// reports whether quickParse read it.
func quickAgrees(t *testing.T, args []string) bool {
	t.Helper()
	cmd, globals, ok := quickParse(args)
	if !ok {
		return false
	}
	var whole CLI
	parser, err := newParser(&whole, io.Discard, io.Discard, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	ctx, err := parser.Parse(args)
	if err != nil {
		t.Errorf("%q: quickParse read it, kong refuses it: %v", args, err)
		return true
	}
	if !reflect.DeepEqual(whole.Globals, *globals) {
		t.Errorf("%q: globals %+v, quickParse %+v", args, whole.Globals, *globals)
	}
	name := strings.Fields(ctx.Command())[1]
	want := fieldByCmdName(reflect.ValueOf(whole.Natmap), name)
	if got := reflect.ValueOf(cmd).Elem().Interface(); !reflect.DeepEqual(want, got) {
		t.Errorf("%q: %+v, quickParse %+v", args, want, got)
	}
	return true
}

// clearEnv leaves the environment variables of the global flags unset
// for the test.
func clearEnv(t *testing.T) {
	for _, env := range []string{"NATMAP_SOCKET", "NATMAP_VERBOSE"} {
		t.Setenv(env, "")
		os.Unsetenv(env)
	}
}

// quickParse reads the documented command lines of its commands, and
// each the way kong does.
func TestQuickParseAgreesWithKong(t *testing.T) {
	clearEnv(t)
	bench := []string{"natmap", "dnat", "--ext-ip", "203.0.113.10", "--int-ip", "10.0.1.1", "--ports", "4999"}
	for _, args := range [][]string{
		bench,
		append(slices.Clone(bench), "--delete"),
		append(slices.Clone(bench), "--check"),
		append(slices.Clone(bench), "--delete", "--if-exists", "--json"),
		{"natmap", "status"},
		{"--json", "natmap", "status"},
		{"natmap", "--socket", "/tmp/x.sock", "status", "--color", "never"},
		{"natmap", "dnat", "--ext-ip=203.0.113.10", "--int-ip=10.0.1.1", "--ports=80,8000-8100,2222:22", "--proto=udp", "--ext-if=eth0"},
		{"natmap", "snat", "--int-ip", "10.0.0.0/24", "--ext-if", "eth0", "--ext-ip", "203.0.113.10"},
		{"natmap", "hairpin", "--ext-ip", "203.0.113.10", "--int-ip", "10.0.1.1", "--ports", "443", "--lan-cidr", "10.0.0.0/24"},
	} {
		if !quickAgrees(t, args) {
			t.Errorf("%q: quickParse stepped aside", args)
		}
	}

	// The examples of the README, docs/, --help and the usage spec.
	read := 0
	for _, ex := range documentedExamples(t) {
		if quickAgrees(t, ex) {
			read++
		}
	}
	if read < 20 {
		t.Errorf("quickParse read only %d documented examples", read)
	}
	t.Logf("quickParse read %d documented examples", read)

	// The socket from the environment.
	t.Setenv("NATMAP_SOCKET", "/tmp/env.sock")
	if !quickAgrees(t, []string{"natmap", "status"}) {
		t.Error("NATMAP_SOCKET: quickParse stepped aside")
	}
}

// Everything else is kong's: quickParse steps aside.
func TestQuickParseStepsAside(t *testing.T) {
	clearEnv(t)
	add := "natmap dnat --ext-ip 203.0.113.10 --int-ip 10.0.1.1 --ports 80 "
	for _, line := range []string{
		add + "--help", add + "-h", "--version", "natmap --help status", "natmap", "natmap ls", "natmap list",
		"natmap docker add web 8080:80", "natmap policy-route --src-ip 10.0.0.5 --via 10.0.0.1 --table 100",
		"-v natmap status", "natmap status --verbose", add + "-c",
		"natmap dnat --ext-ip 203.0.113.10 --ports 80", // --int-ip is missing
		add + "--ports 81", add + "--proto=", add + "--proto", add + "--proto -1", add + "--delete=true",
		add + "--bogus", add + "extra", "natmap --ports 80 dnat --ext-ip 203.0.113.10 --int-ip 10.0.1.1",
		add + "--socket rel.sock", add + "--socket ~/natmap.sock", add + "--color bogus", add + "--", "dnat " + add[len("natmap "):],
	} {
		if _, _, ok := quickParse(strings.Fields(line)); ok {
			t.Errorf("%q: quickParse read it", line)
		}
	}
	t.Setenv("NATMAP_VERBOSE", "2")
	if _, _, ok := quickParse(strings.Fields(add)); ok {
		t.Error("NATMAP_VERBOSE: quickParse read it")
	}
}

// Random command lines of the quick commands, plain and not: wherever
// quickParse reads one, kong reads the same.
func TestQuickParseRandomLines(t *testing.T) {
	clearEnv(t)
	r := rand.New(rand.NewPCG(18, 2))
	values := []string{"203.0.113.10", "10.0.1.1", "10.0.0.0/24", "25,465", "8000-8100", "tcp", "udp", "eth0", "natmap", "-1", "--json", ""}
	globals := []string{"--json", "--socket /tmp/a.sock", "--socket=/tmp/b.sock", "--socket rel.sock", "--color never", "--color=always", "--color bogus", "-v", "--verbose"}
	var names []string
	for name := range quickCommands {
		names = append(names, name)
	}
	slices.Sort(names)
	read := 0
	for range 3000 {
		name := names[r.IntN(len(names))]
		fields, ok := quickFields(reflect.ValueOf(quickCommands[name]()).Elem())
		if !ok {
			t.Fatalf("%s: quickFields refuses its own command", name)
		}
		var flags []string
		for flag, f := range fields {
			if r.IntN(3) == 0 && !f.required {
				continue
			}
			if f.value.Kind() == reflect.Bool {
				flags = append(flags, "--"+flag)
				continue
			}
			v := values[r.IntN(len(values))]
			if r.IntN(2) == 0 {
				flags = append(flags, "--"+flag+"="+v)
			} else {
				flags = append(flags, "--"+flag, v)
			}
		}
		if r.IntN(10) == 0 && len(flags) > 0 { // a repeated flag
			flags = append(flags, flags[0])
		}
		r.Shuffle(len(flags), func(i, j int) { flags[i], flags[j] = flags[j], flags[i] })
		line := append([]string{"natmap", name}, flags...)
		for range r.IntN(3) {
			g := strings.Fields(globals[r.IntN(len(globals))])
			at := r.IntN(len(line) + 1)
			line = slices.Insert(line, at, g...)
		}
		if quickAgrees(t, line) {
			read++
		}
	}
	if read < 300 {
		t.Errorf("quickParse read only %d of 3000 random lines", read)
	}
	t.Logf("quickParse read %d of 3000 random lines", read)
}

// documentedExamples are the lab-ops natmap command lines of the README,
// docs/, --help and the usage spec (as TestEveryExampleParses finds
// them), as argument lists.
func documentedExamples(t *testing.T) [][]string {
	t.Helper()
	var out [][]string
	for _, text := range exampleSources(t) {
		for _, ex := range examples(text) {
			out = append(out, strings.Fields(shellVar.ReplaceAllString(ex, "1"))[1:])
		}
	}
	out = append(out, exampleLines(t)...)
	if len(out) < 100 {
		t.Fatalf("only %d documented examples", len(out))
	}
	return out
}

// A quick run answers as kong's does: the same output and exit status.
func TestQuickRunAnswersAsKong(t *testing.T) {
	clearEnv(t)
	socket := filepath.Join(t.TempDir(), "none.sock")
	args := []string{"natmap", "--socket", socket, "status"}
	if _, _, ok := quickParse(args); !ok {
		t.Fatal("quickParse stepped aside")
	}
	var qout, qerr strings.Builder
	quick := run(args, &qout, &qerr)
	var kout, kerr strings.Builder
	kong := runKong(args, &kout, &kerr)
	if quick != kong || qout.String() != kout.String() || qerr.String() != kerr.String() {
		t.Errorf("quick: %d %q %q; kong: %d %q %q", quick, qout.String(), qerr.String(), kong, kout.String(), kerr.String())
	}
	if quick != exitUnreachable {
		t.Errorf("exit %d, want %d", quick, exitUnreachable)
	}
}
