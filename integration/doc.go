// Package integration holds natmap's end-to-end tests: several network
// namespaces joined by veth pairs (an external client, the router running
// the daemon, internal servers behind a plain bridge), with real TCP and
// UDP connections proving each rule by what the far side sees. Every
// namespace is made by the test and deleted by its name afterwards; no
// packet leaves the test's own namespaces.
//
// Every test is named TestIntegration...; NATMAP_TEST_BACKEND
// (iptables-legacy, iptables-nft) runs them all on the iptables backend.
// Which file covers what:
//
//   - lab_test.go: the lab (namespaces, daemon, CLI, servers), TestMain.
//   - dnat_test.go: DNAT of real traffic, --ext-if, ports held by other
//     programs, crash and restart, refusals, 10,000 forwards restored, fwd
//     and the socket group.
//   - snat_hairpin_test.go: SNAT, hairpin, save and reload at boot, policy
//     routes, bad input, and the spec's mail-server and tailscale scripts.
//   - realnet_test.go: dynamic WAN addresses (masquerade, DNAT by
//     interface), IPv6 forwarding, hairpins and policy routes, policy
//     routes that recover.
//   - guest_test.go: a guest on a real host: the host's firewall files,
//     other tools' routing tables, the ephemeral port range, conntrack,
//     loopback services, the group's policy, a kernel without IPv6.
//   - reliability_test.go: self-healing, the socket's boundary, concurrent
//     clients, zero-gap restarts, crash torture, a full disk, the journal.
//   - backend_test.go: choosing and switching backends, migrating the
//     earlier natmap's state.
//   - config_test.go: export, diff and apply; daemon --config.
//   - ops_test.go: readiness and reload, metrics, counters, SIGHUP, a
//     wedged Docker, and the CLI for scripts (exit and error codes,
//     --check, --if-exists, JSON, questions on a terminal).
//   - docker_test.go, dockerlab_test.go: Docker mappings against a real
//     dockerd in its own namespace (dockerlab_test.go starts it).
//   - unit_test.go: the systemd unit's sandbox, with the daemon under it.
//   - systemd_test.go: the Debian package in a booted Debian 12 system.
//   - firewalls_test.go: natmap beside Debian 12's firewalld, ufw,
//     nftables.service and netfilter-persistent, booted the same way.
//   - ha_test.go: two routers with one public address (keepalived and
//     conntrackd, docs/ha.md's files as written): flows through failovers
//     and failbacks, natmap on the standby.
//   - bench_test.go: the benchmark table (just bench, -natmap.bench=10000);
//     CI runs it at a small size to prove it works.
package integration
