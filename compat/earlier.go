package compat

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// builtins are the chains whose natmap rules the earlier natmap appended.
var builtins = []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"}

// earlierComment is true of a rule an earlier natmap wrote with its
// comment (--comment natmap:... or --comment "natmap: ...").
func earlierComment(line string) bool {
	return strings.Contains(line, "--comment natmap:") || strings.Contains(line, `--comment "natmap:`)
}

// RemoveEarlier removes what the earlier, iptables-based natmap left, in
// every iptables variant and family on the host: its NATMAP chain (with the
// jumps to it) and the rules commented natmap:... in built-in chains.
// natmap's own chains (NATMAP-*) are not touched. It returns how many rules
// and chains went.
func RemoveEarlier() (int, error) {
	total := 0
	for _, mode := range []Mode{Legacy, NFT} {
		for _, f := range []family{v4, v6} {
			out, err := exec.Command(f.binary(mode, "-save")).Output()
			if err != nil {
				continue // the variant is not installed
			}
			text, n := earlierRemoval(string(out))
			if n == 0 {
				continue
			}
			cmd := exec.Command(f.binary(mode, "-restore"), "--noflush", "-w", "5")
			cmd.Stdin = strings.NewReader(text)
			if out, err := cmd.CombinedOutput(); err != nil {
				return total, fmt.Errorf("removing the earlier natmap's rules with %s: %v: %s", cmd.Path, err, out)
			}
			total += n
		}
	}
	return total, nil
}

// earlierRemoval turns iptables-save output into the restore input that
// removes the earlier natmap's rules, and counts them.
func earlierRemoval(save string) (string, int) {
	var w script
	n := 0
	var table string
	var dels []string
	hasChain := false
	flush := func() {
		if table == "" || (len(dels) == 0 && !hasChain) {
			return
		}
		w.table(table)
		for _, d := range dels {
			w.line("%s", d)
		}
		if hasChain {
			w.line("-F NATMAP")
			w.line("-X NATMAP")
			n++
		}
		w.commit()
		n += len(dels)
	}
	for _, line := range strings.Split(save, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table, dels, hasChain = strings.TrimPrefix(line, "*"), nil, false
		case line == "COMMIT":
			flush()
			table = ""
		case strings.HasPrefix(line, ":NATMAP "):
			hasChain = true
		case strings.HasPrefix(line, "-A "):
			fields := strings.Fields(line)
			if len(fields) < 2 || !slices.Contains(builtins, fields[1]) {
				continue
			}
			jumpsToOld := false
			for i := 2; i+1 < len(fields); i++ {
				if (fields[i] == "-j" || fields[i] == "-g") && fields[i+1] == "NATMAP" {
					jumpsToOld = true
				}
			}
			if jumpsToOld || earlierComment(line) {
				dels = append(dels, "-D"+strings.TrimPrefix(line, "-A"))
			}
		}
	}
	return w.String(), n
}
