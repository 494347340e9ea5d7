#!/bin/sh
# labkit boot hook, installed by every image builder at /usr/lib/labkit/boot-hook.
# POSIX sh: it runs under busybox ash (tiny) and dash (Debian). The host side of this contract is
# labkit/images/guest_contract.py and labkit/images/seed.py; docs/images.md describes it.
#
#   boot-hook [apply]  unpack the seed disk (a tar archive), apply it, remove it (a guest without seed disk just boots)
#   boot-hook early    the same, early in the boot (systemd images): the lab's startup scripts, which may want a
#                      booted system, are kept for `boot-hook startup` instead of run
#   boot-hook startup  run the startup scripts `early` kept
#   boot-hook ready    wait until the kept startup scripts have run and the SSH server listens on port 22, then print
#                      the readiness marker on /dev/console
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
STARTUP_KEPT=/run/labkit/startup
STATE_DIR=/var/lib/labkit
STARTUP_LOG=/var/log/labkit-startup.log
READY_MARKER='labkit-guest: ready'
ERROR_MARKER='labkit-guest: error:'
READY_TIMEOUT_TENTHS=900

log() {
    echo "labkit-boot-hook: $*" >&2
}

# Every program the hook starts costs 30 to 100 ms early in a UML boot (a process and its page faults are round trips
# to the host), so the steps below use the shell's built-ins wherever they can and run the rest once per boot.
NL='
'

apply_hostname() {
    [ -n "$LABKIT_HOSTNAME" ] || return 0
    { echo "$LABKIT_HOSTNAME" > /proc/sys/kernel/hostname; } 2>/dev/null || hostname "$LABKIT_HOSTNAME" ||
        log "cannot set hostname $LABKIT_HOSTNAME"
    echo "$LABKIT_HOSTNAME" > /etc/hostname
    kept=
    if [ -f /etc/hosts ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            case "$line" in
                "127.0.1.1 "* | "127.0.1.1	"*) ;;
                *) kept="$kept$line$NL" ;;
            esac
        done < /etc/hosts
    else
        kept="127.0.0.1 localhost$NL"
    fi
    printf '%s127.0.1.1 %s\n' "$kept" "$LABKIT_HOSTNAME" > /etc/hosts
}

apply_network() {
    commands="link set lo up$NL"
    for pair in $LABKIT_INTERFACES; do
        ifname=${pair%%=*}
        address=${pair#*=}
        if [ ! -e "/sys/class/net/$ifname" ]; then
            log "interface $ifname does not exist; not configured"
            continue
        fi
        commands="${commands}addr replace $address dev $ifname${NL}link set $ifname up$NL"
    done
    # Classic slirp is a SLIP-like link without ARP: the default route names the device, not a gateway. The route is
    # words like "dev eth0" or "via 10.0.0.1 dev eth1", checked by the host.
    [ -z "$LABKIT_DEFAULT_ROUTE" ] || commands="${commands}route replace default $LABKIT_DEFAULT_ROUTE$NL"
    # iproute2 takes them all in one process; busybox's ip has no -batch, so it gets one process per command.
    printf '%s' "$commands" | ip -force -batch - 2>/dev/null && return 0
    printf '%s' "$commands" | while IFS= read -r command; do
        # shellcheck disable=SC2086 # the words of one ip command
        ip $command || log "ip $command failed"
    done
}

apply_dns() {
    [ -n "$LABKIT_DNS" ] || return 0
    servers=
    for server in $LABKIT_DNS; do
        servers="${servers}nameserver $server$NL"
    done
    printf '%s' "$servers" > /etc/resolv.conf.labkit
    # a rename replaces /etc/resolv.conf even when it is a symlink, and leaves no half-written file
    mv -f /etc/resolv.conf.labkit /etc/resolv.conf
}

apply_keys() {
    keys="$1/authorized_keys"
    [ -s "$keys" ] || return 0
    [ -d /root/.ssh ] || mkdir -p -m 700 /root/.ssh
    have=
    if [ -f /root/.ssh/authorized_keys ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            have="$have$NL$line"
        done < /root/.ssh/authorized_keys
    fi
    # Add the seed's keys every boot (so the grader's key comes back) and keep keys the student added.
    while IFS= read -r line || [ -n "$line" ]; do
        [ -n "$line" ] || continue
        case "$NL$have$NL" in
            *"$NL$line$NL"*) ;;
            *) printf '%s\n' "$line" >> /root/.ssh/authorized_keys; have="$have$NL$line" ;;
        esac
    done < "$keys"
    # sshd and dropbear refuse keys in group- or world-writable places.
    chown 0:0 /root /root/.ssh /root/.ssh/authorized_keys
    chmod go-w /root /root/.ssh /root/.ssh/authorized_keys
}

apply_password() {
    secret="$1/root_password"
    [ -f "$secret" ] || return 0
    # Hashing the password costs a quarter of a second of the boot: skip it when the seed's password is the one set
    # last and root's entry in /etc/shadow is still the one that set (a student who changed root's password gets the
    # seed's back, so labkit's console login keeps working).
    applied="$STATE_DIR/root-password.sha256"
    digest=$(sha256sum < "$secret")
    before=
    [ -f "$applied" ] && read -r before < "$applied"
    [ "$digest $(root_hash)" = "$before" ] && return 0
    set_password "$secret" || return 0
    mkdir -p "$STATE_DIR"
    (umask 077 && echo "$digest $(root_hash)" > "$applied")
}

root_hash() {
    while IFS=: read -r user hash _rest; do
        [ "$user" = root ] && { echo "$hash"; return 0; }
    done < /etc/shadow
}

set_password() {
    secret="$1"
    if command -v chpasswd > /dev/null 2>&1; then
        { printf 'root:'; cat "$secret"; echo; } | chpasswd || { log "chpasswd failed"; return 1; }
        return 0
    fi
    # busybox images have no chpasswd: hash with mkpasswd and rewrite root's shadow entry in place.
    hash=$(mkpasswd -m sha512 -P 0 < "$secret") || { log "mkpasswd failed"; return 1; }
    awk -F: -v OFS=: -v hash="$hash" '$1 == "root" { $2 = hash } { print }' /etc/shadow > /etc/shadow.labkit &&
        cat /etc/shadow.labkit > /etc/shadow || { rm -f /etc/shadow.labkit; log "cannot set root's password"; return 1; }
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

keep_startup() {
    set -- "$1" "$1"/startup/*.sh
    [ -f "$2" ] || return 0  # no script: nothing to keep, nothing for labkit-ready to wait for
    rm -rf "$STARTUP_KEPT"
    mv "$1/startup" "$STARTUP_KEPT" || { log "cannot keep the startup scripts for later; running them now"; run_startup "$1"; }
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
    # Shell built-ins only: every process costs tens of milliseconds this early in a UML boot.
    read -r cmdline < /proc/cmdline 2>/dev/null || return 0
    for word in $cmdline; do
        case "$word" in
            "$SEED_KERNEL_ARG"=/dev/*)
                device=${word#*=}
                case "$device" in
                    *[!A-Za-z0-9/_.-]*) ;;
                    *) echo "$device"; return 0 ;;
                esac ;;
        esac
    done
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
    mkdir -p -m 700 "$SEED_MOUNT"
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
        if [ "$1" = early ]; then keep_startup "$seed"; else run_startup "$seed"; fi
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
        # shellcheck disable=SC2034 # the fields before and after are read to be skipped
        while read -r _slot local _remote state _rest; do
            case "$local" in
                *:0016) [ "$state" = 0A ] && return 0 ;;
            esac
        done < "$table"
    done
    return 1
}

startup() {
    [ -d "$STARTUP_KEPT" ] || return 0
    run_startup "${STARTUP_KEPT%/*}"
    rm -rf "$STARTUP_KEPT"
}

ready() {
    # Kept startup scripts come first (the unit that runs them bounds their time and removes them when it ends).
    while [ -d "$STARTUP_KEPT" ]; do
        sleep 0.1
    done
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
    early) apply early ;;
    startup) startup ;;
    ready) ready ;;
    *) log "usage: boot-hook [apply|early|startup|ready]"; exit 2 ;;
esac
