package main

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// exampleLines are the `lab-ops ...` command lines of every command's
// examples (the --help texts), as argument lists.
func exampleLines(t *testing.T) [][]string {
	t.Helper()
	var cli CLI
	parser, err := newParser(&cli, io.Discard, io.Discard, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		for _, line := range strings.Split(n.Detail, "\n") {
			_, rest, ok := strings.Cut(line, "lab-ops ")
			if !ok || strings.ContainsAny(rest, "'\"$|<>&;#`") {
				continue
			}
			out = append(out, strings.Fields(rest))
		}
		for _, c := range n.Children {
			walk(c)
		}
	}
	walk(parser.Model.Node)
	return out
}

// The narrowed model parses every example command line to the same
// command, flags and arguments as the whole model.
func TestNarrowParserAgreesWithTheWholeModel(t *testing.T) {
	lines := append(exampleLines(t),
		[]string{"--json", "natmap", "ls"},
		[]string{"natmap", "--socket", "/tmp/x.sock", "list"},
		[]string{"natmap", "dnat", "--ext-ip", "203.0.113.43", "--int-ip", "10.0.0.101", "--ports", "25,465", "--delete"},
		[]string{"natmap", "docker", "rm", "web", "8080"},
		// Refused the same way.
		[]string{"natmap", "dnat", "--ext-ip", "203.0.113.43"},
		[]string{"natmap", "dnat", "--bogus"},
		[]string{"natmap", "dnat", "--ext-ipp", "203.0.113.43"},
		[]string{"natmap", "docker", "nope"},
		[]string{"natmap", "ls", "extra"},
	)
	narrowed := 0
	for _, args := range lines {
		var whole CLI
		wp, _ := newParser(&whole, io.Discard, io.Discard, func(int) {})
		wctx, werr := wp.Parse(args)
		np, globals, ok := narrowParser(args, io.Discard, io.Discard, func(int) {})
		if !ok {
			continue
		}
		narrowed++
		nctx, nerr := np.Parse(args)
		if (werr == nil) != (nerr == nil) {
			t.Errorf("%v: whole model %v, narrowed %v", args, werr, nerr)
			continue
		}
		if werr != nil {
			if werr.Error() != nerr.Error() {
				t.Errorf("%v: whole model says %q, narrowed %q", args, werr, nerr)
			}
			continue
		}
		if wctx.Command() != nctx.Command() {
			t.Errorf("%v: command %q, narrowed %q", args, wctx.Command(), nctx.Command())
		}
		if !reflect.DeepEqual(whole.Globals, *globals) {
			t.Errorf("%v: globals %+v, narrowed %+v", args, whole.Globals, *globals)
		}
		// The command's own value, found by its name in both.
		name := strings.Fields(wctx.Command())[1]
		want := fieldByCmdName(reflect.ValueOf(whole.Natmap), name)
		got := fieldByCmdName(nctx.Model.Target.FieldByName("Natmap"), name)
		if fmt.Sprintf("%+v", want) != fmt.Sprintf("%+v", got) {
			t.Errorf("%v: %+v, narrowed %+v", args, want, got)
		}
	}
	if narrowed < 20 {
		t.Errorf("only %d of %d command lines took the narrowed model", narrowed, len(lines))
	}
	for _, args := range [][]string{{"natmap", "dnat", "--help"}, {"--version"}, {"natmap", "install"}, {"natmap"}, {"completion", "bash"}} {
		if _, _, ok := narrowParser(args, io.Discard, io.Discard, func(int) {}); ok {
			t.Errorf("%v took the narrowed model", args)
		}
	}
}

func fieldByCmdName(v reflect.Value, name string) any {
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if flagName(f) == name || strings.Contains(","+f.Tag.Get("aliases")+",", ","+name+",") {
			return v.Field(i).Interface()
		}
	}
	return nil
}
