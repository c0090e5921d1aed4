#!/bin/sh
# /etc/conntrackd/primary-backup.sh: keepalived runs it when the router
# becomes the active one (primary), a backup, or faulty. It is the dance
# of conntrackd's own example (/usr/share/doc/conntrackd/examples/sync/
# primary-backup.sh), with the same commands:
#   primary: put the flows the other router synced into this kernel, then
#            start syncing this router's own flows to the other;
#   backup:  have this kernel forget, after PurgeTimeout, the flows it
#            forwarded (the other router has them now), and ask the
#            other router for its flows;
#   fault:   the same forgetting.
CONNTRACKD="conntrackd -C /etc/conntrackd/conntrackd.conf"

run() {
    $CONNTRACKD "$@" || logger -t natmap-ha "conntrackd $* failed"
}

case "$1" in
primary)
    run -c # commit the external cache (the other router's flows) to the kernel
    run -f # flush the internal and external caches
    run -R # resync the internal cache with the kernel's table
    run -B # send a bulk update to the other router
    ;;
backup)
    run -t # flush the kernel's table in PurgeTimeout seconds
    run -n # ask the other router for a resync
    ;;
fault)
    run -t
    ;;
*)
    echo "usage: $0 primary|backup|fault" >&2
    exit 1
    ;;
esac
