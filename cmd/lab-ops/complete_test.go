package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBashCompletion loads the bash script and asks for candidates the way
// bash does for `complete -C`: COMP_LINE, COMP_POINT and COMP_TYPE set,
// the command, the current and the previous word as arguments.
func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "lab-ops")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building lab-ops: %v\n%s", err, out)
	}
	// No daemon: container names come from nowhere, quickly.
	socket := filepath.Join(dir, "none.sock")
	script := `set -e
source <(lab-ops completion bash)
spec=$(complete -p lab-ops)
cmd=${spec##*-C }; cmd=${cmd%% *}; cmd=${cmd//\'/}
complete_line() {
  local line=$1 words cur prev
  read -ra words <<<"$line"
  if [[ $line == *" " ]]; then cur=""; prev=${words[-1]}; else cur=${words[-1]}; prev=${words[-2]}; fi
  COMP_LINE=$line COMP_POINT=${#line} COMP_TYPE=9 COMP_KEY=9 "$cmd" lab-ops "$cur" "$prev" | tr '\n' ' '
  echo
}
`
	for line, want := range map[string]string{
		"lab-ops ":                                 "completion natmap",
		"lab-ops natmap d":                         "daemon diff dnat docker",
		"lab-ops natmap daemon --backend ":         "auto iptables nftables",
		"lab-ops natmap daemon --iptables-mode=l":  "legacy",
		"lab-ops natmap daemon --check":            "--check-interval",
		"lab-ops natmap dnat --ext-ip 1.2.3.4 --p": "--ports --proto",
		"lab-ops natmap docker ":                   "add remap rm",
		"lab-ops natmap docker rm --i":             "--id --if-exists",
		"lab-ops natmap dnat --proto ":             "tcp udp",
		"lab-ops natmap hairpin --proto=u":         "udp",
		"lab-ops completion ":                      "bash fish zsh",
		"lab-ops natmap --color ":                  "always auto never",
	} {
		cmd := exec.Command("bash", "-c", script+"complete_line '"+line+"'")
		cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"), "NATMAP_SOCKET="+socket)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%q: %v\n%s", line, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("completing %q: %q, want %q", line, got, want)
		}
	}
}

func TestCompletionContainers(t *testing.T) {
	var cli CLI
	parser, err := newParser(&cli, os.Stdout, os.Stderr, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	names := func() []string { return []string{"mail", "web-1", "web-2"} }
	for line, want := range map[string]string{
		"lab-ops natmap docker add ":            "mail web-1 web-2",
		"lab-ops natmap docker rm we":           "web-1 web-2",
		"lab-ops natmap docker add web-1 ":      "",
		"lab-ops natmap docker add --name m":    "mail",
		"lab-ops natmap docker rm --name=w":     "--name=web-1 --name=web-2",
		"lab-ops natmap dnat ":                  "",
		"lab-ops natmap docker remap mail 80 ":  "",
		"lab-ops -v natmap --json docker rm ma": "mail",
	} {
		if got := strings.Join(wordsOf(completions(parser.Model, line, false, names)), " "); got != want {
			t.Errorf("completing %q: %q, want %q", line, got, want)
		}
	}
}

func wordsOf(cs []candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.word)
	}
	return out
}

// zsh and fish get each candidate with what it is, in their own forms;
// bash gets the bare words.
func TestCompletionDescriptions(t *testing.T) {
	var cli CLI
	parser, err := newParser(&cli, os.Stdout, os.Stderr, func(int) {})
	if err != nil {
		t.Fatal(err)
	}
	names := func() []string { return []string{"db:1"} }
	for _, c := range []struct{ shell, line, want string }{
		{"zsh", "lab-ops natmap dn", "dnat:Forward ports of an external address to an internal host (--delete ..."},
		{"fish", "lab-ops natmap dnat --pr", "--proto\tProtocol: tcp or udp"},
		{"bash", "lab-ops natmap dnat --pr", "--proto"},
		{"zsh", "lab-ops natmap docker add d", `db\:1:container`},
		{"fish", "lab-ops natmap dnat --proto ", "tcp\nudp"},
	} {
		var got []string
		for _, cand := range completions(parser.Model, c.line, c.shell == "bash", names) {
			got = append(got, cand.format(c.shell))
		}
		if strings.Join(got, "\n") != c.want {
			t.Errorf("%s: completing %q: %q, want %q", c.shell, c.line, got, c.want)
		}
	}
}
