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
#                      the readiness marker on /dev/console (nothing in a warm boot: `warm` prints it)
#   boot-hook warm     a warm boot (labkit.warm=/dev/vdX, no seed): once the boot is done, print the warm marker, and
#                      wait. The host saves the running state there; every machine started from that state goes on
#                      here, gets its own seed disk plugged in, and takes its clock, randomness, seed and SSH host key
#                      from it before it prints the readiness marker
#
# It never stops the boot: a step that fails is reported on stderr and the next one runs.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# The seed disk is named on the kernel command line (SEED_KERNEL_ARG: labkit.seed=/dev/ubdb under UML, /dev/vdb under
# QEMU); a guest started by an older labkit has no such argument and gets the UML device.
SEED_KERNEL_ARG=labkit.seed
WARM_KERNEL_ARG=labkit.warm
WARM_MARKER='labkit-guest: warm'
WARM_SEEDED=
HOST_KEY_FROM_SEED=
WARM_LOG=/run/labkit-warm.log
#: the inode of sshd's listening socket before it reloads (a warm start): `ready` waits for a new one
OLD_LISTENER=
KEEP_SEED=
READY_POLL=0.1
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

stamp() {
    # The guest's uptime at each step of a warm start, in $WARM_LOG (built-ins only).
    read -r up _idle < /proc/uptime
    echo "$up $*" >> "$WARM_LOG"
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
    if [ -f /etc/resolv.conf ] && [ ! -L /etc/resolv.conf ]; then
        printf '%s' "$servers" > /etc/resolv.conf  # built-ins only (a program costs here); a few bytes
        return 0
    fi
    printf '%s' "$servers" > /etc/resolv.conf.labkit
    # a rename replaces a symlinked /etc/resolv.conf (a student's resolver) with a file
    mv -f /etc/resolv.conf.labkit /etc/resolv.conf
}

apply_keys() {
    keys="$1/authorized_keys"
    [ -s "$keys" ] || return 0
    made=
    [ -d /root/.ssh ] || { mkdir -p -m 700 /root/.ssh && made=1; }
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
    # sshd and dropbear refuse keys in group- or world-writable places (a folder made just now is root's, 0700, and so
    # is the one a warm start's fresh disk has from the warm boot).
    [ -z "$made" ] && [ -z "$WARM_SEEDED" ] || return 0
    chown 0:0 /root /root/.ssh /root/.ssh/authorized_keys
    chmod go-w /root /root/.ssh /root/.ssh/authorized_keys
}

apply_host_key() {
    # The machine's own SSH host key, made by labkit and kept in its seed: the same across resets (no "host key
    # changed" warning for a student) and never the one of another machine started from the same warm state.
    # Copied with shell built-ins (sshd starts after this, and its keys may only be root's).
    [ -f "$1/ssh_host_ed25519_key" ] && [ -d /etc/ssh ] || return 0
    umask 077  # not in a subshell: a fork costs too
    for part in "" .pub; do
        while IFS= read -r line || [ -n "$line" ]; do
            printf '%s\n' "$line"
        done < "$1/ssh_host_ed25519_key$part" > "/etc/ssh/ssh_host_ed25519_key$part" ||
            { umask 022; log "cannot install the seed's SSH host key"; return 0; }
    done
    umask 022
    HOST_KEY_FROM_SEED=1
}

apply_password() {
    secret="$1/root_password"
    [ -f "$secret" ] || return 0
    # labkit's own hash, where the system's crypt reads it (bcrypt: Debian's libxcrypt, not BusyBox): set unless set
    # (a student who changed root's password gets the seed's back, so labkit's console login keeps working)
    if [ -f "$secret.hash" ] && command -v chpasswd > /dev/null 2>&1 && read -r seed_hash < "$secret.hash" &&
            [ -n "$seed_hash" ]; then
        root_hash
        [ "$ROOT_HASH" = "$seed_hash" ] || set_root_hash "$seed_hash"
        return 0
    fi
    # Otherwise hash it here, which costs a quarter of a second of the boot: skip it when the seed's password is the
    # one set last and root's entry in /etc/shadow is still the one that set.
    applied="$STATE_DIR/root-password.sha256"
    digest=$(sha256sum < "$secret")
    before=
    [ -f "$applied" ] && read -r before < "$applied"
    root_hash
    [ "$digest $ROOT_HASH" = "$before" ] && return 0
    set_password "$secret" || return 0
    mkdir -p "$STATE_DIR"
    root_hash
    (umask 077 && echo "$digest $ROOT_HASH" > "$applied")
}

root_hash() {
    # root's hash in /etc/shadow, into ROOT_HASH (no subshell: a fork costs here too)
    ROOT_HASH=
    while IFS=: read -r _user _hash _rest; do
        [ "$_user" = root ] && { ROOT_HASH=$_hash; return 0; }
    done < /etc/shadow
}

set_root_hash() {
    # Put labkit's hash into root's /etc/shadow entry with built-ins only, in place (the file keeps its owner and
    # mode): chpasswd, even with -e, took a quarter of a second under QEMU.
    content=
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
            root:*)
                rest=${line#root:}
                line="root:$1:${rest#*:}" ;;
        esac
        content="$content$line$NL"
    done < /etc/shadow
    printf '%s' "$content" > /etc/shadow
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
    [ -d "$STATE_DIR" ] || mkdir -p "$STATE_DIR"
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
    # The first labkit.seed=/dev/... word of the command line (labkit's, before any a lab adds), or of the argument
    # named by $1; anything else (a path outside /dev, odd characters) is ignored.
    # Shell built-ins only: every process costs tens of milliseconds this early in a UML boot.
    read -r cmdline < /proc/cmdline 2>/dev/null || return 0
    for word in $cmdline; do
        case "$word" in
            "${1:-$SEED_KERNEL_ARG}"=/dev/*)
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
    [ -d "$SEED_MOUNT" ] || mkdir -p -m 700 "$SEED_MOUNT"
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
        apply_host_key "$seed"
        [ -z "$WARM_SEEDED" ] || warm_host_key
        apply_password "$seed"
        apply_files "$seed"
        if [ "$1" = early ]; then keep_startup "$seed"; else run_startup "$seed"; fi
    else
        log "the seed disk has no labkit/seed.env"
    fi
    if [ "$unpacked" = 1 ]; then
        [ -n "$KEEP_SEED" ] || rm -rf "$SEED_MOUNT"
    else
        umount "$SEED_MOUNT" || log "cannot unmount the seed disk"
    fi
}

ssh_listening() {
    # /proc/net/tcp{,6}: state 0A is LISTEN, port 22 is 0016; a socket other than $OLD_LISTENER (its inode). The inode
    # of the first listener found is left in LISTENER.
    LISTENER=
    for table in /proc/net/tcp /proc/net/tcp6; do
        [ -r "$table" ] || continue
        # shellcheck disable=SC2034 # the fields before and after are read to be skipped
        while read -r _slot local _remote state _queues _timer _retransmits _uid _timeout inode _rest; do
            case "$local" in
                *:0016) [ "$state" = 0A ] && [ "$inode" != "$OLD_LISTENER" ] && { LISTENER=$inode; return 0; } ;;
            esac
        done < "$table"
    done
    return 1
}

warm_host_key() {
    # The saved state's host key is every machine's: a seed without one of its own (an older labkit's) gets a new one.
    if [ -z "$HOST_KEY_FROM_SEED" ] && [ -e /etc/ssh/ssh_host_ed25519_key ]; then
        rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub
        ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key || log "cannot make an SSH host key"
    fi
    reload_sshd
}

reload_sshd() {
    # sshd of the saved state runs with the saved state's host key: SIGHUP makes it start again with the one the seed
    # just installed (same PID, for systemd). `ready` then waits for its new listening socket.
    pid=
    read -r pid < /run/sshd.pid 2>/dev/null || return 0
    ssh_listening && OLD_LISTENER=$LISTENER
    kill -HUP "$pid" || { OLD_LISTENER=; log "cannot reload sshd"; }
    stamp sshd-reloading
}

startup() {
    [ -d "$STARTUP_KEPT" ] || return 0
    run_startup "${STARTUP_KEPT%/*}"
    rm -rf "$STARTUP_KEPT"
}

await_seed() {
    # One perl process does the waiting and what must come first in a machine started from the saved state: programs
    # started after a restore are slow (QEMU translates their code afresh), so none is started per try or per step.
    # It prints the warm marker once it waits (the host saves the state then); in each machine started from it, it
    # sees the seed disk appear ($1, checked every 10 ms), sets the clock from the disk's serial number (the host's
    # time in seconds since the epoch: the saved clock is old), then mixes 64 bytes of the host's randomness
    # (virtio-rng) into the kernel's pool and makes it reseed now (ioctl RNDRESEEDCRNG): machines from one state
    # share its random generator until then, and keys are drawn next.
    perl -e '
        my ($device, $serial, $marker) = @ARGV;
        open(my $console, ">", "/dev/console") or die "no console: $!\n";
        syswrite($console, "$marker\n");
        select(undef, undef, undef, 0.01) until -b $device;
        if (open(my $up, "<", "/proc/uptime") and open(my $log, ">", $ARGV[3])) {
            print $log ((split " ", <$up>)[0], " seed-disk\n");
        }
        my $now = "";
        my $s;
        $now = <$s> if open($s, "<", $serial);
        if (defined $now and $now =~ /^(\d+)(?:\.(\d{1,6}))?/) {
            my $usec = defined $2 ? substr($2 . "00000", 0, 6) : 0;
            syscall(164, pack("qq", $1, $usec), 0) == 0 or warn "cannot set the clock to $now: $!\n";  # settimeofday
        } else {
            warn "the seed disk has no time as its serial number: the clock is left as saved\n";
        }
        open(my $h, "<", "/dev/hwrng") or die "no /dev/hwrng: $!\n";
        sysread($h, my $bytes, 64) == 64 or die "short read from /dev/hwrng\n";
        open(my $u, ">", "/dev/urandom") or die "no /dev/urandom: $!\n";
        syswrite($u, $bytes);
        ioctl($u, 0x5207, 0) or die "cannot reseed the random generator: $!\n";
    ' "$1" "/sys/block/${1##*/}/serial" "$WARM_MARKER" "$WARM_LOG"
}

warm() {
    device=$(named_seed_device "$WARM_KERNEL_ARG")
    [ -n "$device" ] || { log "not a warm boot (no $WARM_KERNEL_ARG=/dev/... argument)"; return 2; }
    # Saved once the boot is over, so that a machine started from the state has nothing of it left to do.
    systemctl is-system-running --wait > /dev/null 2>&1
    # What applying a seed needs, made or read now: after the restore every new folder or first run of a program is
    # paid for again in each machine (the programs' pages come from the page cache, saved with the state).
    [ -d "$SEED_MOUNT" ] || mkdir -p -m 700 "$SEED_MOUNT"
    [ -d /root/.ssh ] || mkdir -p -m 700 /root/.ssh
    tar --version > /dev/null 2>&1
    ip -V > /dev/null 2>&1
    sync
    await_seed "$device" || log "the clock or the random generator may be the saved state's"
    # --- from here on, in each machine started from the saved state
    stamp clock-random
    SEED_DEVICE=$device
    WARM_SEEDED=1
    KEEP_SEED=1  # removed after the readiness marker: nothing waits on it
    READY_POLL=0.05
    apply
    stamp applied
    ready
    rm -rf "$SEED_MOUNT"
}

warm_boot() {
    # Whether the command line has labkit.warm=/dev/... (built-ins only: `ready` runs in every boot).
    read -r cmdline < /proc/cmdline 2>/dev/null || return 1
    case " $cmdline " in
        *" $WARM_KERNEL_ARG=/dev/"*) return 0 ;;
    esac
    return 1
}

ready() {
    # A warm boot prints its markers from `warm` (labkit-warm.service).
    [ -n "$WARM_SEEDED" ] || ! warm_boot || return 0
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
        sleep "$READY_POLL"
    done
    echo "$READY_MARKER" > /dev/console
    [ -z "$WARM_SEEDED" ] || stamp ready
}

case "${1:-apply}" in
    apply) apply ;;
    early) apply early ;;
    startup) startup ;;
    ready) ready ;;
    warm) warm ;;
    *) log "usage: boot-hook [apply|early|startup|ready|warm]"; exit 2 ;;
esac
