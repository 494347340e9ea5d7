"""QEMU boot files: the initrd's cpio read back by GNU cpio, the kernel command line, the cache, apt's failures.

apt is made to fail for real by pointing ``APT_CONFIG`` at empty package lists (what a machine that never ran
``apt-get update`` has). Building from the real Debian kernel is tested by tests/guests/test_qemu_boot.py.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from labkit.errors import ConfigError
from labkit.images.guest_contract import ERROR_MARKER
from labkit.runtime.qemu import boot
from labkit.runtime.qemu.boot import MODULES, boot_files, build_cpio, build_initrd, kernel_args


def cpio_list(archive: bytes, verbose: bool = True) -> list[str]:
    done = subprocess.run(["cpio", "-itv" if verbose else "-it", "--quiet"], input=archive, capture_output=True,
                          check=True, timeout=30)
    return done.stdout.decode().splitlines()


def cpio_extract(archive: bytes, name: str) -> bytes:
    return subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", name], input=archive, capture_output=True,
                          check=True, timeout=30).stdout


@pytest.fixture
def no_apt_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """apt with empty package lists and no package cache, as on a machine that never ran ``apt-get update``."""
    root = tmp_path / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True)
    conf = root / "apt.conf"
    conf.write_text(f'Dir::State::lists "{root}/lists";\nDir::Cache "{root}/cache";\n'
                    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))


def test_cpio_is_read_back_by_gnu_cpio() -> None:
    archive = build_cpio([("bin", 0o040755, b"", (0, 0)), ("dev/console", 0o020600, b"", (5, 1)),
                          ("bin/sh", 0o120777, b"busybox", (0, 0)), ("odd", 0o100644, b"abc", (0, 0)),
                          ("four", 0o100755, b"1234", (0, 0))])
    listing = cpio_list(archive)
    assert cpio_list(archive, verbose=False) == ["bin", "dev/console", "bin/sh", "odd", "four"]
    assert listing[1].startswith("crw-------") and "5,   1" in listing[1]
    assert listing[2].startswith("lrwxrwxrwx") and listing[2].endswith("bin/sh -> busybox")
    assert cpio_extract(archive, "odd") == b"abc"
    assert cpio_extract(archive, "four") == b"1234"
    assert all(" root " in line for line in listing)


def test_initrd_holds_busybox_init_and_the_modules_in_order() -> None:
    modules = {name: f"module {name}".encode() for name in MODULES}
    archive = gzip.decompress(build_initrd(b"\x7fELF busybox", modules))
    names = cpio_list(archive, verbose=False)
    assert {"init", "bin/busybox", "dev/console", "newroot"} <= set(names)
    assert [n for n in names if n.startswith("lib/modules/")] == [f"lib/modules/{m}.ko" for m in MODULES]
    assert cpio_extract(archive, "lib/modules/virtio_net.ko") == b"module virtio_net"
    init = cpio_extract(archive, "init").decode()
    assert init.startswith("#!/bin/busybox sh\n")
    assert f'echo "{ERROR_MARKER} initrd: $*"' in init
    assert "for module in " + " ".join(MODULES) + "; do" in init
    assert 'exec switch_root /newroot "$init"' in init
    subprocess.run(["busybox", "ash", "-n"], input=init.encode(), check=True, timeout=30)  # parses
    assert build_initrd(b"\x7fELF busybox", modules) == build_initrd(b"\x7fELF busybox", modules)  # reproducible


def test_kernel_args_name_the_seed_only_when_there_is_one() -> None:
    plain = kernel_args(None)
    assert {"console=ttyS0", "root=/dev/vda", "rw"} <= set(plain)
    assert not [a for a in plain if a.startswith("labkit.seed=")]
    assert "labkit.seed=/dev/vdb" in kernel_args("/dev/vdb")


def test_static_busybox_is_told_from_a_dynamic_program() -> None:
    assert boot._is_static_elf(Path("/bin/busybox").read_bytes())
    assert not boot._is_static_elf(Path("/bin/ls").read_bytes())
    assert not boot._is_static_elf(b"#!/bin/sh\n")


def test_without_apt_lists_one_clear_error(no_apt_lists: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Cannot get the QEMU guest kernel: `.*apt-cache show --no-all-versions "
                                          r"linux-image-cloud-amd64` failed \(No packages found\)\. Run `sudo apt-get "
                                          r"update`"):
        boot_files(tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache" / "qemu-boot").iterdir()] == [".lock"]  # nothing half-made


def _fake_cached(cache: Path, kernel: bytes = b"K" * 100, initrd: bytes = b"I" * 50) -> Path:
    """A cache entry as `boot_files` writes it, for the host's busybox (no download)."""
    root = cache / "qemu-boot"
    folder = root / boot._key("linux-image-9.9-cloud-amd64", "9.9-1", boot._busybox())
    folder.mkdir(parents=True)
    (folder / "vmlinuz").write_bytes(kernel)
    (folder / "initrd.gz").write_bytes(initrd)
    (folder / "boot.json").write_text(json.dumps({
        "kernel_package": "linux-image-9.9-cloud-amd64", "kernel_version": "9.9-1",
        "sha256": {"vmlinuz": "k", "initrd.gz": "i"}, "sizes": {"vmlinuz": len(kernel), "initrd.gz": len(initrd)}}))
    (root / "current.json").write_text(json.dumps({"kernel_package": "linux-image-9.9-cloud-amd64",
                                                   "kernel_version": "9.9-1"}))
    return folder


def test_a_cached_kernel_is_used_without_asking_apt(no_apt_lists: None, tmp_path: Path) -> None:
    folder = _fake_cached(tmp_path)
    files = boot_files(tmp_path)  # apt cannot answer here: the cache alone must do
    assert (files.kernel, files.initrd) == (folder / "vmlinuz", folder / "initrd.gz")
    assert (files.kernel_package, files.kernel_version) == ("linux-image-9.9-cloud-amd64", "9.9-1")
    assert files.sha256 == {"vmlinuz": "k", "initrd.gz": "i"}
    with pytest.raises(ConfigError, match="No packages found"):
        boot_files(tmp_path, refresh=True)  # refresh asks apt


def test_a_damaged_cache_entry_is_rebuilt_not_used(no_apt_lists: None, tmp_path: Path) -> None:
    folder = _fake_cached(tmp_path)
    (folder / "vmlinuz").write_bytes(b"K" * 10)  # truncated
    with pytest.raises(ConfigError, match=r"apt-get download linux-image-9\.9-cloud-amd64=9\.9-1` failed"):
        boot_files(tmp_path)
    assert (folder / "vmlinuz").read_bytes() == b"K" * 10  # left for the next try, not half-replaced
