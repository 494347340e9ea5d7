"""Grading one student: run a lab's checks in dependency order and add up the points.

Pure: no database, no CLI, no booting. The caller opens the Guest handles, renders nothing itself (the template
context is given) and stores the results.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from labkit.grading.checks import make_check
from labkit.grading.result import CheckResult, total
from labkit.labs.model import CheckDef, Lab
from labkit.labs.render import render_check

#: what a visible check says when a hidden check it depends on did not pass (issue 11: hidden checks stay hidden)
HIDDEN_DEPENDENCY = "not checked: it needs an earlier step that did not pass"


def grade(lab: Lab, checks: Sequence[CheckDef] | None, guests: Mapping[str, Any], params: Mapping[str, object],
          context: Mapping[str, object], include_hidden: bool = True) -> list[CheckResult]:
    """Results of ``checks`` (default: all of the lab's) for one student, in the order the checks are given.

    - ``guests`` maps machine names to Guest handles, ``params`` holds the student's parameter values (for script
      checks), ``context`` is the student's template context (`labkit.labs.render.template_context`).
    - Checks run after the checks they depend on. A dependency that is not among ``checks`` (or is hidden and
      ``include_hidden`` is false) still runs, so the dependency is honoured, but is not reported.
    - A check whose dependency did not pass (failed, only partly passed, or was itself skipped) does not run: it is
      reported failed with 0 points, and both its feedback and ``skipped_reason`` say which dependency (its own
      ``feedback_fail`` would describe a check that never ran). A check whose dependency could not be checked
      (`CheckResult.unchecked`) is not checked either. A visible check never names a hidden dependency: it says
      `HIDDEN_DEPENDENCY` (or that an earlier step could not be checked), whatever the hidden check's id or title.
    - A guest that labkit cannot look into (stopped while the check needs it running, never started,
      unreachable) makes the check "not checked" (`CheckResult.unchecked`), never failed.
    - Every problem becomes that check's failed result and the others still run: an unknown machine, a guest that
      does not answer or times out (each check's guest calls share its ``CheckDef.timeout``), a template that does
      not render, a broken grader.py, and (as a last resort) any other exception.
    - ``include_hidden=False`` leaves hidden checks out of the results (the students' self-check).
    """
    by_id = {check.id: check for check in lab.checks}
    wanted = list(checks) if checks is not None else list(lab.checks)
    for check in wanted:
        by_id.setdefault(check.id, check)
    reported = [c for c in wanted if include_hidden or not c.hidden]
    index = {check.id: i for i, check in enumerate(lab.checks)}
    results: dict[str, CheckResult] = {}
    for check in _order(_closure(reported, by_id), by_id):
        results[check.id] = _grade_one(lab, check, index.get(check.id, 0), guests, params, context, results)
    return [results[c.id] for c in reported]


def _closure(checks: Iterable[CheckDef], by_id: Mapping[str, CheckDef]) -> list[CheckDef]:
    """``checks`` and everything they depend on, directly or not (unknown ids are left for `_grade_one`)."""
    seen: dict[str, CheckDef] = {}
    todo = list(checks)
    while todo:
        check = todo.pop()
        if check.id in seen:
            continue
        seen[check.id] = check
        todo += [by_id[dep] for dep in check.depends_on if dep in by_id]
    return list(seen.values())


def _order(checks: Sequence[CheckDef], by_id: Mapping[str, CheckDef]) -> list[CheckDef]:
    """Dependencies first, otherwise in the given order. Checks in a cycle (a lab never has one: validation refuses
    it) come last, and `_grade_one` fails them because their dependencies have no result."""
    done: set[str] = set()
    order: list[CheckDef] = []
    pending = list(checks)
    while pending:
        ready = [c for c in pending if all(d in done or d not in by_id for d in c.depends_on)]
        if not ready:
            return order + pending
        for check in ready:
            order.append(check)
            done.add(check.id)
        pending = [c for c in pending if c.id not in done]
    return order


def _failed(check: CheckDef, feedback: str, evidence: str, skipped: str | None = None) -> CheckResult:
    return CheckResult(check.id, False, 0.0, float(check.points), feedback, evidence, "", 0.0, skipped)


def _grade_one(lab: Lab, check: CheckDef, index: int, guests: Mapping[str, Any], params: Mapping[str, object],
               context: Mapping[str, object], results: Mapping[str, CheckResult]) -> CheckResult:
    hidden = {c.id for c in lab.checks if c.hidden}
    for dep in check.depends_on:
        earlier = results.get(dep)
        if earlier is not None and earlier.unchecked is not None:  # nothing is known: neither is this one
            reason = f"not checked: it needs check {dep!r}, which could not be checked ({earlier.unchecked})"
            if dep in hidden and not check.hidden:  # name neither the hidden check nor its title
                reason = f"not checked: it needs an earlier step that could not be checked ({earlier.unchecked})"
            return CheckResult(check.id, False, 0.0, float(check.points), reason, reason, "", 0.0,
                               unchecked=earlier.unchecked)
        if earlier is None or not earlier.passed:
            why = ("is not a check of this lab" if dep not in {c.id for c in lab.checks} and earlier is None
                   else "has no result (dependency cycle)" if earlier is None else "did not pass")
            reason = f"not checked: it needs check {dep!r}, which {why}"
            if dep in hidden and not check.hidden:  # a student sees this one: name neither the hidden check nor why
                reason = HIDDEN_DEPENDENCY
            return _failed(check, reason, reason, skipped=reason)
    started = time.monotonic()
    try:
        spec = render_check(check, context, index)
        result = make_check(check, lab).run(guests, params, spec)
    except Exception as err:  # the last resort: one broken check never stops the others
        reason = f"this check is broken, tell your instructor: {type(err).__name__}: {err}"
        return CheckResult(check.id, False, 0.0, float(check.points), reason, reason, "",
                           time.monotonic() - started)
    return result


__all__ = ["grade", "total"]
