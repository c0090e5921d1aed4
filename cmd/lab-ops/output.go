package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/alecthomas/kong"
	"golang.org/x/sys/unix"

	"github.com/lab-ops/natmap/nat"
)

// Globals are the options every command takes.
type Globals struct {
	Socket  string           `help:"Path to the natmap daemon's Unix socket." default:"/run/natmap.sock" env:"NATMAP_SOCKET" type:"path" placeholder:"PATH"`
	JSON    bool             `help:"Output in JSON format instead of tables and sentences."`
	Color   string           `help:"Output coloring: ${enum}. Table headers are colorized when enabled; NO_COLOR turns auto off." enum:"auto,always,never" default:"auto"`
	Verbose int              `help:"Increase verbosity (repeatable: -v, -vv, -vvv)." short:"v" type:"counter" env:"NATMAP_VERBOSE"`
	Version kong.VersionFlag `help:"Print the version and exit."`
}

// output prints results as sentences and tables, or as pure JSON.
type output struct {
	stdout, stderr io.Writer
	json           bool
	color          bool
	verbose        int
}

func newOutput(g *Globals, stdout, stderr io.Writer) *output {
	return &output{stdout: stdout, stderr: stderr, json: g.JSON, color: useColor(g.Color, stdout), verbose: g.Verbose}
}

// useColor resolves --color: auto means a terminal, NO_COLOR unset and
// TERM not "dumb".
func useColor(mode string, w io.Writer) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	if os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	f, ok := w.(*os.File)
	return ok && isTerminal(f)
}

// done reports a success: a sentence, or v as JSON.
func (o *output) done(v any, format string, args ...any) {
	if o.json {
		o.printJSON(v)
		return
	}
	fmt.Fprintf(o.stdout, format+"\n", args...)
}

func (o *output) printJSON(v any) {
	enc := json.NewEncoder(o.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(o.stderr, "encoding JSON:", err)
	}
}

// printRawJSON writes JSON as printJSON does (indented, a newline after).
// It checks b first and then indents it straight onto stdout: a listing
// of 10,000 dnats and hairpins is megabytes, and a second, indented copy
// of it cost more than indenting.
func (o *output) printRawJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if !json.Valid(b) {
		var v any
		return fmt.Errorf("the daemon's reply is not JSON: %w", json.Unmarshal(b, &v))
	}
	w := bufio.NewWriterSize(o.stdout, 64<<10)
	indentJSON(w, b)
	w.WriteByte('\n')
	return w.Flush()
}

// indentJSON writes valid JSON src to w as json.Indent(dst, src, "", "  ")
// would: a line an element or member, ": " after a key, and {} and []
// for empty objects and arrays.
func indentJSON(w *bufio.Writer, src []byte) {
	depth, inString, escaped, open := 0, false, false, false
	newline := func() {
		w.WriteByte('\n')
		for range depth {
			w.WriteString("  ")
		}
	}
	for _, c := range src {
		if inString {
			w.WriteByte(c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		if open && c != '}' && c != ']' {
			// The first element of an object or array opened just before.
			open = false
			depth++
			newline()
		}
		switch c {
		case '{', '[':
			open = true // {} and [] stay on one line
			w.WriteByte(c)
		case ',':
			w.WriteByte(c)
			newline()
		case ':':
			w.WriteString(": ")
		case '}', ']':
			if open {
				open = false
			} else {
				depth--
				newline()
			}
			w.WriteByte(c)
		case '"':
			inString = true
			w.WriteByte(c)
		default:
			w.WriteByte(c)
		}
	}
}

// fail reports an error: on stderr, or as {"error": ...} on stdout with
// --json so that scripts always get JSON.
func (o *output) fail(err error) {
	if o.json {
		resp := nat.ErrorResponse{Error: err.Error()}
		var ae *apiError
		var ur *unreachableError
		var ue usageError
		switch {
		case errors.As(err, &ae):
			resp.Code, resp.Rule, resp.Field = ae.code, ae.rule, ae.field
		case errors.As(err, &ur):
			resp.Code = ur.code
		case errors.As(err, &ue):
			resp.Code = "usage"
		case errors.Is(err, declined):
			resp.Code = "not_confirmed"
		}
		o.printJSON(resp)
		return
	}
	fmt.Fprintln(o.stderr, "error:", err)
}

// warn prints a warning of the daemon's on stderr (with --json too:
// stdout stays pure JSON).
func (o *output) warn(msg string) { fmt.Fprintln(o.stderr, "warning:", msg) }

// debugf prints at the given verbosity on stderr.
func (o *output) debugf(level int, format string, args ...any) {
	if o.verbose >= level {
		fmt.Fprintf(o.stderr, format+"\n", args...)
	}
}

const (
	headerOn  = "\x1b[1;36m"
	headerOff = "\x1b[0m"
)

// table prints rows under a header, aligned on the plain text so that
// color codes do not upset the columns.
func (o *output) table(header []string, rows [][]string) {
	widths := make([]int, len(header))
	for _, r := range append([][]string{header}, rows...) {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	line := func(cells []string, color bool) {
		var b strings.Builder
		for i, c := range cells {
			pad := ""
			if i < len(cells)-1 {
				pad = strings.Repeat(" ", widths[i]-len(c)+2)
			}
			if color {
				c = headerOn + c + headerOff
			}
			b.WriteString(c + pad)
		}
		fmt.Fprintln(o.stdout, b.String())
	}
	line(header, o.color)
	for _, r := range rows {
		line(r, false)
	}
}

// asks reports whether a destructive command asks first: on a terminal,
// unless --yes. A script (standard input not a terminal) is never asked.
func asks(yes bool) bool { return !yes && isTerminal(os.Stdin) }

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// declined is a destructive command the user did not confirm (exit 1).
var declined = errors.New("not confirmed: nothing was changed")

// confirm says what is about to happen and asks on standard error; only
// "y" or "yes" goes on.
func confirm(out *output, what string) error {
	fmt.Fprintf(out.stderr, "%s Go on? [y/N] ", what)
	answer, _ := bufio.NewReader(os.Stdin).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return declined
}
