"""Why UML could not mount its root disk, told in words an operator can act on.

When ``ubd0`` cannot be opened the guest ends with ``VFS: Unable to mount root fs``; the kernel's own reason (a lock
held by another process, a base image that changed) is a line or two earlier on the console. This module checks the
same things from the host after the fact, so the start error names the file and, for a lock, the process holding it.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
from pathlib import Path

from labkit.errors import LabkitError, RuntimeBackendError
from labkit.overlays import umlcow

#: ``struct flock`` on Linux x86_64: type, whence, start, len, pid (padded to 32 bytes).
_FLOCK = struct.Struct("hhqqi4x")
#: what the root mount failure looks like on the console
ROOT_MOUNT_FAILED = "Unable to mount root fs"
#: the panic's CPU line when the kernel warned earlier in the boot (taint flag W)
_WARNED = re.compile(r"^CPU: \d+ PID: \d+ Comm: \S+ Tainted: [A-Z ]*W", re.M)


class KernelFaultAtBoot(RuntimeBackendError):
    """A start that failed in the guest kernel while the disk is fine (`kernel_fault_at_boot`)."""


def lock_holder(path: Path, exclusive: bool) -> int | None:
    """The PID of a process whose POSIX lock on ``path`` would refuse UML's lock (a write lock when ``exclusive``,
    as UML takes on a writable disk, else a read lock), or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        wanted = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, _FLOCK.pack(wanted, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return None
    finally:
        os.close(fd)
    kind, _whence, _start, _length, pid = _FLOCK.unpack(answer)
    return None if kind == fcntl.F_UNLCK else pid


def _who(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"process {pid} (already gone)"
    return f"process {pid} ({' '.join(a.decode(errors='replace') for a in argv if a)[:160]})"


def root_disk_problems(overlay: Path, image: Path) -> list[str]:
    """What would stop UML from opening ``overlay`` over ``image`` now; empty when both look fine."""
    problems: list[str] = []
    try:
        header = umlcow.read_header(overlay)
        umlcow.check_backing(header, image)
    except LabkitError as err:
        problems.append(str(err))
    for path, exclusive in ((overlay, True), (image, False)):
        pid = lock_holder(path, exclusive)
        if pid is not None:
            problems.append(f"{path} is locked by {_who(pid)}")
    return problems


def kernel_fault_at_boot(console: str, problems: list[str]) -> bool:
    """True for the one boot failure that is the guest kernel's, not the disk's: the root mount failed, labkit finds
    nothing wrong with the disk, and the kernel had warned earlier in the same boot.

    Seen about once in a few hundred boots under heavy host load (Debian's UML 6.1 kernel): the crypto algorithms
    registered at boot fail their self-test hand-off (``AppArmor: failed to setup profile sha1 hashing: -80``,
    ``zswap: default compressor lzo not available``), so ext4 cannot get crc32c and the root mount fails. The same
    disk boots at the next try. docs/runtime.md tells the evidence."""
    return ROOT_MOUNT_FAILED in console and not problems and _WARNED.search(console) is not None
