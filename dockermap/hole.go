package dockermap

import (
	"fmt"

	"github.com/coreos/go-iptables/iptables"
)

// HoleComment marks natmap's rule in DOCKER-USER.
const HoleComment = "natmap: accept flows natmap forwards"

// OpenForwardHole makes Docker's FORWARD policy (DROP) let natmap's flows
// through: one rule at the top of DOCKER-USER accepting connections that
// carry natmap's mark. nftables' accept is not final, so natmap's own
// forward chain cannot do this. The rule is added once (idempotent) for
// IPv4, and for IPv6 when Docker made DOCKER-USER there; it stays while
// Docker runs (it matches nothing without natmap's forwards).
func OpenForwardHole(mark uint32) error {
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(5))
		if err != nil {
			if proto == iptables.ProtocolIPv6 {
				continue
			}
			return fmt.Errorf("iptables: %w", err)
		}
		exists, err := ipt.ChainExists("filter", "DOCKER-USER")
		if err != nil || !exists {
			continue
		}
		if err := ipt.InsertUnique("filter", "DOCKER-USER", 1, holeRule(mark)...); err != nil {
			return fmt.Errorf("adding natmap's rule to DOCKER-USER: %w", err)
		}
	}
	return nil
}

// CloseForwardHole removes the rule OpenForwardHole adds.
func CloseForwardHole(mark uint32) error {
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(5))
		if err != nil {
			continue
		}
		if exists, err := ipt.ChainExists("filter", "DOCKER-USER"); err != nil || !exists {
			continue
		}
		if err := ipt.DeleteIfExists("filter", "DOCKER-USER", holeRule(mark)...); err != nil {
			return fmt.Errorf("removing natmap's rule from DOCKER-USER: %w", err)
		}
	}
	return nil
}

func holeRule(mark uint32) []string {
	m := fmt.Sprintf("%#x/%#x", mark, mark)
	return []string{"-m", "connmark", "--mark", m, "-m", "comment", "--comment", HoleComment, "-j", "ACCEPT"}
}
