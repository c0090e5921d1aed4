package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// examples finds the lab-ops natmap commands in text: each line of a
// shell example (continuations joined), and each `code span` of prose,
// with what surrounds the command taken away (sudo, a path to the
// binary, if !, ; then, a comment). A line that shows a syntax ([--flag]
// or A|B) rather than a command is left out.
func examples(text string) []string {
	var out []string
	text = strings.ReplaceAll(text, "\\\n", " ")
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		lines = append(lines, line)
		for _, m := range codeSpan.FindAllStringSubmatch(line, -1) {
			lines = append(lines, m[1])
		}
	}
	for _, line := range lines {
		line = comment.ReplaceAllString(line, "")
		i := strings.Index(line, "lab-ops natmap")
		if i < 0 {
			continue
		}
		cmd := line[i:]
		for _, end := range []string{" > ", " | ", " && ", " 2>", "; then"} {
			if j := strings.Index(cmd, end); j >= 0 {
				cmd = cmd[:j]
			}
		}
		if strings.Contains(cmd, "...") {
			continue // a placeholder
		}
		cmd = strings.TrimSpace(strings.TrimRight(strings.TrimSpace(cmd), "`.,:)"))
		if cmd == "lab-ops natmap" || syntax.MatchString(cmd) || strings.Contains(cmd, "`") {
			continue
		}
		out = append(out, cmd)
	}
	return out
}

var (
	codeSpan = regexp.MustCompile("`([^`]*lab-ops natmap[^`]*)`")
	syntax   = regexp.MustCompile(`\[-|\|| [A-Z]+$| [A-Z_]+ `)
	shellVar = regexp.MustCompile(`"?\$\{?[A-Za-z_]+\}?"?`)
	comment  = regexp.MustCompile(`(^|\s)# .*`)
)

// TestEveryExampleParses parses every lab-ops natmap example of the
// README, docs/, the --help texts and the usage spec through the real
// command-line model: a renamed or removed flag fails here, not in a
// user's script. Shell variables stand for a value; a file the command
// reads (-f, --config) is a file that exists.
func TestEveryExampleParses(t *testing.T) {
	sources := exampleSources(t)
	var cli CLI
	parser, err := newParser(&cli, os.Stdout, os.Stderr, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	var help strings.Builder
	for _, n := range parser.Model.Leaves(true) {
		help.WriteString(n.Detail + "\n")
	}
	sources["--help"] = help.String()

	file := filepath.Join(t.TempDir(), "natmap.yaml")
	if err := os.WriteFile(file, []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	total := 0
	for source, text := range sources {
		found := examples(text)
		if len(found) == 0 && source != "../../docs/architecture.md" {
			t.Errorf("%s: no examples found", source)
		}
		for _, ex := range found {
			total++
			args := strings.Fields(shellVar.ReplaceAllString(ex, "1"))[1:] // after lab-ops
			for i := 1; i < len(args); i++ {
				if args[i-1] == "-f" || args[i-1] == "--file" || args[i-1] == "--config" {
					args[i] = file
				}
			}
			exited := -1
			var cli CLI
			p, err := newParser(&cli, &strings.Builder{}, &strings.Builder{}, func(code int) { exited = code })
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.Parse(args)
			named := err != nil && !strings.Contains(ex, " -") && strings.Contains(err.Error(), "missing flags")
			if err != nil && exited != 0 && !named { // named: prose naming a command, such as `lab-ops natmap dnat`
				t.Errorf("%s: %q does not parse: %v", source, ex, err)
			}
		}
	}
	if total < 100 {
		t.Errorf("only %d examples found", total)
	}
	t.Logf("%d examples parsed", total)
}

// exampleSources are the texts that show lab-ops natmap commands: the
// README, docs/ and the usage spec's examples, by file name.
func exampleSources(t *testing.T) map[string]string {
	t.Helper()
	sources := map[string]string{}
	for _, pattern := range []string{"../../README.md", "../../docs/*.md", "testdata/spec-examples.sh"} {
		files, _ := filepath.Glob(pattern)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			sources[f] = string(b)
		}
	}
	return sources
}
