// Package integration holds natmap's end-to-end tests: several network
// namespaces joined by veth pairs (an external client, the router running
// the daemon, internal servers behind a plain bridge), with real TCP and
// UDP connections proving each rule by what the far side sees. Every
// namespace is made by the test and deleted by its name afterwards; no
// packet leaves the test's own namespaces.
package integration
