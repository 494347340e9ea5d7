"""Seed disks: a small ext4 image per machine that the guest's boot hook reads (hostname, network, keys, files).

It is a tar archive (entries owned by root, so no fakeroot and no mkfs) attached read-only as the second UML disk,
which the boot hook unpacks. The layout inside is the contract with ``guest/boot-hook.sh``; the paths are in
guest_contract.py.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import shlex
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from labkit.atomic import write_atomic
from labkit.errors import BadNameError, ImageError
from labkit.images.guest_contract import (
    SEED_AUTHORIZED_KEYS,
    SEED_ENV,
    SEED_FILES_TAR,
    SEED_ROOT_PASSWORD,
    SEED_ROOT_PASSWORD_HASH,
    SEED_SSH_HOST_KEY,
    SEED_STARTUP,
    SLIRP_DNS,
    SLIRP_GUEST_ADDRESS,
    SLIRP_HOST_ADDRESS,
)
from labkit.names import check_name

_IFNAME = re.compile(r"[a-z][a-z0-9]{0,14}")
_SEED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _default_interfaces() -> dict[str, str]:
    return {"eth0": SLIRP_GUEST_ADDRESS}


@dataclass
class SeedSpec:
    """What one machine's seed disk says. ``seed_id`` changes when the contents change (derived when left empty)."""

    hostname: str
    interfaces: dict[str, str] = field(default_factory=_default_interfaces)
    #: through the gateway: QEMU's user network answers ARP only for 10.0.2.2 and 10.0.2.3 (UML's slirp needs no ARP)
    default_route: str | None = f"via {SLIRP_HOST_ADDRESS} dev eth0"
    dns: str | None = SLIRP_DNS
    authorized_keys: list[str] = field(default_factory=list)
    root_password: str | None = None
    #: the machine's SSH host key: (private key in OpenSSH format, public key line); see `labkit.guest.keys`
    ssh_host_key: tuple[str, str] | None = None
    files_dir: Path | None = None
    startup_scripts: list[tuple[str, str]] = field(default_factory=list)
    seed_id: str = ""

    def validate(self) -> None:
        """Raise `ImageError` (or `BadNameError` for the hostname) on the first wrong value."""
        check_name(self.hostname, "hostname")
        for name, address in self.interfaces.items():
            if not _IFNAME.fullmatch(name):
                raise ImageError(f"seed for {self.hostname}: {name!r} is not an interface name like eth0")
            if "/" not in address:
                raise ImageError(f"seed for {self.hostname}: address {address!r} of {name} needs a prefix (/24)")
            try:
                ipaddress.ip_interface(address)
            except ValueError as err:
                raise ImageError(f"seed for {self.hostname}: {address!r} of {name} is not an address: {err}") from err
        if self.default_route:
            self._check_route(self.default_route)
        for server in (self.dns or "").split():
            try:
                ipaddress.ip_address(server)
            except ValueError as err:
                raise ImageError(f"seed for {self.hostname}: DNS server {server!r} is not an IP address") from err
        for key in self.authorized_keys:
            if "\n" in key.strip() or len(key.split()) < 2:
                raise ImageError(f"seed for {self.hostname}: {key[:40]!r} is not one OpenSSH public key line")
        if self.root_password is not None and (not self.root_password or any(c in self.root_password
                                                                              for c in "\n\r\0")):
            raise ImageError(f"seed for {self.hostname}: the root password must be one non-empty line")
        if self.files_dir is not None and not Path(self.files_dir).is_dir():
            raise ImageError(f"seed for {self.hostname}: files folder {self.files_dir} does not exist")
        seen = set()
        for name, text in self.startup_scripts:
            try:
                check_name(name, "startup script name")
            except BadNameError as err:
                raise ImageError(f"seed for {self.hostname}: {err}") from err
            if name in seen:
                raise ImageError(f"seed for {self.hostname}: two startup scripts are called {name}")
            if not isinstance(text, str):
                raise ImageError(f"seed for {self.hostname}: startup script {name} is not text")
            seen.add(name)
        if len(self.startup_scripts) > 99:
            raise ImageError(f"seed for {self.hostname}: at most 99 startup scripts")
        if self.seed_id and not _SEED_ID.fullmatch(self.seed_id):
            raise ImageError(f"seed for {self.hostname}: seed id {self.seed_id!r} may hold only letters, digits, . _ -")

    def _check_route(self, route: str) -> None:
        words = route.split()
        if not words or len(words) % 2:
            raise ImageError(f"seed for {self.hostname}: default route {route!r} is not like 'dev eth0'")
        for keyword, value in zip(words[::2], words[1::2], strict=True):
            if keyword == "dev" and _IFNAME.fullmatch(value):
                continue
            if keyword == "via":
                try:
                    ipaddress.ip_address(value)
                    continue
                except ValueError:
                    pass
            raise ImageError(f"seed for {self.hostname}: default route {route!r}: '{keyword} {value}' is not allowed")

    def content_id(self) -> str:
        """A short hash of everything the seed holds, used as seed_id when none was given."""
        digest = hashlib.sha256()
        for part in (self.hostname, sorted(self.interfaces.items()), self.default_route, self.dns,
                     self.authorized_keys, self.root_password, self.startup_scripts):
            digest.update(repr(part).encode() + b"\0")
        if self.files_dir is not None:
            root = Path(self.files_dir)
            for path in sorted(root.rglob("*")):
                info = path.lstat()
                digest.update(f"{path.relative_to(root)} {info.st_mode:o}".encode())
                if stat.S_ISLNK(info.st_mode):
                    digest.update(os.readlink(path).encode())
                elif stat.S_ISREG(info.st_mode):
                    digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    @property
    def effective_id(self) -> str:
        return self.seed_id or self.content_id()


def seed_env(spec: SeedSpec) -> str:
    """The shell-sourceable ``labkit/seed.env``: every value goes through shlex.quote."""
    values = {
        "LABKIT_SEED_ID": spec.effective_id,
        "LABKIT_HOSTNAME": spec.hostname,
        "LABKIT_INTERFACES": " ".join(f"{name}={address}" for name, address in spec.interfaces.items()),
        "LABKIT_DEFAULT_ROUTE": spec.default_route or "",
        "LABKIT_DNS": spec.dns or "",
    }
    lines = ["# labkit seed: written by labkit/images/seed.py, read by /usr/lib/labkit/boot-hook"]
    lines.extend(f"{key}={shlex.quote(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def pack_files(files_dir: Path, archive: Path | BinaryIO) -> None:
    """Pack a machine's files as root's, in a tar the boot hook unpacks over ``/``.

    Ownership lives in the archive, so the seed needs no fakeroot (which tripled its build time). Only files, symlinks
    and empty folders go in: tar makes parent folders itself, and the guest's own /etc or /root keep their modes.
    """
    target = {"fileobj": archive} if not isinstance(archive, Path) else {"name": archive}
    with tarfile.open(mode="w", format=tarfile.GNU_FORMAT, **target) as tar:  # type: ignore[call-overload]
        for path in sorted(files_dir.rglob("*")):
            if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(files_dir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def _root_info(name: str, mode: int, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _hash_password(password: str) -> bytes:
    """A crypt(3) hash the guest's ``chpasswd -e`` takes as it is: bcrypt (``$2b$``, which Debian's libxcrypt reads),
    cost 6 so that a console login stays quick under TCG. The password is labkit's console login into a machine
    whose root is the student anyway; the hash only keeps it out of plain sight in /etc/shadow."""
    import bcrypt  # a dependency of paramiko

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(6))


def seed_member(seed: Path, name: str) -> bytes | None:
    """One file of an existing seed disk (None when the disk or the file is not there, or is not a seed)."""
    try:
        with tarfile.open(seed, mode="r:") as tar:
            member = tar.extractfile(name)
            return None if member is None else member.read()
    except (OSError, tarfile.TarError, KeyError):
        return None


def build_seed(spec: SeedSpec, dest: Path) -> Path:
    """Write the seed disk for ``spec`` to ``dest`` atomically and return ``dest``.

    The disk is a tar archive (tar's 512-byte blocks make a valid block device): the boot hook unpacks it from
    /dev/ubdb. Writing it takes a millisecond, where an ext4 image took a mkfs run (15 ms) that dominated provisioning.
    """
    spec.validate()
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, int, bytes]] = [
        (SEED_ENV, 0o644, seed_env(spec).encode()),
        (SEED_AUTHORIZED_KEYS, 0o644, "".join(key.strip() + "\n" for key in spec.authorized_keys).encode()),
    ]
    if spec.root_password is not None:
        entries.append((SEED_ROOT_PASSWORD, 0o600, spec.root_password.encode()))
        entries.append((SEED_ROOT_PASSWORD_HASH, 0o600, _hash_password(spec.root_password) + b"\n"))
    if spec.ssh_host_key is not None:
        private, public = spec.ssh_host_key
        entries.append((SEED_SSH_HOST_KEY, 0o600, private.encode()))
        entries.append((SEED_SSH_HOST_KEY + ".pub", 0o644, public.strip().encode() + b"\n"))
    if spec.files_dir is not None:
        packed = io.BytesIO()
        pack_files(spec.files_dir, packed)
        entries.append((SEED_FILES_TAR, 0o600, packed.getvalue()))
    for number, (name, text) in enumerate(spec.startup_scripts, start=1):
        entries.append((f"{SEED_STARTUP}/{number:02d}-{name}.sh", 0o755,
                        (text if text.endswith("\n") else text + "\n").encode()))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for folder in ("labkit", SEED_STARTUP):
            tar.addfile(_root_info(folder, 0o700, kind=tarfile.DIRTYPE))
        for name, mode, data in entries:
            tar.addfile(_root_info(name, mode, len(data)), io.BytesIO(data))
    try:
        write_atomic(dest, archive.getvalue(), 0o600)
    except OSError as err:
        raise ImageError(f"cannot write the seed disk {dest}: {err.strerror}") from err
    return dest
