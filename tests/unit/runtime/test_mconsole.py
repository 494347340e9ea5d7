"""The mconsole wire format, and the client against a datagram peer that answers like the kernel does.

The real kernel is exercised in tests/guests/test_runtime_uml.py (pause, resume, cad, halt, sysrq).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.errors import RuntimeBackendError
from labkit.runtime.uml.mconsole import (
    MCONSOLE_MAGIC,
    MCONSOLE_MAX_DATA,
    MCONSOLE_VERSION,
    MconsoleClient,
    MconsoleError,
    pack_request,
    unpack_reply,
)


def reply(err: int, more: int, data: bytes) -> bytes:
    return struct.pack("=III", err, more, len(data)) + data


def test_request_layout_is_host_endian_magic_version_len_and_512_bytes() -> None:
    packed = pack_request("sysrq s")
    assert len(packed) == 12 + MCONSOLE_MAX_DATA
    magic, version, length = struct.unpack_from("=III", packed)
    assert (magic, version, length) == (MCONSOLE_MAGIC, MCONSOLE_VERSION, 7)
    assert packed[12:19] == b"sysrq s" and set(packed[19:]) == {0}


def test_request_too_large_is_refused() -> None:
    pack_request("x" * (MCONSOLE_MAX_DATA - 1))
    with pytest.raises(MconsoleError, match="limit is 511"):
        pack_request("x" * MCONSOLE_MAX_DATA)


def test_reply_decoding_drops_the_trailing_nul() -> None:
    decoded = unpack_reply(reply(0, 1, b"6.1.176\0"))
    assert (decoded.err, decoded.more, decoded.data) == (0, True, "6.1.176")
    assert issubclass(MconsoleError, RuntimeBackendError)
    with pytest.raises(MconsoleError, match="shorter"):
        unpack_reply(b"\0\0\0")


class FakeKernel:
    """Answers each datagram from a script of replies, like arch/um/drivers/mconsole_kern.c does."""

    def __init__(self, path: Path, answers: dict[str, list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.answers = answers
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                data, origin = self.sock.recvfrom(4096)
            except OSError:
                return
            magic, version, length = struct.unpack_from("=III", data)
            assert (magic, version) == (MCONSOLE_MAGIC, MCONSOLE_VERSION)
            command = data[12:12 + length].decode()
            self.seen.append(command)
            for part in self.answers.get(command, [reply(1, 0, b"Unknown command\0")]):
                self.sock.sendto(part, origin)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[tuple[Path, FakeKernel]]:
    path = tmp_path / "mconsole"
    fake = FakeKernel(path, {
        "version": [reply(0, 0, b"6.1.176\0")],
        "proc meminfo": [reply(0, 1, b"MemTotal: 1 kB\n"), reply(0, 0, b"MemFree: 0 kB\n\0")],
        "stop": [reply(0, 0, b"stopped\0")],
        "go": [reply(1, 0, b"Not stopped\0")],
    })
    yield path, fake
    fake.sock.close()


def test_client_joins_multi_part_replies(kernel: tuple[Path, FakeKernel]) -> None:
    path, fake = kernel
    with MconsoleClient(path, timeout=2) as client:
        assert client.version() == "6.1.176"
        assert client.proc("/meminfo") == "MemTotal: 1 kB\nMemFree: 0 kB\n"
        client.stop()
        with pytest.raises(MconsoleError, match="Not stopped"):
            client.go()
    assert fake.seen == ["version", "proc meminfo", "stop", "go"]


def test_client_errors_name_the_socket(tmp_path: Path, kernel: tuple[Path, FakeKernel]) -> None:
    with pytest.raises(MconsoleError, match="is not there"), MconsoleClient(tmp_path / "nothing") as client:
        client.version()
    with pytest.raises(MconsoleError, match="refused"), MconsoleClient(kernel[0]) as client:
        client.cad()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(tmp_path / "silent"))
    with silent, pytest.raises(MconsoleError, match="did not answer"), MconsoleClient(tmp_path / "silent", 0.2) as c:
        c.version()


def test_argument_checks() -> None:
    client = MconsoleClient("/nonexistent")
    with pytest.raises(MconsoleError, match="one letter"):
        client.sysrq("ss")
    with pytest.raises(MconsoleError, match="white space"):
        client.config("eth0 x")
