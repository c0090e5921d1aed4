package main

import "strings"

// Where install puts things (under --root).
const (
	binPath      = "/usr/local/bin/lab-ops"
	manDir       = "/usr/local/share/man/man8"
	unitPath     = "/etc/systemd/system/natmap.service"
	unitName     = "natmap.service"
	serviceGroup = "natmap"
	stateDir     = "/var/lib/natmap"
	statePath    = stateDir + "/state.json" // the daemon's default --state
	configDir    = "/etc/natmap"
	// runtimeSocket is where the service's daemon listens (its runtime
	// directory); the usual /run/natmap.sock links to it.
	runtimeSocket = "/run/natmap/natmap.sock"
	socketLink    = "/run/natmap.sock"
)

// unitFile is natmap.service. docs/systemd.md says why each hardening
// line is safe; TestUnitSandbox runs the daemon under the same limits.
//
// The daemon runs as root, confined to three capabilities:
// CAP_NET_ADMIN (nftables, routes, rules, conntrack over netlink),
// CAP_NET_BIND_SERVICE (reserving ports below 1024) and CAP_NET_RAW
// (iptables-legacy's raw socket, for the iptables backend); it is a
// member of the natmap group, so it can give its socket to the group
// without CAP_CHOWN. The file
// system is read-only but for its state, its runtime directory (the
// socket) and the places `save` writes. Writing /proc/sys/net
// (forwarding, route_localnet) needs /proc/sys writable, so
// ProtectKernelTunables is off.
func unitFile() string {
	return strings.NewReplacer("@BIN@", binPath, "@SOCK@", runtimeSocket, "@LINK@", socketLink,
		"@STATE@", stateDir, "@CONF@", configDir, "@GROUP@", serviceGroup).Replace(`# Written by lab-ops natmap install; lab-ops natmap uninstall removes it.
[Unit]
Description=natmap: the host's NAT (port forwards, SNAT, hairpin, Docker port mappings)
Documentation=man:lab-ops-natmap(8)
After=network.target
Wants=network.target

[Service]
Type=notify
NotifyAccess=main
# The CLI's default socket is @LINK@; the daemon's lives in its runtime
# directory. iptables-legacy (the iptables backend) locks /run/xtables.lock,
# which must exist because /run is read-only to the daemon.
ExecStartPre=+/bin/ln -sfn natmap/natmap.sock @LINK@
ExecStartPre=+/bin/touch /run/xtables.lock
ExecStart=@BIN@ natmap --socket @SOCK@ daemon --state @STATE@/state.json --socket-group @GROUP@
# Membership lets the daemon give its socket to the group without CAP_CHOWN.
SupplementaryGroups=@GROUP@
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=1s
# Kernel rules outlive the daemon: stopping it leaves traffic flowing.
KillMode=mixed
TimeoutStopSec=10s
# Every reserved port is a file descriptor.
LimitNOFILE=1048576

StateDirectory=natmap
StateDirectoryMode=0700
RuntimeDirectory=natmap
RuntimeDirectoryMode=0755
ConfigurationDirectory=natmap
ConfigurationDirectoryMode=0755
UMask=0077

CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_NET_RAW
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=@CONF@ -/etc/iptables
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# Back from those two: raising the open-file limit, and giving the socket
# to the natmap group.
SystemCallFilter=setrlimit prlimit64 fchownat
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`)
}
