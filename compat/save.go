package compat

import (
	"fmt"
	"slices"
	"strings"
)

// savedHeader starts every file `save` writes or merges into; a later
// merge drops it with natmap's other lines and writes it again.
const savedHeader = "# natmap's chains (NATMAP*) and the jumps to them are written by `lab-ops natmap save`; every other line is the host's own and is kept as it is"

// Rendered reports whether text is a file Render wrote.
func Rendered(text []byte) bool { return strings.HasPrefix(string(text), savedHeader+"\n") }

// MergeReport says what Merge kept and wrote.
type MergeReport struct {
	// Kept counts the host's own rules and chain declarations (built-in
	// chain policies included) that were kept.
	Kept int
	// Replaced counts the lines of an earlier save that were replaced.
	Replaced int
	// Written counts natmap's rules and chain declarations written.
	Written int
}

// String says it in a phrase, for save's reply.
func (m MergeReport) String() string {
	s := fmt.Sprintf("natmap's %d lines", m.Written)
	if m.Replaced > 0 {
		s += fmt.Sprintf(" replacing %d of an earlier save", m.Replaced)
	}
	if m.Kept > 0 {
		return s + fmt.Sprintf("; the host's own %d rules and chain lines kept", m.Kept)
	}
	return s + "; no rules of the host's own in the file"
}

// ownLine reports whether an iptables-save line is natmap's: a declaration
// of or a rule in one of its chains (the earlier natmap's NATMAP chain
// included), a jump to one, or a rule the earlier natmap appended to a
// built-in chain (commented natmap:...), which the daemon removes at start.
func ownLine(line string) bool {
	f := strings.Fields(line)
	switch {
	case len(f) == 0:
		return false
	case line == savedHeader:
		return true
	case strings.HasPrefix(f[0], ":"):
		return ownChain(strings.TrimPrefix(f[0], ":"))
	case f[0] != "-A" && f[0] != "-I":
		return false
	case len(f) > 1 && ownChain(f[1]):
		return true
	case len(f) > 1 && slices.Contains(builtins, f[1]) && earlierComment(line):
		return true
	}
	for i := 2; i+1 < len(f); i++ {
		if (f[i] == "-j" || f[i] == "--jump" || f[i] == "-g" || f[i] == "--goto") && ownChain(f[i+1]) {
			return true
		}
	}
	return false
}

func ownChain(name string) bool { return name == "NATMAP" || strings.HasPrefix(name, "NATMAP-") }

// block is one table of an iptables-save file.
type block struct {
	name  string
	lines []string // between "*name" and "COMMIT"
}

// parseSave splits an iptables-save file into the lines before the first
// table and its tables.
func parseSave(text string) (head []string, blocks []block) {
	var cur *block
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "*"):
			blocks = append(blocks, block{name: strings.TrimPrefix(trimmed, "*")})
			cur = &blocks[len(blocks)-1]
		case cur == nil:
			if text != "" {
				head = append(head, line)
			}
		case trimmed == "COMMIT":
			cur = nil
		default:
			cur.lines = append(cur.lines, line)
		}
	}
	return head, blocks
}

// Merge splices natmap's rendered rules (ours, from Render) into an
// iptables-save file that the host loads at boot (existing: the admin's
// rules.v4 or rules.v6, or nothing). Every line that is not natmap's is
// kept where it was, built-in chain policies included; natmap's lines of
// an earlier save are replaced. natmap's lines go first in each of their
// tables, so its jumps come first in the built-in chains, as the daemon
// inserts them; natmap declares no built-in chain and sets no policy.
// Tables the file lacks are added after the others.
func Merge(existing, ours []byte) ([]byte, MergeReport) {
	var rep MergeReport
	head, blocks := parseSave(string(existing))
	_, mine := parseSave(string(ours))
	var b strings.Builder
	b.WriteString(savedHeader + "\n")
	for _, line := range head {
		if ownLine(line) {
			continue
		}
		b.WriteString(line + "\n")
	}
	emit := func(name string, host, natmap []string) {
		b.WriteString("*" + name + "\n")
		for _, line := range natmap {
			if !strings.HasPrefix(line, "#") {
				b.WriteString(line + "\n")
				rep.Written++
			}
		}
		for _, line := range host {
			if ownLine(line) {
				rep.Replaced++
				continue
			}
			if t := strings.TrimSpace(line); strings.HasPrefix(t, ":") || strings.HasPrefix(t, "-") {
				rep.Kept++
			}
			b.WriteString(line + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	done := map[string]bool{}
	for _, blk := range blocks {
		var natmap []string
		for _, m := range mine {
			if m.name == blk.name && !done[blk.name] {
				natmap = m.lines
			}
		}
		emit(blk.name, blk.lines, natmap)
		done[blk.name] = true
	}
	for _, m := range mine {
		if !done[m.name] {
			emit(m.name, nil, m.lines)
			done[m.name] = true
		}
	}
	return []byte(b.String()), rep
}
