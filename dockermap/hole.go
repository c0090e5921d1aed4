package dockermap

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// HoleComment marks natmap's rule in DOCKER-USER.
const HoleComment = "natmap: accept flows natmap forwards"

// OpenForwardHole makes Docker's FORWARD policy (DROP) let natmap's flows
// through: one rule at the top of DOCKER-USER accepting connections that
// carry natmap's mark. nftables' accept is not final, so natmap's own
// forward chain cannot do this. The rule is added once (idempotent) wherever
// Docker made DOCKER-USER: IPv4 and IPv6, iptables-nft and iptables-legacy
// (Docker uses whichever variant the host's iptables is). It stays while
// Docker runs; it matches nothing without natmap's forwards.
func OpenForwardHole(mark uint32) error {
	return eachDockerUser(func(ipt *iptables.IPTables) error {
		if err := ipt.InsertUnique("filter", "DOCKER-USER", 1, holeRule(mark)...); err != nil {
			return fmt.Errorf("adding natmap's rule to DOCKER-USER: %w", err)
		}
		return nil
	})
}

// CloseForwardHole removes the rule OpenForwardHole adds.
func CloseForwardHole(mark uint32) error {
	return eachDockerUser(func(ipt *iptables.IPTables) error {
		if err := ipt.DeleteIfExists("filter", "DOCKER-USER", holeRule(mark)...); err != nil {
			return fmt.Errorf("removing natmap's rule from DOCKER-USER: %w", err)
		}
		return nil
	})
}

// eachDockerUser runs fn with every iptables variant and family that has a
// DOCKER-USER chain. A legacy filter table the kernel has not made is not
// asked about: asking would make it (and have iptables-nft warn about
// legacy tables ever after).
func eachDockerUser(fn func(*iptables.IPTables) error) error {
	for _, bin := range []string{"iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"} {
		if _, err := exec.LookPath(bin); err != nil {
			continue
		}
		if names, ok := legacyTables[bin]; ok && !hasTable(names, "filter") {
			continue
		}
		ipt, err := iptables.New(iptables.Path(bin), iptables.Timeout(5))
		if err != nil {
			continue
		}
		if exists, err := ipt.ChainExists("filter", "DOCKER-USER"); err != nil || !exists {
			continue
		}
		if err := fn(ipt); err != nil {
			return err
		}
	}
	return nil
}

// legacyTables are the files that list the legacy variants' tables the
// kernel has made in this network namespace.
var legacyTables = map[string]string{
	"iptables-legacy":  "/proc/net/ip_tables_names",
	"ip6tables-legacy": "/proc/net/ip6_tables_names",
}

func hasTable(namesFile, table string) bool {
	b, err := os.ReadFile(namesFile)
	return err == nil && slices.Contains(strings.Fields(string(b)), table)
}

func holeRule(mark uint32) []string {
	m := fmt.Sprintf("%#x/%#x", mark, mark)
	return []string{"-m", "connmark", "--mark", m, "-m", "comment", "--comment", HoleComment, "-j", "ACCEPT"}
}
