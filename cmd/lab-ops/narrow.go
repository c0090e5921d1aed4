package main

import (
	"io"
	"reflect"
	"slices"
	"strings"

	"github.com/alecthomas/kong"
)

// narrowParser is the command-line model of the one natmap command that
// args run, with the global flags: building the whole model (every
// command, flag and help text, their tags parsed and interpolated) was
// most of a CLI run's own work. It returns false when args do not simply
// run one command (help, the version, completion, a command that needs the
// whole model): the whole model then answers, as the user expects of it.
func narrowParser(args []string, stdout, stderr io.Writer, exit func(int)) (*kong.Kong, *Globals, bool) {
	name, ok := commandOf(args)
	if !ok {
		return nil, nil, false
	}
	natmap := reflect.TypeOf(NatmapCmd{})
	var field reflect.StructField
	found := false
	for i := range natmap.NumField() {
		f := natmap.Field(i)
		if flagName(f) == name || slices.Contains(strings.Split(f.Tag.Get("aliases"), ","), name) {
			field, found = f, true
			break
		}
	}
	if !found || !narrowable[field.Name] {
		return nil, nil, false
	}
	root, _ := reflect.TypeOf(CLI{}).FieldByName("Natmap")
	cliType := reflect.StructOf([]reflect.StructField{
		{Name: "Globals", Type: reflect.TypeOf(Globals{}), Tag: `embed:""`},
		{Name: "Natmap", Type: reflect.StructOf([]reflect.StructField{field}), Tag: root.Tag},
	})
	v := reflect.New(cliType)
	parser, err := newParserOf(v.Interface(), stdout, stderr, exit)
	if err != nil {
		return nil, nil, false
	}
	return parser, v.Elem().Field(0).Addr().Interface().(*Globals), true
}

// narrowable are natmap's commands that run without the whole model.
// (install writes the man pages of every command.)
var narrowable = map[string]bool{
	"Daemon": true, "Dnat": true, "Snat": true, "Hairpin": true, "PolicyRoute": true, "Save": true, "Docker": true,
	"Ls": true, "Status": true, "Fwd": true, "Clear": true, "Export": true, "Diff": true, "Apply": true,
}

// globalsWithValue are the global flags that take a value as the next
// argument: every field of Globals but the booleans and counters.
func globalsWithValue() []string {
	var out []string
	g := reflect.TypeOf(Globals{})
	for i := range g.NumField() {
		f := g.Field(i)
		if f.Type.Kind() != reflect.Bool && f.Tag.Get("type") != "counter" {
			out = append(out, "--"+flagName(f))
		}
	}
	return out
}

// commandOf is the natmap command args run ("dnat" of `--json natmap
// dnat ...`), unless they ask for help or the version.
func commandOf(args []string) (string, bool) {
	var words []string
	withValue := globalsWithValue()
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return "", false
		case a == "-h" || a == "--help" || a == "--version" || strings.HasPrefix(a, "--help="):
			return "", false
		case slices.Contains(withValue, a) && len(words) < 2:
			i++
		case strings.HasPrefix(a, "-"):
		default:
			words = append(words, a)
		}
	}
	if len(words) < 2 || words[0] != "natmap" {
		return "", false
	}
	return words[1], true
}
