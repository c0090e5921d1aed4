package main

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"

	"github.com/lab-ops/natmap/nat"
)

// CompletionCmd prints a shell completion script.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"The shell: ${enum}."`
}

// The scripts ask lab-ops itself for the candidates: it finds them in its
// command-line model (commands, flags, enum values) and, for container
// arguments, asks the daemon for container names. Bash passes the line in
// COMP_LINE and COMP_POINT (complete -C); the zsh and fish scripts set them.
const (
	bashCompletion = `# lab-ops completion for bash: source <(lab-ops completion bash)
complete -o default -C lab-ops lab-ops
`
	zshCompletion = `# lab-ops completion for zsh: source <(lab-ops completion zsh)
_lab_ops() {
  local -a candidates
  candidates=("${(@f)$(COMP_LINE="$BUFFER" COMP_POINT=$CURSOR lab-ops 2>/dev/null)}")
  compadd -- ${candidates:#}
}
compdef _lab_ops lab-ops
`
	fishCompletion = `# lab-ops completion for fish: lab-ops completion fish | source
function __lab_ops_complete
    set -l line (commandline -cp)
    COMP_LINE="$line" COMP_POINT=(string length -- "$line") lab-ops 2>/dev/null
end
complete -c lab-ops -f -a '(__lab_ops_complete)'
`
)

// Run prints the script.
func (c *CompletionCmd) Run(g *Globals, out *output) error {
	script := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}[c.Shell]
	fmt.Fprint(out.stdout, script)
	return nil
}

// completionRequest returns the line to complete when a shell asks for
// candidates (COMP_LINE and COMP_POINT set), cut at the cursor, and
// whether it is bash (which sets COMP_TYPE too).
func completionRequest() (line string, bash, ok bool) {
	line, ok = os.LookupEnv("COMP_LINE")
	point, ok2 := os.LookupEnv("COMP_POINT")
	if !ok || !ok2 {
		return "", false, false
	}
	_, bash = os.LookupEnv("COMP_TYPE")
	if p, err := strconv.Atoi(point); err == nil && p >= 0 && p < len(line) {
		line = line[:p]
	}
	return line, bash, true
}

// completions are the candidates for the last word of line, from the
// command-line model; containers lists container names when an argument
// names a container.
func completions(app *kong.Application, line string, bashWords bool, containers func() []string) []string {
	words := strings.Fields(line)
	cur := ""
	if len(words) > 0 && !strings.HasSuffix(line, " ") {
		cur, words = words[len(words)-1], words[:len(words)-1]
	}
	if len(words) > 0 {
		words = words[1:] // the program's name
	}
	node := app.Node
	positional := 0
	var pending *kong.Flag // a flag whose value is the word being completed
	for _, w := range words {
		if pending != nil {
			pending = nil
			continue
		}
		if strings.HasPrefix(w, "-") {
			name, _, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
			if f := findFlag(node, name); f != nil && !hasValue && !f.IsBool() && !f.IsCounter() {
				pending = f
			}
			continue
		}
		if child := findChild(node, w); child != nil {
			node, positional = child, 0
			continue
		}
		positional++
	}

	var out []string
	switch {
	case pending != nil:
		out = flagValues(pending, node, containers)
	case strings.HasPrefix(cur, "-") && strings.Contains(cur, "="):
		// Bash splits the word at '=' (COMP_WORDBREAKS) and completes the
		// value alone; zsh and fish complete the whole word.
		name, value, _ := strings.Cut(strings.TrimLeft(cur, "-"), "=")
		if f := findFlag(node, name); f != nil {
			for _, v := range flagValues(f, node, containers) {
				if bashWords {
					out = append(out, v)
				} else {
					out = append(out, "--"+f.Name+"="+v)
				}
			}
		}
		if bashWords {
			cur = value
		}
	case strings.HasPrefix(cur, "-"):
		for n := node; n != nil; n = n.Parent {
			for _, f := range n.Flags {
				if !f.Hidden {
					out = append(out, "--"+f.Name)
				}
			}
		}
		out = append(out, "--help")
	default:
		for _, c := range node.Children {
			if !c.Hidden {
				out = append(out, c.Name)
			}
		}
		if positional == 0 && takesContainer(node) {
			out = append(out, containers()...)
		}
		if len(node.Positional) > positional && node.Positional[positional].Enum != "" {
			out = append(out, node.Positional[positional].EnumSlice()...)
		}
	}
	out = slices.DeleteFunc(out, func(s string) bool { return !strings.HasPrefix(s, cur) })
	slices.Sort(out)
	return slices.Compact(out)
}

func findFlag(node *kong.Node, name string) *kong.Flag {
	for n := node; n != nil; n = n.Parent {
		for _, f := range n.Flags {
			if f.Name == name || (len(name) == 1 && f.Short == rune(name[0])) {
				return f
			}
		}
	}
	return nil
}

func findChild(node *kong.Node, word string) *kong.Node {
	for _, c := range node.Children {
		if c.Name == word || slices.Contains(c.Aliases, word) {
			return c
		}
	}
	return nil
}

// takesContainer reports the commands whose first argument is a container.
func takesContainer(node *kong.Node) bool {
	return node.Parent != nil && node.Parent.Name == "docker" && slices.Contains([]string{"add", "rm", "remap"}, node.Name)
}

func flagValues(f *kong.Flag, node *kong.Node, containers func() []string) []string {
	switch {
	case f.Enum != "":
		return f.EnumSlice()
	case f.Name == "name" && takesContainer(node):
		return containers()
	}
	return nil
}

// daemonContainers asks the daemon for container names, briefly: a
// completion must not hang when the daemon is away.
func daemonContainers() []string {
	g := &Globals{Socket: os.Getenv("NATMAP_SOCKET")}
	if g.Socket == "" {
		g.Socket = socketLink
	}
	var res nat.ContainersResponse
	c := newClient(g, &output{stdout: os.Stdout, stderr: os.Stderr})
	c.http.Timeout = 500 * time.Millisecond
	if _, err := c.call(http.MethodGet, "/containers", nil, &res); err != nil {
		return nil
	}
	return res.Containers
}
