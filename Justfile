# Convenience recipes; each is a plain command that works without just.

# Build bin/lab-ops.
build:
    go build -o bin/lab-ops ./cmd/lab-ops

# The whole suite, privileged tests included (run as root).
test:
    bash scripts/test

# Formatting and static checks.
lint:
    test -z "$(gofmt -l .)"
    go vet ./...

# Try natmap in throwaway namespaces without touching the host's firewall.
demo: build
    bash scripts/demo

# Two routers, one public address (keepalived, conntrackd): a connection
# through a forward survives failovers and failbacks (docs/ha.md; root).
demo-ha:
    bash scripts/demo-ha

# The benchmark table at 10,000 forwards (a few minutes; root).
bench:
    go test -count=1 -run TestIntegrationBenchTable -v -timeout 30m ./integration -args -natmap.bench=10000

# Man pages generated from the command line, into man/ (man -l man/lab-ops-natmap.8).
man:
    go run ./cmd/lab-ops man --dir man

# The Debian package, checked by lintian: dist/natmap_VERSION_ARCH.deb.
package:
    bash scripts/package

# Release artifacts (static linux/amd64 and arm64 binaries, packages,
# SHA256SUMS) in dist/release/, built twice to prove them reproducible.
release:
    bash scripts/release --check
