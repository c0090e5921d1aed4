# The usage spec's examples (its bash blocks), verbatim: every lab-ops natmap
# command in them must parse (TestEveryExampleParses).
# Install as a systemd service (recommended)
sudo lab-ops natmap install
# Or run manually
sudo lab-ops natmap daemon
# Run with custom paths (for testing)
lab-ops natmap daemon \
--state /tmp/natmap_state.json \
--socket /tmp/natmap.sock \
--socket-group root
sudo lab-ops natmap install
# Check status
systemctl status natmap
# View logs
journalctl -u natmap -f
# Restart after binary update
sudo systemctl restart natmap
# Non-default socket
lab-ops natmap --socket /tmp/natmap.sock dnat --ext-ip ... --int-ip ... --ports 80
lab-ops natmap --socket /tmp/natmap.sock ls
# Enable IP forwarding (required for DNAT to work)
lab-ops natmap fwd
# Save current iptables rules to disk
lab-ops natmap save
# Clear all managed NAT rules and reset daemon state
lab-ops natmap clear
# Add a policy route: packets from SRC_IP use table TABLE with default via GATEWAY
lab-ops natmap policy-route --src-ip 10.10.10.101 --via 10.10.10.1 --table 100
# Remove the policy route
lab-ops natmap policy-route --src-ip 10.10.10.101 --via 10.10.10.1 --table 100 --delete
# Forward ports 25 and 465
lab-ops natmap dnat \
--ext-ip 203.0.113.43 \
--int-ip 10.0.0.101 \
--ports 25,465
# Forward a single port with a specific protocol
lab-ops natmap dnat \
--ext-ip 100.64.0.1 \
--int-ip 192.168.1.50 \
--ports 8443 \
--proto tcp
# Restrict to a specific interface
lab-ops natmap dnat \
--ext-ip 203.0.113.43 \
--int-ip 10.0.0.101 \
--ports 80,443 \
--ext-if vmbr0
# Delete rules
lab-ops natmap dnat \
--ext-ip 203.0.113.43 \
--int-ip 10.0.0.101 \
--ports 25,465 \
--delete
# Add SNAT rule
lab-ops natmap snat \
--int-ip 10.0.0.101 \
--ext-if vmbr0 \
--ext-ip 203.0.113.43
# Delete SNAT rule (same flags + --delete)
lab-ops natmap snat \
--int-ip 10.0.0.101 \
--ext-if vmbr0 \
--ext-ip 203.0.113.43 \
--delete
# Add hairpin NAT
lab-ops natmap hairpin \
--ext-ip 203.0.113.43 \
--int-ip 10.0.0.101 \
--ports 25,465,587
# Delete hairpin NAT
lab-ops natmap hairpin \
--ext-ip 203.0.113.43 \
--int-ip 10.0.0.101 \
--ports 25,465,587 \
--delete
# List all rules (static iptables + Docker mappings)
lab-ops natmap ls
# Filter by container ID or name
lab-ops natmap ls nginx
lab-ops natmap ls abc123def456
# Map host port 8080 to container port 80 (all interfaces)
lab-ops natmap docker add my-nginx 8080:80
# Specify container name instead of ID (--name flag)
lab-ops natmap docker add 8080:80 --name my-nginx
# Bind to a specific host IP
lab-ops natmap docker add my-nginx 100.64.0.10:8080:80
# Specify protocol
lab-ops natmap docker add my-nginx 8443:443/tcp
# UDP mapping
lab-ops natmap docker add my-dns 53:53/udp
# Map to a specific target IP (skips Docker inspect)
lab-ops natmap docker add 8080:127.0.0.1:80 --name my-local-service
# Host port only — container port is the same
lab-ops natmap docker add my-nginx 8080
# Remove by container + host port
lab-ops natmap docker rm my-nginx 8080
# Remove a local service mapping by name
lab-ops natmap docker rm --name my-local-service 8080
# Remove by mapping ID
lab-ops natmap docker rm --id 3
# Change host port from 8080 to 9090
lab-ops natmap docker remap my-nginx 8080:9090
lab-ops natmap --json ls
lab-ops natmap --json docker add my-nginx 8080:80
#!/bin/bash
INT_IP="10.0.0.101"
EXT_IP="203.0.113.43"
EXT_IF="vmbr0"
PORTS="25,465,587,143,993,110,995,4190"
# Enable forwarding
lab-ops natmap fwd
# Clear any previous rules (same effect as individual --delete)
# Apply new rules
lab-ops natmap dnat --ext-ip $EXT_IP --int-ip $INT_IP --ports $PORTS
lab-ops natmap snat --int-ip $INT_IP --ext-if $EXT_IF --ext-ip $EXT_IP
lab-ops natmap hairpin --ext-ip $EXT_IP --int-ip $INT_IP --ports $PORTS
lab-ops natmap save
echo "Mail NAT applied: $EXT_IP -> $INT_IP"
# Forward web traffic
lab-ops natmap dnat \
--ext-ip 100.64.0.10 \
--int-ip 10.0.1.20 \
--ports 80,443
# Forward game server (single port, no interface restriction)
lab-ops natmap dnat \
--ext-ip 100.64.0.10 \
--int-ip 10.0.1.30 \
--ports 25565 \
--proto tcp
# SNAT for outbound traffic
lab-ops natmap snat \
--int-ip 10.0.1.0/24 \
--ext-if tailscale0 \
--ext-ip 100.64.0.10
# Expose container ports without restarting
lab-ops natmap docker add nginx-proxy 8443:443/tcp
lab-ops natmap docker add grafana 3000:3000
# List everything
lab-ops natmap ls
# Remove a mapping when no longer needed
lab-ops natmap docker rm grafana 3000
