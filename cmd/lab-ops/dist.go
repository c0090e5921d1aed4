package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/alecthomas/kong"
)

// DistCmd writes the files a package ships beside the binary, from the same
// sources install uses: the unit (for binPath packagedBin), the daemon's
// options file, the sysusers.d snippet that creates the group, the man
// pages and the completion scripts. scripts/package calls it.
type DistCmd struct {
	Dir string `default:"dist/files" type:"path" help:"Directory to write the files to." placeholder:"DIR"`
}

// Run writes the files.
func (c *DistCmd) Run(app *kong.Kong, out *output) error {
	files := map[string]string{
		"natmap.service":           unitFile("Installed by the natmap package.", packagedBin),
		"natmap.default":           defaultsFile(app.Model),
		"natmap.sysusers":          "# The group whose members may use natmap's socket (lab-ops natmap without sudo).\ng " + serviceGroup + " - -\n",
		"completions/lab-ops":      bashCompletion,
		"completions/_lab-ops":     zshAutoload,
		"completions/lab-ops.fish": fishCompletion,
	}
	for name, page := range manPages(app.Model) {
		files["man/"+name] = page
	}
	if err := writeFiles(c.Dir, files); err != nil {
		return err
	}
	fmt.Fprintf(out.stdout, "wrote %d files to %s\n", len(files), c.Dir)
	return nil
}

// writeFiles writes each file (a path below dir: its text), mode 0644,
// making the directories it needs.
func writeFiles(dir string, files map[string]string) error {
	for name, text := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// defaultsFile is /etc/default/natmap: every daemon option that has an
// environment variable, commented out at its default, with its help.
func defaultsFile(app *kong.Application) string {
	var b strings.Builder
	b.WriteString(`# Options of the natmap daemon (lab-ops natmap daemon), read by natmap.service:
# one NAME=value a line. Uncomment a line, change it, then: systemctl restart natmap
# Every option of lab-ops natmap daemon --help is here; an option given on
# the command line wins over this file.
`)
	for _, f := range daemonFlags(app) {
		if len(f.Envs) == 0 {
			continue
		}
		help := f.Help
		if f.Name == "state" {
			help += " The unit may write only below /var/lib/natmap."
		}
		b.WriteString("\n")
		for _, line := range wrap(help, 76) {
			b.WriteString("# " + line + "\n")
		}
		def := f.Default
		if f.IsSlice() && def == "" {
			b.WriteString("# (several: separate them with commas)\n")
		}
		fmt.Fprintf(&b, "#%s=%s\n", f.Envs[0], def)
	}
	return b.String()
}

// daemonFlags are the flags that reach the daemon: its own, then the
// global ones it uses (the socket, the log's verbosity).
func daemonFlags(app *kong.Application) []*kong.Flag {
	var flags []*kong.Flag
	for _, n := range app.Leaves(true) {
		if n.Path() == "natmap daemon" {
			flags = append(flags, n.Flags...)
		}
	}
	for _, f := range app.Flags {
		if f.Name == "verbose" {
			flags = append(flags, f)
		}
	}
	return flags
}

// wrap breaks text into lines of at most width runes (a longer word stays
// whole).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		if line != "" && len(line)+1+len(w) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
