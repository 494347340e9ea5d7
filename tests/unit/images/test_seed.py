"""Seed disks: built without root, read back as the tar archive the guest unpacks, and every input checked."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from labkit.errors import BadNameError, ImageError
from labkit.images.seed import SeedSpec, build_seed


def member(image: Path, name: str) -> tarfile.TarInfo | None:
    with tarfile.open(image) as tar:
        try:
            return tar.getmember(name)
        except KeyError:
            return None


def read(image: Path, name: str) -> str:
    with tarfile.open(image) as tar:
        data = tar.extractfile(name)
        assert data is not None
        return data.read().decode()


def sourced(env_text: str, tmp_path: Path, variable: str) -> str:
    """What a POSIX shell sees in ``variable`` after sourcing the seed.env text."""
    env = tmp_path / "seed.env"
    env.write_text(env_text)
    result = subprocess.run(["sh", "-c", f'. "$1"; printf %s "${variable}"', "sh", str(env)], capture_output=True,
                            text=True, check=True)
    return result.stdout



def seed_file(image: Path, name: str) -> tuple[bytes, int, int]:
    """(content, owner uid, mode) of one of the machine's files, from the seed's files.tar."""
    with tarfile.open(image) as outer:
        packed = outer.extractfile("labkit/files.tar")
        assert packed is not None
        raw = packed.read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        info = tar.getmember(name)
        data = tar.extractfile(info)
        assert data is not None
        return data.read(), info.uid, info.mode

def test_seed_content_reads_back(tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "etc").mkdir(parents=True)
    (files / "etc" / "motd").write_text("welcome\n")
    spec = SeedSpec(
        hostname="web1",
        interfaces={"eth0": "10.0.2.15/24", "eth1": "192.168.10.1/24"},
        authorized_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE grader@labkit"],
        root_password="it's $ecret",
        files_dir=files,
        startup_scripts=[("web", "echo web\n"), ("db", "echo db")],
        seed_id="abc123",
    )
    image = build_seed(spec, tmp_path / "out" / "seed.img")
    assert image == tmp_path / "out" / "seed.img"
    assert sorted(p.name for p in image.parent.iterdir()) == ["seed.img"]  # no temporary left behind

    env = read(image, "labkit/seed.env")
    assert "LABKIT_HOSTNAME=web1" in env
    assert sourced(env, tmp_path, "LABKIT_INTERFACES") == "eth0=10.0.2.15/24 eth1=192.168.10.1/24"
    assert sourced(env, tmp_path, "LABKIT_DEFAULT_ROUTE") == "via 10.0.2.2 dev eth0"
    assert sourced(env, tmp_path, "LABKIT_DNS") == "10.0.2.3"
    assert sourced(env, tmp_path, "LABKIT_SEED_ID") == "abc123"
    assert read(image, "labkit/authorized_keys") == spec.authorized_keys[0] + "\n"
    assert read(image, "labkit/root_password") == "it's $ecret"
    assert seed_file(image, "etc/motd") == (b"welcome\n", 0, 0o644)
    assert read(image, "labkit/startup/01-web.sh") == "echo web\n"
    assert read(image, "labkit/startup/02-db.sh") == "echo db\n"
    secret = member(image, "labkit/root_password")
    assert secret is not None and (secret.mode, secret.uid) == (0o600, 0)
    assert image.stat().st_size % 512 == 0  # a whole number of sectors: a valid block device for UML


def test_values_are_shell_quoted(tmp_path: Path) -> None:
    """A hostile-looking but valid value stays one word and runs nothing."""
    spec = SeedSpec(hostname="h", dns="10.0.2.3 1.1.1.1", default_route="via 10.0.2.2 dev eth0")
    image = build_seed(spec, tmp_path / "seed.img")
    env = read(image, "labkit/seed.env")
    assert sourced(env, tmp_path, "LABKIT_DNS") == "10.0.2.3 1.1.1.1"
    assert sourced(env, tmp_path, "LABKIT_DEFAULT_ROUTE") == "via 10.0.2.2 dev eth0"


def test_no_password_no_file(tmp_path: Path) -> None:
    image = build_seed(SeedSpec(hostname="h"), tmp_path / "seed.img")
    assert member(image, "labkit/root_password") is None
    assert member(image, "labkit/seed.env") is not None


def test_seed_id_follows_content(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "a").write_text("1")
    spec = SeedSpec(hostname="h", files_dir=files)
    first = spec.effective_id
    assert SeedSpec(hostname="h", files_dir=files).effective_id == first
    (files / "a").write_text("2")
    assert spec.effective_id != first
    assert SeedSpec(hostname="h2", files_dir=files).effective_id != spec.effective_id
    assert SeedSpec(hostname="h", seed_id="fixed").effective_id == "fixed"


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"hostname": "Bad_Host"}, BadNameError, "hostname"),
        ({"interfaces": {"eth0": "10.0.2.15"}}, ImageError, "prefix"),
        ({"interfaces": {"eth0": "10.0.2.999/24"}}, ImageError, "not an address"),
        ({"interfaces": {"eth0; reboot": "10.0.2.15/24"}}, ImageError, "interface name"),
        ({"default_route": "dev eth0; reboot"}, ImageError, "default route"),
        ({"default_route": "via nowhere"}, ImageError, "default route"),
        ({"dns": "10.0.2.3 $(reboot)"}, ImageError, "DNS server"),
        ({"authorized_keys": ["ssh-ed25519 AAAA a\nssh-rsa BBBB b"]}, ImageError, "public key"),
        ({"root_password": "two\nlines"}, ImageError, "password"),
        ({"files_dir": Path("/nonexistent/files")}, ImageError, "does not exist"),
        ({"startup_scripts": [("a", "x"), ("a", "y")]}, ImageError, "two startup scripts"),
        ({"startup_scripts": [("../evil", "x")]}, ImageError, "startup script name"),
        ({"seed_id": "a/b"}, ImageError, "seed id"),
    ],
)
def test_bad_inputs_are_refused(tmp_path: Path, changes: dict, error: type[Exception], words: str) -> None:
    spec = SeedSpec(hostname="h")
    for key, value in changes.items():
        setattr(spec, key, value)
    with pytest.raises(error, match=words):
        build_seed(spec, tmp_path / "seed.img")
    assert list(tmp_path.iterdir()) == []
