"""Docs are run: every ```sh block of README.md, docs/instructor-guide.md and docs/student-guide.md works as written.

Each file runs in a scratch installation of its own (LABKIT_HOME and HOME in a temporary folder, the shared test
build cache), in one bash process, block after block in the order of the file, so a block sees what the blocks above
it made (variables, `. .venv/bin/activate`, files such as roster.csv), as a reader typing them would. The folder the
blocks run in holds links to the checkout's `labs/`, `base_images/` and `.venv/`, so paths like `labs/two-hosts` work
and files the blocks write stay out of the checkout. The first command that fails stops the file; the failure names the
block (file and line) and shows its output.

A doc steers this with HTML comments (invisible on the rendered page) between two blocks, see docs/architecture.md
("Docs are run"):

- ``<!-- docs-run: skip (REASON) -->``: the next block is not run (it needs a terminal or serves forever);
- ``<!-- docs-run: run: COMMANDS -->``: COMMANDS run at that point (what a skipped block would have left behind);
- ``<!-- docs-run: stdin "LINE" ... -->``: the next block reads these lines on its standard input (asked passwords).

Every other block reads an empty standard input, so a command that would wait for a person fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, make_settings, make_short_dir, settings_env

from labkit.config import Settings
from labkit.services.db import Database
from labkit.services.machines import Machines

DOCS = ["README.md", "docs/instructor-guide.md", "docs/student-guide.md"]
MARKER = re.compile(r"<!--\s*docs-run:\s*(?P<body>.*?)\s*-->", re.DOTALL)
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")
BLOCK_MARK = "@@docs-run block"


@dataclass
class Block:
    """One ```sh block and what the comments above it ask for."""

    file: str
    line: int  # of the opening fence
    text: str
    skip: str | None = None  # the reason
    before: list[str] = field(default_factory=list)  # commands of `run:` markers, in order
    stdin: list[str] = field(default_factory=list)


class DocsRunError(ValueError):
    """A docs-run marker is malformed or stands where it cannot apply."""


def parse(path: Path, name: str) -> list[Block]:
    """The ```sh blocks of ``path`` with their markers; a wrong marker is an error (it would silently do nothing)."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    pending = Block(name, 0, "")
    text_since = ""
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            text_since += lines[i] + "\n"
            i += 1
            continue
        start, indent, lang = i, len(fence.group("indent")), fence.group("lang")
        body: list[str] = []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            line = lines[i]
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())  # a list item's indent
            i += 1
        i += 1  # the closing fence
        for marker in MARKER.finditer(text_since):
            apply_marker(pending, marker.group("body"), f"{name}:{start + 1}")
        text_since = ""
        if lang == "sh":
            pending.line, pending.text = start + 1, "\n".join(body) + "\n"
            blocks.append(pending)
        elif pending.skip or pending.before or pending.stdin:
            raise DocsRunError(f"{name}:{start + 1}: docs-run markers stand before a ```{lang} block, not ```sh")
        pending = Block(name, 0, "")
    if MARKER.search(text_since):
        raise DocsRunError(f"{name}: a docs-run marker after the last block applies to nothing")
    return blocks


def apply_marker(block: Block, body: str, where: str) -> None:
    if body.startswith("skip"):
        reason = re.fullmatch(r"skip\s*\((?P<reason>[^)]+)\)", body)
        if not reason:
            raise DocsRunError(f"{where}: a skip needs its reason: <!-- docs-run: skip (why) -->")
        block.skip = reason.group("reason")
    elif body.startswith("run:"):
        commands = body.removeprefix("run:").strip()
        if not commands:
            raise DocsRunError(f"{where}: <!-- docs-run: run: ... --> names no command")
        block.before.append(commands)
    elif body.startswith("stdin"):
        block.stdin += shlex.split(body.removeprefix("stdin"))
    else:
        raise DocsRunError(f"{where}: unknown docs-run marker {body!r} (skip (why), run: COMMANDS, stdin \"LINE\")")


def script(blocks: list[Block], inputs: Path) -> str:
    """One bash script for a file: every block in braces (same shell), announced on stdout, with its own stdin."""
    parts = ["set -euo pipefail"]
    for number, block in enumerate(blocks):
        for commands in block.before:
            parts.append(f"echo {shlex.quote(f'{BLOCK_MARK} {block.file}:{block.line} (run: marker)')}")
            parts.append(commands)
        if block.skip:
            continue
        source = "/dev/null"
        if block.stdin:
            source = str(inputs / f"{number}.txt")
            Path(source).write_text("".join(f"{line}\n" for line in block.stdin))
        parts.append(f"echo {shlex.quote(f'{BLOCK_MARK} {block.file}:{block.line}')}")
        parts.append("{\n" + block.text + f"}} < {shlex.quote(source)}")
    parts.append(f"echo {shlex.quote(f'{BLOCK_MARK} end')}")
    return "\n".join(parts) + "\n"


@dataclass
class Scratch:
    folder: Path  # where the blocks run
    settings: Settings
    env: dict[str, str]


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    root = make_short_dir("lkd")
    settings = make_settings(root / "home")
    folder = root / "work"
    folder.mkdir()
    for name in ("labs", "base_images", ".venv"):
        (folder / name).symlink_to(REPO / name)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **settings_env(settings), "HOME": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "LABKIT_ACTOR": "docs-run"}
    env.pop("VIRTUAL_ENV", None)
    try:
        yield Scratch(folder, settings, env)
    finally:
        stop_everything(settings)
        left = end_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)
    if left:  # a labkit command left a helper behind (issue 11, section 2: a grading path's switch)
        warnings.warn(f"processes of the scratch installation were still running and were ended: {left}",
                      stacklevel=1)


def stop_everything(settings: Settings) -> None:
    """Every machine the blocks left running, stopped through the service (by its recorded PIDs)."""
    db = Database(settings)
    try:
        machines = Machines(settings, db, actor="docs-run")
        for view in machines.status():
            if view.state != "stopped":
                machines.kill(view.name)
    finally:
        db.close()


def end_leftovers(root: Path) -> list[str]:
    """SIGKILL, by PID, every process whose command line names the scratch folder; their command lines."""
    mark = os.fsencode(str(root)) + b"/"  # this folder only, not another one whose name begins alike
    left = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if mark in argv and int(entry.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                left.append(argv.replace(b"\0", b" ").decode(errors="replace").strip())
    return left


# ---- the markers and blocks (fast: no guests) -----------------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS)
def test_every_doc_parses_and_skips_are_rare_and_justified(doc: str) -> None:
    blocks = parse(REPO / doc, doc)
    assert blocks, f"{doc} has no ```sh block"
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) <= max(1, len(blocks) // 4), f"{doc} skips {len(skipped)} of {len(blocks)} blocks"
    for block in skipped:
        assert len(block.skip or "") >= 10, f"{doc}:{block.line}: say why the block is skipped"


def test_markers_are_checked(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- docs-run: skip -->\n```sh\nls\n```\n")
    with pytest.raises(DocsRunError, match=r"doc\.md:2: a skip needs its reason"):
        parse(doc, "doc.md")
    doc.write_text("<!-- docs-run: sikp (typo) -->\n```sh\nls\n```\n")
    with pytest.raises(DocsRunError, match="unknown docs-run marker"):
        parse(doc, "doc.md")
    doc.write_text("<!-- docs-run: skip (a reason) -->\n```toml\nx = 1\n```\n")
    with pytest.raises(DocsRunError, match="not ```sh"):
        parse(doc, "doc.md")
    doc.write_text("text\n<!-- docs-run: run: echo set up -->\n<!-- docs-run: stdin \"pass word\" 'again' -->\n"
                   "```sh\n  cat\n```\n- item:\n  ```sh\n  echo indented\n  ```\n")
    first, second = parse(doc, "doc.md")
    assert (first.line, first.text, first.before, first.stdin, first.skip) == (
        4, "  cat\n", ["echo set up"], ["pass word", "again"], None)
    assert (second.line, second.text) == (8, "echo indented\n")


# ---- the blocks themselves (real guests) ---------------------------------------------------------------------

@pytest.mark.guest
@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("doc", DOCS)
def test_the_commands_of_the_doc_work(doc: str, scratch: Scratch, tmp_path: Path) -> None:
    blocks = parse(REPO / doc, doc)
    (tmp_path / "inputs").mkdir()
    run_file = tmp_path / "blocks.sh"
    run_file.write_text(script(blocks, tmp_path / "inputs"))
    process = subprocess.Popen(["bash", str(run_file)], cwd=scratch.folder, env=scratch.env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=1400)
    finally:
        if process.poll() is None:  # a block hung: end the shell and what it started, by its own process group
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    print(output)  # shown with -s, or when the test fails
    if process.returncode != 0:
        last = [line for line in output.splitlines() if line.startswith(BLOCK_MARK)][-1:]
        where = last[0].removeprefix(BLOCK_MARK).strip() if last else "before the first block"
        block = next((b for b in blocks if f"{b.file}:{b.line}" == where), None)
        shown = output.split(last[0], 1)[-1] if last else output
        pytest.fail(f"the block at {where} failed (exit {process.returncode}):\n"
                    f"{block.text if block else ''}--- its output:\n{shown[-4000:]}", pytrace=False)
    assert output.rstrip().endswith(f"{BLOCK_MARK} end")
