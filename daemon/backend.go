package daemon

import (
	"fmt"
	"log/slog"

	"github.com/lab-ops/natmap/compat"
	"github.com/lab-ops/natmap/nat"
	"github.com/lab-ops/natmap/nft"
)

// chosen is the kernel backend the daemon runs with.
type chosen struct {
	backend nat.Backend
	reason  string
	// render is the backend's save files, by the name of each.
	render func(nat.Ruleset) []savedFile
	// close releases the backend's resources.
	close func()
}

type savedFile struct {
	suffix string // "" for the main file, ".v6" for compat's IPv6 file
	data   []byte
	// merge is set for the iptables backend's files, which are the host's
	// own boot files: natmap's lines are merged in (compat.Merge).
	merge bool
}

// chooseBackend picks the backend (--backend, --iptables-mode) and removes
// what the other backends left, so that switching between runs leaves no
// trace of the previous one.
func chooseBackend(backend, mode string, log *slog.Logger) (chosen, error) {
	legacy, rules := compat.LegacyInUse()
	var c chosen
	switch {
	case backend == "nftables":
		c.reason = "chosen with --backend nftables"
	case backend == "auto" && !legacy:
		c.reason = "auto: no iptables-legacy rules on this host"
	case backend == "auto":
		backend = "iptables"
		if mode == "auto" {
			mode = "legacy"
		}
		c.reason = fmt.Sprintf("auto: the host's iptables-legacy tables hold %d rules", rules)
	default:
		c.reason = "chosen with --backend iptables"
	}
	if backend == "iptables" && mode == "auto" {
		mode = "nft"
		if legacy {
			mode = "legacy"
		}
		c.reason += fmt.Sprintf("; iptables-%s (%d iptables-legacy rules on this host)", mode, rules)
	}
	nb := nft.New()
	if backend == "iptables" {
		cb := compat.New(compat.Mode(mode))
		if !compat.Available(cb.Mode()) {
			return c, fmt.Errorf("the iptables backend needs %s-restore, which is not installed", cb.Name())
		}
		if err := nb.Remove(); err != nil {
			log.Warn("removing the nftables backend's table", "err", err)
		}
		nb.Close()
		RemoveCompat(log, other(cb.Mode()))
		c.backend, c.close = cb, func() {}
		c.render = func(rs nat.Ruleset) []savedFile {
			v4, v6 := compat.Render(rs)
			return []savedFile{{"", v4, true}, {".v6", v6, true}}
		}
		return c, nil
	}
	RemoveCompat(log, compat.Legacy, compat.NFT)
	c.backend, c.close = nb, func() { nb.Close() }
	c.render = func(rs nat.Ruleset) []savedFile { return []savedFile{{"", nft.Render(rs), false}} }
	return c, nil
}

func other(m compat.Mode) compat.Mode {
	if m == compat.Legacy {
		return compat.NFT
	}
	return compat.Legacy
}

// RemoveCompat removes natmap's iptables chains of the given variants.
func RemoveCompat(log *slog.Logger, modes ...compat.Mode) {
	for _, m := range modes {
		if !compat.Available(m) {
			continue
		}
		if err := compat.New(m).Remove(); err != nil {
			log.Warn("removing the iptables backend's chains", "mode", m, "err", err)
		}
	}
}
