package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/alecthomas/kong"
)

// ManCmd writes man pages generated from the command-line model.
type ManCmd struct {
	Dir string `default:"man" type:"path" help:"Directory to write the pages to (section 8: lab-ops-natmap.8, lab-ops-natmap-dnat.8, ...)." placeholder:"DIR"`
}

// Run writes one page per command.
func (c *ManCmd) Run(app *kong.Kong, out *output) error {
	pages := manPages(app.Model)
	if err := writeFiles(c.Dir, pages); err != nil {
		return err
	}
	fmt.Fprintf(out.stdout, "wrote %d man pages to %s\n", len(pages), c.Dir)
	return nil
}

// manPages are the pages of every command that is not hidden, by file
// name.
func manPages(app *kong.Application) map[string]string {
	pages := map[string]string{}
	var walk func(n *kong.Node)
	walk = func(n *kong.Node) {
		if n.Hidden {
			return
		}
		if n.Type == kong.CommandNode || n.Type == kong.ApplicationNode {
			pages[pageName(n)+".8"] = manPage(app, n)
		}
		for _, child := range n.Children {
			walk(child)
		}
	}
	walk(app.Node)
	return pages
}

// roff escapes text for a man page.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = `\&` + l
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n")
}

func manPage(app *kong.Application, n *kong.Node) string {
	var b strings.Builder
	name := pageName(n)
	fmt.Fprintf(&b, ".TH %s 8 \"\" \"natmap %s\" \"natmap\"\n", strings.ToUpper(name), version())
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", roff(name), roff(n.Help))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n.B %s\n%s\n", roff(app.Name), roff(n.Summary()))
	b.WriteString(".SH DESCRIPTION\n")
	fmt.Fprintf(&b, "%s\n", roff(n.Help))
	if n.Detail != "" {
		b.WriteString(".PP\n.nf\n" + roff(n.Detail) + "\n.fi\n")
	}
	if len(n.Children) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, c := range n.Children {
			if !c.Hidden {
				fmt.Fprintf(&b, ".TP\n.B %s\n%s\nSee \\fB%s\\fR(8).\n", roff(c.Name), roff(c.Help), roff(pageName(c)))
			}
		}
	}
	if len(n.Positional) > 0 {
		b.WriteString(".SH ARGUMENTS\n")
		for _, p := range n.Positional {
			fmt.Fprintf(&b, ".TP\n.I %s\n%s\n", roff(strings.ToUpper(p.Name)), roff(p.Help))
		}
	}
	b.WriteString(".SH OPTIONS\n")
	for _, group := range n.AllFlags(true) {
		for _, f := range group {
			if f.Hidden {
				continue
			}
			fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", roff(f.String()), roff(f.Help))
			if f.HasDefault && f.Default != "" {
				fmt.Fprintf(&b, "Default: %s.\n", roff(f.Default))
			}
		}
	}
	var env []string
	for _, group := range n.AllFlags(true) {
		for _, f := range group {
			if !f.Hidden && len(f.Envs) > 0 {
				env = append(env, fmt.Sprintf(".TP\n.B %s\nSets %s.\n", roff(strings.Join(f.Envs, ", ")), roff("--"+f.Name)))
			}
		}
	}
	if len(env) > 0 {
		b.WriteString(".SH ENVIRONMENT\n" + strings.Join(env, ""))
	}
	b.WriteString(".SH EXIT STATUS\n.TP\n0\nDone, or nothing to do.\n.TP\n1\nThe daemon refused the request, or it failed.\n" +
		".TP\n2\nThe command line is wrong.\n.TP\n3\ndiff: applying the file would change something.\n" +
		".TP\n4\nThe daemon could not be reached: not running, or its socket is not open to you.\n" +
		".PP\nWith \\-\\-check: 0 the rule is there, 1 it is not, 2 the question is wrong or could not be answered, 4 as above.\n")
	b.WriteString(".SH FILES\n.TP\n/var/lib/natmap/state.json\nThe daemon's state.\n.TP\n/run/natmap.sock\nThe daemon's socket (mode 0660, group natmap).\n" +
		".TP\n/etc/default/natmap\nThe service's daemon options (NATMAP_*=value lines).\n" +
		".TP\n" + strings.Join(slices.Sorted(maps.Keys(completionFiles)), ", ") + "\n" +
		"The shell completions install writes (the package's are below /usr/share).\n")
	if n.Parent != nil && n.Parent.Type == kong.CommandNode {
		fmt.Fprintf(&b, ".SH SEE ALSO\n\\fB%s\\fR(8)\n", roff(pageName(n.Parent)))
	}
	return b.String()
}

// pageName is the command's page: lab-ops-natmap-docker-add.
func pageName(n *kong.Node) string {
	var names []string
	for ; n != nil; n = n.Parent {
		names = append([]string{n.Name}, names...)
	}
	return strings.Join(names, "-")
}
