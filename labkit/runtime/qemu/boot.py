"""The kernel and initrd QEMU guests boot with, built from Debian packages without root and cached.

labkit's base images are bare ext4 file systems without a kernel (UML brings its own). Under QEMU they boot with
``-kernel``/``-initrd``: the kernel is Debian's cloud kernel (``linux-image-cloud-amd64``, resolved to its versioned
package), fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (no root). Its virtio drivers are modules,
so a small initrd carries them, with busybox-static as its only program: ``/init`` loads the modules in dependency
order (no depmod on the host), waits for the root disk, mounts it, moves ``/dev`` (devtmpfs) into it and switches to
its ``/sbin/init``. Any failure prints one line starting with the guest error marker and powers the machine off.

Everything lands under ``<cache>/qemu-boot/<key>/`` (written in a temporary folder renamed into place); the key names
the kernel package and version and a hash of the initrd's inputs. ``current.json`` remembers the last resolved key,
so a start does not ask apt (seconds) again; ``refresh=True`` asks it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit.atomic import locked, write_atomic
from labkit.errors import ConfigError, ImageError
from labkit.images.guest_contract import ERROR_MARKER
from labkit.images.programs import find_program
from labkit.progress import ProgressEvent, Reporter, silent

#: The Debian metapackage that depends on the current cloud kernel (virtio as modules, 8250 serial and ext4 built in).
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
#: Modules the initrd loads, in this order: block devices first (the root disk), then the network card.
#: virtio-rng feeds the guest's random pool from the host at boot: without it the kernel's pool is ready only seconds
#: later, and the first SSH connection waits for it (Dropbear asks getrandom() for its keys).
MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
           "failover", "net_failover", "virtio_net", "virtio-rng")
#: The devices QEMU guests get: root on the first virtio disk, the seed (read-only) on the second.
ROOT_DEVICE = "/dev/vda"
SEED_DEVICE = "/dev/vdb"
#: Bump when the initrd's layout or /init changes, so cached initrds are rebuilt.
INITRD_FORMAT = "1"
#: How long /init waits for the root disk to appear, in tenths of a second.
ROOT_WAIT_TENTHS = 100
APT_TIMEOUT = 120.0
EXTRACT_TIMEOUT = 300.0

#: A minimal firmware (Debian's qemu-system-data) that boots ``-kernel`` without SeaBIOS's option-ROM and boot-menu
#: work: 1 to 2 s less from start to ready under TCG on this machine kind.
QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")

KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.gz"
META_FILE = "boot.json"
CURRENT_FILE = "current.json"


@dataclass(frozen=True)
class BootFiles:
    """A kernel and the initrd built for exactly that kernel build, with where they came from."""

    kernel: Path
    initrd: Path
    kernel_package: str
    kernel_version: str
    sha256: dict[str, str] = field(default_factory=dict)


def kernel_args(seed_device: str | None) -> tuple[str, ...]:
    """The kernel command line of a QEMU guest (the backend adds the lab's own arguments after these).

    ``net.ifnames=0`` keeps the first card ``eth0`` under systemd images too, and ``quiet`` keeps the kernel's
    messages (errors excepted) off the console, as under UML.
    """
    args = ["console=ttyS0", f"root={ROOT_DEVICE}", "rw", "panic=-1", "net.ifnames=0", "quiet"]
    if seed_device:
        args.append(f"labkit.seed={seed_device}")
    return tuple(args)


def firmware_args() -> tuple[str, ...]:
    """QEMU arguments for the fast firmware when the host has it (else QEMU's default SeaBIOS).

    A saved RAM state only loads into the same device set, so a backend passes these on every start of a machine.
    """
    return ("-bios", str(QBOOT_ROM)) if QBOOT_ROM.is_file() else ()


# ---- the initrd ------------------------------------------------------------------------------------------------

INIT_SCRIPT = f"""#!/bin/busybox sh
# labkit initrd: load the virtio modules, mount the root disk, switch to its init (labkit/runtime/qemu/boot.py).
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{
    echo "{ERROR_MARKER} initrd: $*" > /dev/console
    sleep 1
    poweroff -f
}}
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs on /dev"
for module in {" ".join(MODULES)}; do
    insmod /lib/modules/$module.ko || fail "cannot load the kernel module $module"
done
root={ROOT_DEVICE}
init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=/dev/*) root=${{arg#root=}} ;;
        init=/*) init=${{arg#init=}} ;;
    esac
done
waited=0
until [ -b "$root" ]; do
    waited=$((waited + 1))
    [ "$waited" -ge {ROOT_WAIT_TENTHS} ] && fail "no root disk $root after {ROOT_WAIT_TENTHS // 10} s"
    sleep 0.1
done
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount the root disk $root"
[ -x "/newroot$init" ] || [ -L "/newroot$init" ] || fail "the root disk has no $init"
mkdir -p /newroot/dev
mount --move /dev /newroot/dev || fail "cannot move /dev into the root disk"
umount /sys
umount /proc
exec switch_root /newroot "$init"
"""


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One "newc" (070701) cpio record: a 110-byte hex header, the name and the data, each padded to 4 bytes."""
    raw_name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw_name), 0)
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    out = header + raw_name
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc archive of ``(name, mode, data, (rdev major, minor))``, every file owned by root, with its trailer."""
    parts = [_cpio_entry(name, mode, data, ino, rdev) for ino, (name, mode, data, rdev) in enumerate(entries, 1)]
    parts.append(_cpio_entry("TRAILER!!!", 0))
    return b"".join(parts)


def build_initrd(busybox: bytes, modules: dict[str, bytes]) -> bytes:
    """The gzip-compressed initrd: busybox, ``/init``, ``/dev/console`` and the modules (reproducible: mtime 0)."""
    dirs = ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"]
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [(d, 0o040755, b"", (0, 0)) for d in dirs]
    entries += [
        ("dev/console", 0o020600, b"", (5, 1)),
        ("bin/busybox", 0o100755, busybox, (0, 0)),
        ("bin/sh", 0o120777, b"busybox", (0, 0)),
        ("init", 0o100755, INIT_SCRIPT.encode(), (0, 0)),
    ]
    entries += [(f"lib/modules/{name}.ko", 0o100644, modules[name], (0, 0)) for name in MODULES]
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(build_cpio(entries))
    return out.getvalue()


# ---- the kernel package ----------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(LANG="C", LC_ALL="C")
    return env


def _apt(argv: list[str], cwd: Path | None = None) -> str:
    """Run an apt tool; a failure says what to run to fix it (usually the package lists are missing or stale)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=APT_TIMEOUT,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise ConfigError(f"`{' '.join(argv)}` did not finish within {APT_TIMEOUT:.0f} s (is the network or the "
                          "Debian mirror reachable?).") from err
    if done.returncode != 0:
        errors = [line.removeprefix("E: ").strip() for line in done.stderr.splitlines() if line.startswith("E:")]
        lines = done.stderr.strip().splitlines()
        why = "; ".join(errors) or (lines[-1] if lines else f"exit status {done.returncode}")
        raise ConfigError(f"Cannot get the QEMU guest kernel: `{' '.join(argv)}` failed ({why}). Run "
                          f"`sudo apt-get update`, then `apt-get download {KERNEL_METAPACKAGE}` to check it works.")
    return done.stdout


def resolve_kernel_package() -> tuple[str, str]:
    """``(package, version)`` of the versioned kernel the metapackage depends on, from apt's lists (no download)."""
    apt_cache = find_program("apt-cache")
    shown = _apt([apt_cache, "show", "--no-all-versions", KERNEL_METAPACKAGE])
    depends = next((line.split(":", 1)[1] for line in shown.splitlines() if line.startswith("Depends:")), "")
    package = next((dep.split()[0] for dep in depends.split(",") if dep.strip().startswith("linux-image-")), "")
    if not package:
        raise ConfigError(f"apt's entry for {KERNEL_METAPACKAGE} names no linux-image package; run "
                          "`sudo apt-get update` and try again.")
    shown = _apt([apt_cache, "show", "--no-all-versions", package])
    version = next((line.split(":", 1)[1].strip() for line in shown.splitlines() if line.startswith("Version:")), "")
    if not version:
        raise ConfigError(f"apt knows no version of {package}; run `sudo apt-get update` and try again.")
    return package, version


def _read_module(tree: Path, name: str) -> bytes:
    """The module ``name`` of the unpacked kernel package (``.ko`` or ``.ko.xz``), uncompressed."""
    found = sorted(tree.glob(f"lib/modules/*/kernel/**/{name}.ko*"))
    for path in found:
        if path.name == f"{name}.ko":
            return path.read_bytes()
        if path.name == f"{name}.ko.xz":
            return lzma.decompress(path.read_bytes())
    raise ImageError(f"The kernel package has no usable module {name} ({', '.join(p.name for p in found) or 'none'}).")


def _busybox() -> bytes:
    """The static busybox of the host (busybox-static): a dynamic one would find no libraries in the initrd."""
    path = Path(find_program("busybox")).resolve()
    data = path.read_bytes()
    if not _is_static_elf(data):
        raise ConfigError(f"{path} is not statically linked; install busybox-static (it replaces busybox).")
    return data


def _is_static_elf(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader)."""
    if data[:5] != b"\x7fELF\x02" or data[5] != 1:
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for index in range(phnum):
        start = phoff + index * phentsize
        if int.from_bytes(data[start:start + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def _key(package: str, version: str, busybox: bytes) -> str:
    inputs = hashlib.sha256()
    for part in (INITRD_FORMAT.encode(), INIT_SCRIPT.encode(), " ".join(MODULES).encode(), busybox):
        inputs.update(hashlib.sha256(part).digest())
    return f"{package}_{version}_{inputs.hexdigest()[:12]}".replace("/", "_").replace(":", "_")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(folder: Path) -> BootFiles | None:
    """The cached boot files in ``folder``, or None when the folder is missing, incomplete or damaged."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        files = BootFiles(kernel=folder / KERNEL_FILE, initrd=folder / INITRD_FILE,
                          kernel_package=str(meta["kernel_package"]), kernel_version=str(meta["kernel_version"]),
                          sha256={str(k): str(v) for k, v in meta["sha256"].items()})
        sizes = meta["sizes"]
        if files.kernel.stat().st_size != sizes[KERNEL_FILE] or files.initrd.stat().st_size != sizes[INITRD_FILE]:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return files


def _build(folder: Path, package: str, version: str, busybox: bytes, reporter: Reporter) -> BootFiles:
    """Download and unpack the kernel package, build the initrd, and publish both in ``folder`` in one rename."""
    apt_get, dpkg_deb = find_program("apt-get"), find_program("dpkg-deb")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=folder.parent) as work_name:
        work = Path(work_name)
        reporter(ProgressEvent("qemu-boot", 0, 3, f"downloading {package} {version}"))
        download = work / "download"
        download.mkdir()
        _apt([apt_get, "download", f"{package}={version}"], cwd=download)
        debs = sorted(download.glob("*.deb"))
        if len(debs) != 1:
            raise ImageError(f"`apt-get download {package}={version}` left {len(debs)} .deb files, not one.")
        reporter(ProgressEvent("qemu-boot", 1, 3, f"unpacking {debs[0].name}"))
        tree = work / "tree"
        try:
            subprocess.run([dpkg_deb, "-x", str(debs[0]), str(tree)], capture_output=True, text=True, env=_env(),
                           timeout=EXTRACT_TIMEOUT, check=True, stdin=subprocess.DEVNULL)
        except subprocess.CalledProcessError as err:
            raise ImageError(f"Cannot unpack {debs[0].name}: {err.stderr.strip() or err.returncode}.") from err
        except subprocess.TimeoutExpired as err:
            raise ImageError(f"Unpacking {debs[0].name} took more than {EXTRACT_TIMEOUT:.0f} s.") from err
        kernels = sorted(tree.glob("boot/vmlinuz-*"))
        if len(kernels) != 1:
            raise ImageError(f"{debs[0].name} holds {len(kernels)} kernels (boot/vmlinuz-*), not one.")
        reporter(ProgressEvent("qemu-boot", 2, 3, "building the initrd"))
        modules = {name: _read_module(tree, name) for name in MODULES}
        out = work / "out"
        out.mkdir()
        shutil.copyfile(kernels[0], out / KERNEL_FILE)
        (out / INITRD_FILE).write_bytes(build_initrd(busybox, modules))
        sha = {KERNEL_FILE: _sha256(out / KERNEL_FILE), INITRD_FILE: _sha256(out / INITRD_FILE)}
        meta = {"kernel_package": package, "kernel_version": version, "kernel_build": kernels[0].name,
                "modules": list(MODULES), "sha256": sha, "initrd_format": INITRD_FORMAT,
                "sizes": {KERNEL_FILE: (out / KERNEL_FILE).stat().st_size,
                          INITRD_FILE: (out / INITRD_FILE).stat().st_size}}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for path in out.iterdir():
            path.chmod(0o644)
        out.chmod(0o755)
        if folder.exists():  # damaged or incomplete: replaced whole
            stale = work / "stale"
            folder.rename(stale)
        out.rename(folder)
        reporter(ProgressEvent("qemu-boot", 3, 3, f"kernel {package} {version} and initrd ready"))
    loaded = _load(folder)
    if loaded is None:
        raise ImageError(f"The QEMU boot files just written to {folder} cannot be read back.")
    return loaded


def boot_files(settings_cache: Path, reporter: Reporter = silent, *, refresh: bool = False) -> BootFiles:
    """The kernel and initrd for QEMU guests, built once and cached under ``<settings_cache>/qemu-boot/<key>/``.

    Without ``refresh`` the last resolved kernel is used while its files are intact (no apt call); with it, or on the
    first call, apt says which kernel is current and a new one is downloaded if it changed.
    """
    root = Path(settings_cache) / "qemu-boot"
    root.mkdir(parents=True, exist_ok=True)
    busybox = _busybox()
    with locked(root / ".lock"):
        remembered = None if refresh else _current(root)
        package, version = remembered or resolve_kernel_package()
        return _publish(root, package, version, busybox, reporter)


def _current(root: Path) -> tuple[str, str] | None:
    """The kernel package and version resolved last time, if recorded."""
    try:
        pointer = json.loads((root / CURRENT_FILE).read_text())
        return str(pointer["kernel_package"]), str(pointer["kernel_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _publish(root: Path, package: str, version: str, busybox: bytes, reporter: Reporter) -> BootFiles:
    folder = root / _key(package, version, busybox)
    files = _load(folder) or _build(folder, package, version, busybox, reporter)
    write_atomic(root / CURRENT_FILE, json.dumps({"kernel_package": package, "kernel_version": version}) + "\n")
    return files
