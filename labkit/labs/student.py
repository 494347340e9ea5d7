"""One student's copy of a lab: their parameter values, their network plan, the template context, and the solution.

Provisioning, grading, previews and ``labkit lab test`` all need the same three steps (values, topology, context); they
live here so each of them derives a student's lab the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.errors import LabFormatError
from labkit.labs.model import Lab
from labkit.labs.params import student_params
from labkit.labs.render import TEMPLATE_SUFFIX, lab_path, render_text, template_context
from labkit.labs.topology import Topology, plan_topology

#: where a lab keeps the scripts that solve it (one per machine, ``.j2`` ones rendered per student)
SOLUTION_FOLDER = "solution"


@dataclass(frozen=True)
class StudentLab:
    """What one student of one course gets from a lab."""

    lab: Lab
    student: str
    params: dict[str, object]
    topology: Topology
    context: dict[str, object]


def for_student(lab: Lab, course: str, student: str, secret: bytes | str) -> StudentLab:
    """The same inputs always give the same values (parameters derive from the course secret)."""
    params = student_params(lab, course, student, secret)
    topology = plan_topology(lab, template_context(lab, params, course, student))
    return StudentLab(lab, student, params, topology, template_context(lab, params, course, student, topology))


def render_solutions(lab: Lab, context: dict[str, object]) -> list[tuple[str, str, bool]]:
    """The lab's ``solution/`` scripts for one student as (name, text, executable): ``.j2`` files rendered (suffix
    dropped), others as they are. An absent folder gives an empty list."""
    assert lab.folder is not None
    folder, why = lab_path(lab.folder, SOLUTION_FOLDER)
    if folder is None:
        raise LabFormatError(why or "bad solution folder", str(lab.folder / SOLUTION_FOLDER))
    if not folder.is_dir():
        return []
    scripts = []
    for path in sorted(folder.iterdir()):
        rel = f"{SOLUTION_FOLDER}/{path.name}"
        real, why = lab_path(lab.folder, rel)
        if real is None or not real.is_file():
            raise LabFormatError(why or f"{rel} is not a file", str(lab.folder / rel))
        text = real.read_text(encoding="utf-8")
        name = path.name
        if name.endswith(TEMPLATE_SUFFIX):
            text, name = render_text(text, context, rel, str(lab.folder / rel)), name[: -len(TEMPLATE_SUFFIX)]
        scripts.append((name, text, bool(real.stat().st_mode & 0o111) or name.endswith(".sh")))
    return scripts
