#!/bin/sh
# labkit boot hook, installed by every image builder at /usr/lib/labkit/boot-hook.
# POSIX sh: it runs under busybox ash (tiny) and dash (Debian). The host side of this contract is
# labkit/images/guest_contract.py and labkit/images/seed.py; docs/images.md describes it.
#
#   boot-hook [apply]  unpack the seed disk (a tar archive), apply it, remove it (a guest without seed disk just boots)
#   boot-hook ready    wait until the SSH server listens on port 22, then print the readiness marker on /dev/console
#
# It never stops the boot: a step that fails is reported on stderr and the next one runs.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# The seed disk is named on the kernel command line (SEED_KERNEL_ARG: labkit.seed=/dev/ubdb under UML, /dev/vdb under
# QEMU); a guest started by an older labkit has no such argument and gets the UML device.
SEED_KERNEL_ARG=labkit.seed
SEED_DEVICE=/dev/ubdb
SEED_WAIT_TENTHS=50
SEED_MOUNT=/run/labkit/seed
STATE_DIR=/var/lib/labkit
STARTUP_LOG=/var/log/labkit-startup.log
READY_MARKER='labkit-guest: ready'
ERROR_MARKER='labkit-guest: error:'
READY_TIMEOUT_TENTHS=900

log() {
    echo "labkit-boot-hook: $*" >&2
}

apply_hostname() {
    [ -n "$LABKIT_HOSTNAME" ] || return 0
    hostname "$LABKIT_HOSTNAME" || log "cannot set hostname $LABKIT_HOSTNAME"
    echo "$LABKIT_HOSTNAME" > /etc/hostname
    if [ -f /etc/hosts ]; then
        grep -v '^127\.0\.1\.1[[:space:]]' /etc/hosts > /etc/hosts.labkit
    else
        echo "127.0.0.1 localhost" > /etc/hosts.labkit
    fi
    echo "127.0.1.1 $LABKIT_HOSTNAME" >> /etc/hosts.labkit
    cat /etc/hosts.labkit > /etc/hosts
    rm -f /etc/hosts.labkit
}

apply_network() {
    ip link set lo up 2>/dev/null
    for pair in $LABKIT_INTERFACES; do
        ifname=${pair%%=*}
        address=${pair#*=}
        if [ ! -e "/sys/class/net/$ifname" ]; then
            log "interface $ifname does not exist; not configured"
            continue
        fi
        ip addr add "$address" dev "$ifname" 2>/dev/null || log "cannot add $address to $ifname (already there?)"
        ip link set "$ifname" up || log "cannot bring $ifname up"
    done
    if [ -n "$LABKIT_DEFAULT_ROUTE" ]; then
        # Classic slirp is a SLIP-like link without ARP: the default route names the device, not a gateway.
        # shellcheck disable=SC2086 # the route is words like "dev eth0" or "via 10.0.0.1 dev eth1", checked by the host
        ip route replace default $LABKIT_DEFAULT_ROUTE || log "cannot add default route $LABKIT_DEFAULT_ROUTE"
    fi
}

apply_dns() {
    [ -n "$LABKIT_DNS" ] || return 0
    : > /etc/resolv.conf.labkit
    for server in $LABKIT_DNS; do
        echo "nameserver $server" >> /etc/resolv.conf.labkit
    done
    rm -f /etc/resolv.conf
    mv /etc/resolv.conf.labkit /etc/resolv.conf
    chmod 644 /etc/resolv.conf
}

apply_keys() {
    keys="$1/authorized_keys"
    [ -s "$keys" ] || return 0
    mkdir -p /root/.ssh
    touch /root/.ssh/authorized_keys
    # Add the seed's keys every boot (so the grader's key comes back) and keep keys the student added.
    while IFS= read -r line || [ -n "$line" ]; do
        [ -n "$line" ] || continue
        grep -qxF -- "$line" /root/.ssh/authorized_keys || printf '%s\n' "$line" >> /root/.ssh/authorized_keys
    done < "$keys"
    # sshd and dropbear refuse keys in group- or world-writable places.
    chown 0:0 /root /root/.ssh /root/.ssh/authorized_keys
    chmod go-w /root
    chmod 700 /root/.ssh
    chmod 600 /root/.ssh/authorized_keys
}

apply_password() {
    secret="$1/root_password"
    [ -f "$secret" ] || return 0
    if command -v chpasswd > /dev/null 2>&1; then
        { printf 'root:'; cat "$secret"; echo; } | chpasswd || log "chpasswd failed"
        return 0
    fi
    # busybox images have no chpasswd: hash with mkpasswd and rewrite root's shadow entry in place.
    hash=$(mkpasswd -m sha512 -P 0 < "$secret") || { log "mkpasswd failed"; return 0; }
    awk -F: -v OFS=: -v hash="$hash" '$1 == "root" { $2 = hash } { print }' /etc/shadow > /etc/shadow.labkit &&
        cat /etc/shadow.labkit > /etc/shadow
    rm -f /etc/shadow.labkit
}

apply_files() {
    [ -n "$LABKIT_SEED_ID" ] || return 0
    marker="$STATE_DIR/seed-$LABKIT_SEED_ID"
    [ -e "$marker" ] && return 0
    if [ -f "$1/files.tar" ]; then
        tar -x -f "$1/files.tar" -C / || { log "unpacking the seed's files failed"; return 0; }
    elif [ -d "$1/files" ]; then
        cp -a "$1/files/." / || { log "copying the seed's files failed"; return 0; }
    fi
    mkdir -p "$STATE_DIR"
    : > "$marker"
}

run_startup() {
    [ -d "$1/startup" ] || return 0
    for script in "$1"/startup/*.sh; do
        [ -f "$script" ] || continue
        name=${script##*/}
        {
            echo "== $(date) $name"
            sh "$script" < /dev/null
            echo "== $name exited with $?"
        } >> "$STARTUP_LOG" 2>&1
    done
}

named_seed_device() {
    # The first labkit.seed=/dev/... word of the command line (labkit's, before any a lab adds); anything else (a path
    # outside /dev, odd characters) is ignored.
    tr ' ' '\n' < /proc/cmdline 2>/dev/null |
        sed -n "s|^$SEED_KERNEL_ARG=\(/dev/[A-Za-z0-9/_.-]*\)\$|\1|p" | head -n 1
}

apply() {
    named=$(named_seed_device)
    if [ -n "$named" ]; then
        SEED_DEVICE=$named
        # a named disk is there: give its driver a moment to show it (virtio disks appear as they are probed)
        waited=0
        while [ ! -b "$SEED_DEVICE" ] && [ "$waited" -lt "$SEED_WAIT_TENTHS" ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    if [ ! -b "$SEED_DEVICE" ]; then
        log "no seed disk at $SEED_DEVICE"
        return 0
    fi
    mkdir -p "$SEED_MOUNT"
    chmod 700 "$SEED_MOUNT"
    # The seed is a tar archive written straight onto the disk; seeds of older labkit versions are ext4.
    if tar -x -f "$SEED_DEVICE" -C "$SEED_MOUNT" 2>/dev/null; then
        unpacked=1
    elif mount -t ext4 -o ro "$SEED_DEVICE" "$SEED_MOUNT"; then
        unpacked=0
    else
        log "cannot read the seed disk $SEED_DEVICE"
        return 0
    fi
    seed="$SEED_MOUNT/labkit"
    if [ -r "$seed/seed.env" ]; then
        # shellcheck disable=SC1091 # written by labkit/images/seed.py, every value quoted
        . "$seed/seed.env"
        apply_hostname
        apply_network
        apply_dns
        apply_keys "$seed"
        apply_password "$seed"
        apply_files "$seed"
        run_startup "$seed"
    else
        log "the seed disk has no labkit/seed.env"
    fi
    if [ "$unpacked" = 1 ]; then
        rm -rf "$SEED_MOUNT"
    else
        umount "$SEED_MOUNT" || log "cannot unmount the seed disk"
    fi
}

ssh_listening() {
    # /proc/net/tcp{,6}: state 0A is LISTEN, port 22 is 0016.
    for table in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$table" ] || continue
        awk 'NR > 1 && $4 == "0A" && $2 ~ /:0016$/ { found = 1 } END { exit !found }' "$table" && return 0
    done
    return 1
}

ready() {
    waited=0
    until ssh_listening; do
        waited=$((waited + 1))
        if [ "$waited" -ge "$READY_TIMEOUT_TENTHS" ]; then
            echo "$ERROR_MARKER no SSH server listens on port 22" > /dev/console
            return 1
        fi
        sleep 0.1
    done
    echo "$READY_MARKER" > /dev/console
}

case "${1:-apply}" in
    apply) apply ;;
    ready) ready ;;
    *) log "usage: boot-hook [apply|ready]"; exit 2 ;;
esac
