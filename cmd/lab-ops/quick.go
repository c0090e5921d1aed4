package main

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// quickCommands are the commands scripts and discovery tools call by the
// thousand, each a new process: a rule change and the status. Building
// kong's model (its mappers, every flag's tag parsed and interpolated)
// costs such a run more than the daemon's whole answer, so quickParse
// reads their plainest command lines directly.
var quickCommands = map[string]func() quickCommand{
	"dnat":    func() quickCommand { return &DnatCmd{} },
	"snat":    func() quickCommand { return &SnatCmd{} },
	"hairpin": func() quickCommand { return &HairpinCmd{} },
	"status":  func() quickCommand { return &StatusCmd{} },
}

// quickCommand is a command quickParse can fill: kong would call the same
// Run with the same values.
type quickCommand interface {
	Run(g *Globals, out *output) error
}

// quickParse reads args as kong would, when they are `natmap COMMAND`
// with long flags only: a string flag and its value (`--ports 80` or
// `--ports=80`), a boolean flag alone, the global flags among them. It
// returns false, having decided nothing, for anything else: help or the
// version, a short flag, an unknown, repeated or missing required flag, a
// value that begins with "-" or is empty, a relative socket path, a value
// outside its flag's choices, and any flag whose tag asks for more than
// these rules read (see quickField). kong then parses args and words its
// own errors. TestQuickParseAgreesWithKong holds the two to the same
// result.
func quickParse(args []string) (quickCommand, *Globals, bool) {
	g := &Globals{}
	globals, ok := quickFields(reflect.ValueOf(g).Elem())
	if !ok {
		return nil, nil, false
	}
	var cmd quickCommand
	var fields map[string]quickField
	var words []string
	set := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") || len(a) == 2 {
			if strings.HasPrefix(a, "-") || a == "" {
				return nil, nil, false
			}
			words = append(words, a)
			switch len(words) {
			case 1:
				if a != "natmap" {
					return nil, nil, false
				}
			case 2:
				newCmd, known := quickCommands[a]
				if !known {
					return nil, nil, false
				}
				cmd = newCmd()
				if fields, ok = quickFields(reflect.ValueOf(cmd).Elem()); !ok {
					return nil, nil, false
				}
			default: // no quick command takes an argument
				return nil, nil, false
			}
			continue
		}
		name, value, hasValue := strings.Cut(a[2:], "=")
		f, found := globals[name]
		if !found {
			if f, found = fields[name]; !found { // fields is nil before the command
				return nil, nil, false
			}
		}
		if _, repeated := set[name]; repeated {
			return nil, nil, false
		}
		switch {
		case f.value.Kind() == reflect.Bool:
			if hasValue {
				return nil, nil, false
			}
			value = "true"
		case !hasValue:
			if i+1 == len(args) {
				return nil, nil, false
			}
			i++
			value = args[i]
		}
		if value == "" || strings.HasPrefix(value, "-") {
			return nil, nil, false
		}
		set[name] = value
	}
	if cmd == nil {
		return nil, nil, false
	}
	for _, all := range []map[string]quickField{globals, fields} {
		for name, f := range all {
			value, given := set[name]
			if !f.apply(value, given) {
				return nil, nil, false
			}
		}
	}
	return cmd, g, true
}

// quickField is one flag of a struct kong would parse, as quickParse
// reads it.
type quickField struct {
	value    reflect.Value // the field, settable
	tag      reflect.StructTag
	required bool
	// absent: a flag with a behaviour of its own (kong.VersionFlag), only
	// ever absent from a quick command line.
	absent bool
}

// quickKeys are the tag keys quickParse reads (help, placeholder and
// complete matter only to help and completion, short only to short
// flags, which quickParse leaves to kong). A field with any other key (an
// argument, a negatable flag, a group, a mapper, a separator) makes
// quickParse step aside for its command.
var quickKeys = []string{"name", "help", "placeholder", "complete", "required", "default", "env", "enum", "type", "short"}

// quickFields maps the flag names of struct v (embedded structs
// flattened) to its fields. It returns false if a field is not a string
// or boolean flag whose tag quickParse reads.
func quickFields(v reflect.Value) (map[string]quickField, bool) {
	fields := map[string]quickField{}
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if sf.Anonymous && sf.Tag == "" && sf.Type.Kind() == reflect.Struct {
			inner, ok := quickFields(v.Field(i))
			if !ok {
				return nil, false
			}
			for name, f := range inner {
				fields[name] = f
			}
			continue
		}
		keys, ok := tagKeys(sf.Tag)
		if !ok || !sf.IsExported() {
			return nil, false
		}
		for _, k := range keys {
			if !slices.Contains(quickKeys, k) {
				return nil, false
			}
		}
		kind := sf.Type.Kind()
		typ := sf.Tag.Get("type")
		switch {
		case kind == reflect.Bool && sf.Type != reflect.TypeOf(false):
			fields[flagName(sf)] = quickField{value: v.Field(i), absent: true}
			continue
		case kind == reflect.Int && typ == "counter":
		case kind == reflect.String && (typ == "" || typ == "path"):
		case kind == reflect.Bool && typ == "":
		default:
			return nil, false
		}
		_, required := sf.Tag.Lookup("required")
		fields[flagName(sf)] = quickField{value: v.Field(i), tag: sf.Tag, required: required}
	}
	return fields, true
}

// apply sets the field from its flag's value (given) or, as kong would,
// from its environment variable or default. It returns false where kong
// would do more than that, or refuse.
func (f quickField) apply(value string, given bool) bool {
	if f.absent {
		return !given
	}
	if env := f.tag.Get("env"); env != "" && !given {
		if strings.Contains(env, ",") {
			return false // kong reads the first of them that is set
		}
		value, given = os.LookupEnv(env)
	}
	if !given {
		if f.required {
			return false
		}
		value, given = f.tag.Lookup("default")
		if strings.Contains(value, "$") {
			return false // kong interpolates it
		}
	}
	switch f.value.Kind() {
	case reflect.Int: // a counter: only ever absent here
		return !given
	case reflect.Bool:
		if given && value != "true" {
			return false
		}
		f.value.SetBool(given)
		return true
	}
	if !given {
		return true
	}
	if enum, ok := f.tag.Lookup("enum"); ok && !slices.Contains(strings.Split(enum, ","), value) {
		return false
	}
	if f.tag.Get("type") == "path" && !filepath.IsAbs(value) {
		return false // kong makes it absolute, or expands ~
	}
	f.value.SetString(value)
	return true
}

// flagName is a field's flag or command name as kong names it: its name
// tag, or its Go name split into words where the case changes (a run of
// capitals is one word: JSON is json, ExtIP ext-ip, PolicyRoute
// policy-route), dashed, in lower case.
func flagName(f reflect.StructField) string {
	if n := f.Tag.Get("name"); n != "" {
		return n
	}
	class := func(r byte) int {
		switch {
		case r >= 'A' && r <= 'Z':
			return 1
		case r >= 'a' && r <= 'z':
			return 2
		case r >= '0' && r <= '9':
			return 3
		}
		return 4
	}
	var words []string
	name := f.Name
	for start, i := 0, 1; i <= len(name); i++ {
		if i < len(name) && class(name[i]) == class(name[i-1]) {
			continue
		}
		if i < len(name) && class(name[i-1]) == 1 && class(name[i]) == 2 && i-1 > start {
			// A capital that begins the next word: IPv of IPv6 is I, Pv.
			words = append(words, name[start:i-1])
			start = i - 1
			continue
		}
		if i < len(name) && class(name[i-1]) == 1 && class(name[i]) == 2 {
			continue // Ext: a capital and its lower-case letters
		}
		words = append(words, name[start:i])
		start = i
	}
	return strings.ToLower(strings.Join(words, "-"))
}

// tagKeys lists the keys of a struct tag in the conventional format
// (key:"value" pairs separated by spaces).
func tagKeys(tag reflect.StructTag) ([]string, bool) {
	var keys []string
	s := strings.TrimSpace(string(tag))
	for s != "" {
		key, rest, ok := strings.Cut(s, ":")
		if !ok || key == "" || strings.ContainsAny(key, " \"") {
			return nil, false
		}
		quoted, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return nil, false
		}
		keys = append(keys, key)
		s = strings.TrimSpace(rest[len(quoted):])
	}
	return keys, true
}
