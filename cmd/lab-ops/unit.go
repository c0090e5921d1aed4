package main

import "strings"

// Where install puts things (under --root). The Debian package puts the
// binary in /usr/bin (packagedBin) and the unit in /lib/systemd/system.
const (
	binPath      = "/usr/local/bin/lab-ops"
	packagedBin  = "/usr/bin/lab-ops"
	defaultsPath = "/etc/default/natmap" // the daemon's options, NATMAP_*=value
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

// installedUnit is the unit install writes.
func installedUnit() string {
	return unitFile("Written by lab-ops natmap install; lab-ops natmap uninstall removes it.", binPath)
}

// unitFile is natmap.service. docs/systemd.md says why each hardening
// line is safe; TestIntegrationUnitSandbox runs the daemon under the same limits.
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
//
// The daemon's options come from defaultsPath (EnvironmentFile), so
// turning on metrics or a configuration file is one line there and a
// restart, never a copy of ExecStart in a drop-in; ExecStart names only the
// socket, which the unit's runtime directory and link decide.
//
// header is the first line (who wrote the file); bin is the binary's path.
// (Long because it is the unit file itself, a template.)
func unitFile(header, bin string) string {
	return strings.NewReplacer("@HEADER@", header, "@BIN@", bin, "@SOCK@", runtimeSocket, "@LINK@", socketLink,
		"@STATE@", stateDir, "@CONF@", configDir, "@GROUP@", serviceGroup, "@DEFAULTS@", defaultsPath).Replace(`# @HEADER@
[Unit]
Description=natmap: the host's NAT (port forwards, SNAT, hairpin, Docker port mappings)
Documentation=man:lab-ops-natmap(8) man:lab-ops-natmap-daemon(8)
# network.target is for ordering only (systemd.special(7)).
After=network.target

[Service]
Type=notify
NotifyAccess=main
# The CLI's default socket is @LINK@; the daemon's lives in its runtime
# directory. iptables-legacy (the iptables backend) locks /run/xtables.lock,
# which must exist because /run is read-only to the daemon.
ExecStartPre=+/bin/ln -sfn natmap/natmap.sock @LINK@
ExecStartPre=+/bin/touch /run/xtables.lock
# NATMAP_*=value lines: lab-ops natmap daemon --help names each option's
# variable. The file is the admin's (a conffile in the package).
EnvironmentFile=-@DEFAULTS@
ExecStart=@BIN@ natmap --socket @SOCK@ daemon
# Membership lets the daemon give its socket to the group without CAP_CHOWN.
SupplementaryGroups=@GROUP@
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=1s
# The daemon proves it is alive (its lock taken, its socket answering)
# every WatchdogSec/2; a hung daemon is killed and restarted.
WatchdogSec=30s
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
