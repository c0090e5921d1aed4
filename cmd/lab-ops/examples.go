package main

// Examples shown by --help (kong's HelpProvider) and in the man pages.

func (*DaemonCmd) Help() string {
	return `The daemon is the one writer of natmap's kernel rules; every other command
talks to it over its socket. Installed as a service, systemd runs it
(lab-ops natmap install). SIGHUP (systemctl reload natmap) re-reads the
state file and applies it in one change.

Examples:
  sudo lab-ops natmap daemon
  lab-ops natmap --socket /tmp/natmap.sock daemon --state /tmp/natmap_state.json --socket-group root
  sudo lab-ops natmap daemon --backend iptables --iptables-mode legacy
  sudo lab-ops natmap daemon --metrics-listen 127.0.0.1:19187`
}

func (*InstallCmd) Help() string {
	return `Copies lab-ops to /usr/local/bin, creates the natmap group and adds you
($SUDO_USER) to it, writes /etc/systemd/system/natmap.service, and runs
systemctl daemon-reload and enable --now. Running it again changes nothing.

Examples:
  sudo lab-ops natmap install
  sudo lab-ops natmap install --dry-run
  sudo lab-ops natmap install --root /srv/image`
}

func (*UninstallCmd) Help() string {
	return `Stops and disables the service and removes the unit, the binary, the
/run/natmap.sock link and the natmap group. Kernel rules and the state stay
(installing again carries on), unless --purge.

Examples:
  sudo lab-ops natmap uninstall
  sudo lab-ops natmap uninstall --purge`
}

func (*DnatCmd) Help() string {
	return `PORTS is a comma-separated list of single ports (25,465), ranges
(8000-8010) and translations (2525:25 forwards external port 2525 to
internal port 25). Each forwarded port is reserved on the host so no
other program can take it.

Examples:
  lab-ops natmap dnat --ext-ip 203.0.113.43 --int-ip 10.0.0.101 --ports 25,465
  lab-ops natmap dnat --ext-ip 203.0.113.43 --int-ip 10.0.0.101 --ports 53 --proto udp
  lab-ops natmap dnat --ext-ip 203.0.113.43 --int-ip 10.0.0.101 --ports 443 --ext-if vmbr0
  lab-ops natmap dnat --ext-ip 203.0.113.43 --int-ip 10.0.0.101 --ports 25,465 --delete`
}

func (*SnatCmd) Help() string {
	return `Examples:
  lab-ops natmap snat --int-ip 10.0.0.101 --ext-if vmbr0 --ext-ip 203.0.113.43
  lab-ops natmap snat --int-ip 10.0.0.101 --ext-if vmbr0 --ext-ip 203.0.113.43 --delete`
}

func (*HairpinCmd) Help() string {
	return `Internal hosts that connect to the external address and port reach the
internal host, as outside clients do.

Examples:
  lab-ops natmap hairpin --ext-ip 203.0.113.43 --int-ip 10.0.0.101 --ports 25,465,587
  lab-ops natmap hairpin --ext-ip 203.0.113.43 --int-ip 10.0.0.101 --ports 25,465,587 --delete`
}

func (*PolicyRouteCmd) Help() string {
	return `Packets from SRC_IP use routing table TABLE, whose default route goes via
GATEWAY: replies leave the way the requests came, so the internal host
sees real client addresses.

Examples:
  lab-ops natmap policy-route --src-ip 10.10.10.101 --via 10.10.10.1 --table 100
  lab-ops natmap policy-route --src-ip 10.10.10.101 --via 10.10.10.1 --table 100 --delete`
}

func (*SaveCmd) Help() string {
	return `Example:
  lab-ops natmap save`
}

func (*DockerAddCmd) Help() string {
	return `Examples:
  lab-ops natmap docker add my-nginx 8080:80
  lab-ops natmap docker add 8080:80 --name my-nginx
  lab-ops natmap docker add my-nginx 100.64.0.10:8080:80
  lab-ops natmap docker add my-nginx 8443:443/tcp
  lab-ops natmap docker add my-dns 53:53/udp
  lab-ops natmap docker add 8080:127.0.0.1:80 --name my-local-service
  lab-ops natmap docker add my-nginx 8080`
}

func (*DockerRmCmd) Help() string {
	return `Examples:
  lab-ops natmap docker rm my-nginx 8080
  lab-ops natmap docker rm --name my-local-service 8080
  lab-ops natmap docker rm --id 3
  lab-ops natmap docker rm my-nginx --all`
}

func (*DockerRemapCmd) Help() string {
	return `Example (host port 8080 becomes 9090):
  lab-ops natmap docker remap my-nginx 8080:9090`
}

func (*LsCmd) Help() string {
	return `Examples:
  lab-ops natmap ls
  lab-ops natmap ls nginx
  lab-ops natmap ls abc123def456
  lab-ops natmap --json ls`
}

func (*StatusCmd) Help() string {
	return `Examples:
  lab-ops natmap status
  lab-ops natmap --json status`
}

func (*FwdCmd) Help() string {
	return `Examples:
  lab-ops natmap fwd
  lab-ops natmap fwd --ipv6`
}

func (*ClearCmd) Help() string {
	return `Example:
  lab-ops natmap clear`
}

func (*CompletionCmd) Help() string {
	return `Examples:
  source <(lab-ops completion bash)     # in ~/.bashrc
  source <(lab-ops completion zsh)      # in ~/.zshrc
  lab-ops completion fish | source      # in ~/.config/fish/config.fish`
}

func (*ExportCmd) Help() string {
	return `The file lists every dnat, snat, hairpin, policy route and Docker mapping,
in a stable order, with comments (docs/config.md).

Examples:
  lab-ops natmap export > natmap.yaml
  lab-ops natmap export --output /etc/natmap/natmap.yaml`
}

func (*DiffCmd) Help() string {
	return `Exit status: 0 nothing would change, 3 something would, 1 the file was
refused (every problem is listed with its line).

Examples:
  lab-ops natmap diff -f natmap.yaml
  lab-ops natmap diff -f natmap.yaml --prune
  lab-ops natmap --json diff -f natmap.yaml`
}

func (*ApplyCmd) Help() string {
	return `Every new port is reserved and the kernel changed in one transaction; a
problem anywhere in the file changes nothing and lists every problem with
its line. Applying the same file again changes nothing.

Examples:
  lab-ops natmap apply -f natmap.yaml
  lab-ops natmap apply -f natmap.yaml --prune
  lab-ops natmap apply -f natmap.yaml --dry-run`
}
