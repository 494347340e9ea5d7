"""Console recordings: the asciicast v2 writer (hello, input and output events, size cap), retention, and the real
supervisor recording a session around a stand-in for `linux` (the booted guest is tests/guests/test_recording.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from labkit.config import Settings
from labkit.errors import ConfigError
from labkit.runtime.base import RecordingPolicy, State
from labkit.runtime.console import connect
from labkit.runtime.recorder import HELLO_WAIT, TRUNCATED, SessionRecorder, hello_line, prune
from tests.unit.runtime.test_supervisor import STAND_IN, read_until, root, stand_in_for, wait_state  # noqa: F401

T0 = 1_800_000_000.0


def cast(path: Path) -> tuple[dict[str, object], list[list[object]]]:
    """The header and the events of a cast file; every line must be JSON."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def only_cast(folder: Path) -> Path:
    files = sorted(folder.glob("*.cast"))
    assert len(files) == 1, files
    return files[0]


def config(folder: Path, max_bytes: int = 1 << 20) -> dict[str, object]:
    return {"folder": str(folder), "machine": "c1-s1-a", "max_bytes": max_bytes}


def test_hello_sets_the_header_and_never_reaches_the_guest(tmp_path: Path) -> None:
    rec = SessionRecorder(config(tmp_path), T0)
    hello = hello_line("browser", "alice", 132, 40)
    rec.output(b"login: ", T0 + 0.1)  # printed before the hello arrived: kept, with its time
    assert rec.from_client(hello[:5], T0 + 0.2) == b""  # half a hello waits for the rest
    assert rec.from_client(hello[5:] + b"ls /\r", T0 + 0.3) == b"ls /\r"
    rec.output("caf\u00e9".encode()[:4], T0 + 0.5)  # a UTF-8 character split across two reads
    rec.output("caf\u00e9".encode()[4:] + b"\r\n", T0 + 0.6)
    rec.close(T0 + 1)
    head, events = cast(only_cast(tmp_path))
    assert head["version"] == 2 and head["width"] == 132 and head["height"] == 40 and head["timestamp"] == int(T0)
    assert head["env"] == {"TERM": "xterm-256color", "LABKIT_MACHINE": "c1-s1-a", "LABKIT_SOURCE": "browser",
                           "LABKIT_USER": "alice", "LABKIT_READ_ONLY": "0"}
    assert "alice" in str(head["title"])
    assert events == [[0.1, "o", "login: "], [0.3, "i", "ls /\r"], [0.5, "o", "caf"], [0.6, "o", "\u00e9\r\n"]]
    assert only_cast(tmp_path).name.endswith(f"-browser-{os.getpid()}-1.cast")
    assert only_cast(tmp_path).stat().st_mode & 0o777 == 0o600


def test_a_client_without_hello_is_recorded_with_the_defaults(tmp_path: Path) -> None:
    typed = SessionRecorder(config(tmp_path / "typed"), T0)
    assert typed.from_client(b"root\n", T0 + 1) == b"root\n"  # not a hello: passed on at once
    typed.close(T0 + 2)
    head, events = cast(only_cast(tmp_path / "typed"))
    assert (head["width"], head["height"], head["env"]["LABKIT_SOURCE"]) == (80, 24, "unknown")  # type: ignore[index]
    assert events == [[1.0, "i", "root\n"]]

    silent = SessionRecorder(config(tmp_path / "silent"), T0)
    silent.output(b"x", T0 + 0.5)
    silent.tick(T0 + HELLO_WAIT / 2)
    assert silent.pending
    silent.tick(T0 + HELLO_WAIT)
    silent.output(b"y", T0 + 3)
    _, events = cast(only_cast(tmp_path / "silent"))
    assert events == [[0.5, "o", "x"], [3.0, "o", "y"]]


def test_a_recording_stops_at_its_cap_and_says_so(tmp_path: Path) -> None:
    rec = SessionRecorder(config(tmp_path, max_bytes=2048), T0)
    rec.from_client(hello_line("cli", "bob"), T0)
    for n in range(100):
        rec.output(b"0123456789" * 5 + b"\r\n", T0 + n)
    rec.from_client(b"after the cap\n", T0 + 101)
    rec.close(T0 + 102)
    path = only_cast(tmp_path)
    _, events = cast(path)
    assert path.stat().st_size <= 2048
    assert events[-1][1:] == ["m", TRUNCATED] and "size cap" in str(events[-2][2])
    assert not any("after the cap" in str(e[2]) for e in events)
    assert len(events) > 10


def test_no_recording_when_the_cap_is_zero(tmp_path: Path) -> None:
    rec = SessionRecorder(config(tmp_path / "off", max_bytes=0), T0)
    assert rec.from_client(b"ls\n", T0) == b"ls\n"
    rec.close(T0 + 1)
    assert not (tmp_path / "off").exists()


def test_prune_by_age_then_by_size(tmp_path: Path) -> None:
    now = time.time()
    for name, age_days, size in (("old", 40, 10), ("a", 3, 400), ("b", 2, 400), ("c", 1, 400)):
        path = tmp_path / f"{name}.cast"
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    (tmp_path / "notes.txt").write_text("not a recording")
    removed = prune(str(tmp_path), keep_days=30, keep_bytes=900, now=now)
    assert sorted(Path(p).name for p in removed) == ["a.cast", "old.cast"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.cast", "c.cast", "notes.txt"]
    assert prune(str(tmp_path / "missing"), 1, 1) == []


def test_settings_read_the_policy_and_refuse_nonsense(tmp_path: Path) -> None:
    base = {"LABKIT_HOME": str(tmp_path)}
    settings = Settings.from_env({**base, "LABKIT_RECORDING_MAX_MB": "0.5", "LABKIT_RECORDINGS_KEEP_DAYS": "7"})
    assert settings.recording_max_bytes == 1 << 19 and settings.recordings_keep_days == 7
    assert settings.recordings == tmp_path / "recordings"
    with pytest.raises(ConfigError, match="LABKIT_RECORDINGS_KEEP_MB must be a number"):
        Settings.from_env({**base, "LABKIT_RECORDINGS_KEEP_MB": "-3"})


def test_the_supervisor_records_each_client(root: Path) -> None:  # noqa: F811
    backend, spec = stand_in_for(root, STAND_IN)
    folder = root / "recordings" / "m"
    spec = dataclasses.replace(spec, recording=RecordingPolicy(folder, 1 << 20))
    backend.start(spec, timeout=20)
    with connect(backend.console_socket(spec), hello=hello_line("cli", "carol", 100, 30)) as sock:
        sock.sendall(b"hello\n")
        read_until(sock, b"got:hello")
    with connect(backend.console_socket(spec)) as plain:  # an old client: no hello
        plain.sendall(b"exit\n")
        read_until(plain, b"bye")
    wait_state(backend, spec, State.STOPPED)
    files = sorted(folder.glob("*.cast"), key=lambda p: cast(p)[0]["env"]["LABKIT_SOURCE"])  # type: ignore[index]
    assert [p.name.split("-")[1] for p in files] == ["cli", "unknown"]
    head, events = cast(files[0])
    assert (head["width"], head["height"], head["env"]["LABKIT_USER"]) == (100, 30, "carol")  # type: ignore[index]
    assert [e[2] for e in events if e[1] == "i"] == ["hello\n"]
    assert "got:hello" in "".join(str(e[2]) for e in events if e[1] == "o")
    assert "labkit-console" not in spec.console_log.read_text()  # the hello never reached the machine
