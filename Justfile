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
