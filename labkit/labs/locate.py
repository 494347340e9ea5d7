"""Find the line of a key in TOML text, because tomllib gives values but no positions.

A small scanner, not a parser: it follows table headers (``[a.b]``, ``[[checks]]`` with a counter per array), dotted and
quoted keys, and skips strings, comments and multi-line values. A key it cannot see (inside an inline table) falls back
to the nearest enclosing key it did see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def format_key(path: Sequence[str | int]) -> str:
    """``("checks", 2, "regex")`` -> ``checks[2].regex``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _split_key(text: str) -> tuple[list[str], str] | None:
    """Parse a (dotted, maybe quoted) key at the start of ``text``; return its parts and the rest of the text."""
    parts: list[str] = []
    rest = text.lstrip()
    while True:
        if rest[:1] in ('"', "'"):
            quote = rest[0]
            end = rest.find(quote, 1)
            if end < 0:
                return None
            parts.append(rest[1:end])
            rest = rest[end + 1:].lstrip()
        else:
            match = _BARE.match(rest)
            if not match:
                return None
            parts.append(match.group())
            rest = rest[match.end():].lstrip()
        if not rest.startswith("."):
            return parts, rest
        rest = rest[1:].lstrip()


class KeyLocator:
    """Line numbers (1-based) of the keys and table headers in one TOML text."""

    def __init__(self, text: str) -> None:
        self.lines: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}
        self._scan(text)

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest enclosing key; None when not even the first part was seen."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return None

    def _resolve(self, parts: list[str]) -> KeyPath:
        """Insert the current index after every array-of-tables prefix (``checks`` -> ``checks[3]``)."""
        out: list[str | int] = []
        for part in parts:
            out.append(part)
            if tuple(out) in self._arrays:
                out.append(self._arrays[tuple(out)])
        return tuple(out)

    def _record(self, path: KeyPath, number: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], number)

    def _scan(self, text: str) -> None:
        table: KeyPath = ()
        depth = 0  # open [ and { of a value spanning lines
        string: str | None = None  # the delimiter of an open multi-line string
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw
            if string is None and depth == 0:
                stripped = line.strip()
                if stripped.startswith("[["):
                    parsed = _split_key(stripped[2:])
                    if parsed:
                        base = (*self._resolve(parsed[0][:-1]), parsed[0][-1])
                        self._arrays[base] = self._arrays.get(base, -1) + 1
                        table = (*base, self._arrays[base])
                        self._record(table, number)
                    continue
                if stripped.startswith("["):
                    parsed = _split_key(stripped[1:])
                    if parsed:
                        table = self._resolve(parsed[0])
                        self._record(table, number)
                    continue
                parsed = _split_key(stripped)
                if parsed and parsed[1].startswith("="):
                    self._record(table + tuple(parsed[0]), number)
                    line = parsed[1][1:]
                else:
                    line = stripped
            depth, string = _scan_value(line, depth, string)


def _scan_value(text: str, depth: int, string: str | None) -> tuple[int, str | None]:
    """Follow brackets and strings through one line of a value; return the open depth and open multi-line string."""
    i = 0
    while i < len(text):
        if string is not None:
            end = text.find(string, i)
            if string == '"""':
                while end > 0 and _escaped(text, end):
                    end = text.find(string, end + 1)
            if end < 0:
                return depth, string
            i, string = end + 3, None
            continue
        char = text[i]
        if text.startswith(('"""', "'''"), i):
            string, i = text[i:i + 3], i + 3
        elif char in "\"'":
            end = i + 1
            while end < len(text) and (text[end] != char or (char == '"' and _escaped(text, end))):
                end += 1
            i = end + 1
        elif char == "#":
            break
        else:
            depth += char in "[{"
            depth -= char in "]}"
            i += 1
    return max(depth, 0), string


def _escaped(text: str, pos: int) -> bool:
    backslashes = 0
    while pos - backslashes - 1 >= 0 and text[pos - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1
