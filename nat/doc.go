// Package nat is natmap's domain: the rule types and their validation, the
// parsing of user specs (port lists), the desired state, the Service that
// serialises every change (validate -> reserve -> apply -> persist), the
// interfaces of the kernel backend, the port reserver and the state store,
// and the HTTP/JSON API that the CLI and other clients speak.
//
// nat imports none of the packages that implement its interfaces; the
// command in cmd/lab-ops wires them together. Everything here is pure Go
// and is tested without privileges against the strict Fake backend.
package nat
