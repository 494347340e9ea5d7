"""A lab's guide in steps: the instructions (Markdown) cut at step markers, and the commands it offers to run.

Decision: a step's part of the guide starts at a line ``<!-- step: <id> -->`` (an HTML comment, so GitHub and other
Markdown viewers show nothing) and runs to the next marker; a line ``<!-- steps end -->`` ends the last step, and what
follows is shown after the steps. What comes before the first marker is the introduction, always shown. Markers must
follow the order of ``[[steps]]``, each step exactly once; markers inside fenced code blocks are text.

A fenced code block whose info string holds ``run=<machine>`` (```` ```sh run=a ````) gets a "Run in a" button in
the workspace, besides the copy button every code block has.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from labkit.labs.model import StepDef

STEP_MARKER = re.compile(r"<!--\s*step:\s*(\S*)\s*-->")
END_MARKER = re.compile(r"<!--\s*steps\s+end\s*-->")
_FENCE = re.compile(r"(`{3,}|~{3,})(.*)")
RUN_OPTION = re.compile(r"(?:^|\s)run=(\S*)")


@dataclass(frozen=True)
class GuideStep:
    step: StepDef
    #: this step's Markdown (without its marker)
    text: str


@dataclass(frozen=True)
class Guide:
    """The instructions cut into parts: ``intro``, the ``steps`` in order, and the ``outro`` after the last one."""

    intro: str
    steps: tuple[GuideStep, ...]
    outro: str


@dataclass(frozen=True)
class _Line:
    number: int
    #: "step", "end", "run" or "" (plain text)
    kind: str
    value: str
    text: str


def _scan(text: str) -> list[_Line]:
    """Every line with what it is; markers inside fenced code blocks are plain text."""
    lines: list[_Line] = []
    fence = ""
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        stripped = line.strip()
        opening = _FENCE.fullmatch(stripped)
        if fence:
            if stripped.startswith(fence[0]) and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                fence = ""
            lines.append(_Line(number, "", "", line))
        elif opening:
            fence = opening.group(1)
            run = RUN_OPTION.search(opening.group(2))
            lines.append(_Line(number, "run" if run else "", run.group(1) if run else "", line))
        elif marker := STEP_MARKER.fullmatch(stripped):
            lines.append(_Line(number, "step", marker.group(1), line))
        elif END_MARKER.fullmatch(stripped):
            lines.append(_Line(number, "end", "", line))
        else:
            lines.append(_Line(number, "", "", line))
    return lines


def guide_problems(text: str, steps: Sequence[str], machines: Collection[str]) -> tuple[list[tuple[int, str]],
                                                                                         list[str]]:
    """Problems of the guide's markers, as (line, message), and the ids of ``steps`` (in [[steps]] order) that have
    no marker."""
    problems: list[tuple[int, str]] = []
    order = list(dict.fromkeys(steps))
    seen: list[str] = []
    ended = False
    for line in _scan(text):
        if line.kind == "run" and line.value not in machines:
            problems.append((line.number, f"run={line.value} names no machine of the lab (machines: "
                                          f"{', '.join(sorted(machines))})"))
        elif line.kind == "step":
            if line.value not in order:
                problems.append((line.number, f"step marker for {line.value!r}, which [[steps]] does not define "
                                              f"(steps: {', '.join(order) or 'none'})"))
            elif line.value in seen:
                problems.append((line.number, f"a second marker for step {line.value!r}"))
            elif ended:
                problems.append((line.number, f"step {line.value!r} comes after <!-- steps end -->"))
            else:
                if seen and order.index(line.value) < order.index(seen[-1]):
                    problems.append((line.number, f"step {line.value!r} comes after step {seen[-1]!r} here but "
                                                  "before it in [[steps]]: keep one order"))
                seen.append(line.value)
        elif line.kind == "end":
            if ended or not seen:
                problems.append((line.number, "<!-- steps end --> must come once, after the step markers"))
            ended = True
    return problems, [s for s in order if s not in seen]


def split_guide(text: str, steps: Sequence[StepDef]) -> Guide:
    """Cut the (rendered) instructions at the step markers; a lab without steps is all introduction. Assumes a
    validated lab (`guide_problems` found nothing); unknown markers are dropped, not trusted."""
    by_id = {s.id: s for s in steps}
    intro: list[str] = []
    parts: list[tuple[StepDef, list[str]]] = []
    outro: list[str] = []
    current = intro
    for line in _scan(text):
        if line.kind == "step" and line.value in by_id and steps:
            parts.append((by_id[line.value], []))
            current = parts[-1][1]
        elif line.kind == "end" and steps:
            current = outro
        else:
            current.append(line.text)
    return Guide("".join(intro), tuple(GuideStep(step, "".join(lines)) for step, lines in parts), "".join(outro))
