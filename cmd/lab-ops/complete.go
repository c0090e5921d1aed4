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
// command-line model (commands, flags, enum and listed values) and, for
// container arguments, asks the daemon for container names. Bash passes
// the line in COMP_LINE and COMP_POINT (complete -C) and takes bare words;
// the zsh and fish scripts set them, and COMP_SHELL, to get each word with
// its description (zsh's "word:description", fish's "word<TAB>description").
const (
	bashCompletion = `# lab-ops completion for bash: source <(lab-ops completion bash)
complete -o default -C lab-ops lab-ops
`
	zshFunction = `_lab_ops() {
  local -a candidates
  candidates=("${(@f)$(COMP_LINE="$BUFFER" COMP_POINT=$CURSOR COMP_SHELL=zsh lab-ops 2>/dev/null)}")
  _describe -t lab-ops lab-ops candidates
}
`
	zshCompletion = "# lab-ops completion for zsh: source <(lab-ops completion zsh)\n" + zshFunction + "compdef _lab_ops lab-ops\n"
	// zshAutoload is the file zsh autoloads from $fpath (_lab-ops): it
	// defines the function and completes with it this first time.
	zshAutoload    = "#compdef lab-ops\n" + zshFunction + "_lab_ops \"$@\"\n"
	fishCompletion = `# lab-ops completion for fish: lab-ops completion fish | source
function __lab_ops_complete
    set -l line (commandline -cp)
    COMP_LINE="$line" COMP_POINT=(string length -- "$line") COMP_SHELL=fish lab-ops 2>/dev/null
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
// candidates (COMP_LINE and COMP_POINT set), cut at the cursor, and the
// shell: bash (which sets COMP_TYPE), or what COMP_SHELL names.
func completionRequest() (line, shell string, ok bool) {
	line, ok = os.LookupEnv("COMP_LINE")
	point, ok2 := os.LookupEnv("COMP_POINT")
	if !ok || !ok2 {
		return "", "", false
	}
	shell = os.Getenv("COMP_SHELL")
	if _, bash := os.LookupEnv("COMP_TYPE"); bash {
		shell = "bash"
	}
	if p, err := strconv.Atoi(point); err == nil && p >= 0 && p < len(line) {
		line = line[:p]
	}
	return line, shell, true
}

// candidate is a completion: the word and what it is.
type candidate struct{ word, help string }

// format is the candidate as shell wants it.
func (c candidate) format(shell string) string {
	help := summary(c.help)
	switch {
	case help == "" || shell == "bash":
		return c.word
	case shell == "zsh": // _describe splits at the first unescaped colon
		return strings.ReplaceAll(c.word, ":", `\:`) + ":" + help
	case shell == "fish":
		return c.word + "\t" + help
	}
	return c.word
}

// summary is a help text's first sentence, short enough for a menu.
func summary(help string) string {
	if i := strings.Index(help, ". "); i >= 0 {
		help = help[:i]
	}
	help = strings.TrimSuffix(strings.Join(strings.Fields(help), " "), ".")
	if len(help) > 70 {
		help = help[:67] + "..."
	}
	return help
}

// completions are the candidates for the last word of line, from the
// command-line model; containers lists container names when an argument
// names a container. bashWords: the word is bash's, split at '='.
func completions(app *kong.Application, line string, bashWords bool, containers func() []string) []candidate {
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

	var out []candidate
	switch {
	case pending != nil:
		out = flagValues(pending, node, containers)
	case strings.HasPrefix(cur, "-") && strings.Contains(cur, "="):
		// Bash splits the word at '=' (COMP_WORDBREAKS) and completes the
		// value alone; zsh and fish complete the whole word.
		name, value, _ := strings.Cut(strings.TrimLeft(cur, "-"), "=")
		if f := findFlag(node, name); f != nil {
			for _, v := range flagValues(f, node, containers) {
				if !bashWords {
					v.word = "--" + f.Name + "=" + v.word
				}
				out = append(out, v)
			}
		}
		if bashWords {
			cur = value
		}
	case strings.HasPrefix(cur, "-"):
		for n := node; n != nil; n = n.Parent {
			for _, f := range n.Flags {
				if !f.Hidden {
					out = append(out, candidate{"--" + f.Name, f.Help})
				}
			}
		}
		out = append(out, candidate{"--help", "Show context-sensitive help."})
	default:
		for _, c := range node.Children {
			if !c.Hidden {
				out = append(out, candidate{c.Name, c.Help})
			}
		}
		if positional == 0 && takesContainer(node) {
			out = append(out, named(containers(), "container")...)
		}
		if len(node.Positional) > positional && node.Positional[positional].Enum != "" {
			out = append(out, named(node.Positional[positional].EnumSlice(), "")...)
		}
	}
	out = slices.DeleteFunc(out, func(c candidate) bool { return !strings.HasPrefix(c.word, cur) })
	slices.SortFunc(out, func(a, b candidate) int { return strings.Compare(a.word, b.word) })
	return slices.CompactFunc(out, func(a, b candidate) bool { return a.word == b.word })
}

// named makes candidates of words that share one description.
func named(words []string, help string) []candidate {
	out := make([]candidate, len(words))
	for i, w := range words {
		out[i] = candidate{w, help}
	}
	return out
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

// flagValues are a flag's values: its enum, the values its complete tag
// lists (a flag that takes more than those, such as --proto's TCP), or
// container names.
func flagValues(f *kong.Flag, node *kong.Node, containers func() []string) []candidate {
	switch {
	case f.Enum != "":
		return named(f.EnumSlice(), "")
	case f.Tag.Has("complete"):
		return named(strings.Split(f.Tag.Get("complete"), ","), "")
	case f.Name == "name" && takesContainer(node):
		return named(containers(), "container")
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
	c.timeout = 500 * time.Millisecond
	if _, err := c.call(http.MethodGet, "/containers", nil, &res); err != nil {
		return nil
	}
	return res.Containers
}
