"""The guide in steps: ``[[steps]]``, ``step = "..."`` on checks, and the ``<!-- step: id -->`` markers in the
instructions; each mistake is one problem with its key (or file and line), and a sound lab splits into its parts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from labkit.errors import LabFormatError
from labkit.labs.guide import split_guide
from labkit.labs.loader import load_lab, validate_lab
from labkit.labs.model import StepDef

MakeLab = Callable[..., Path]
IMAGES = {"tiny": "uml", "tiny:1": "uml"}
REPO = Path(__file__).resolve().parents[3]

STEPS = '''
[[steps]]
id = "serve"
title = "Serve the page"

[[steps]]
id = "fetch"
title = "Fetch it from a"
'''

GUIDE = ("# Two hosts\n\nHello {{ student }}.\n\n<!-- step: serve -->\n## Serve\n\n```sh run=b\nhttpd -p {{ port }}\n"
         "<!-- step: fetch -->\n```\n\n<!-- step: fetch -->\n## Fetch\n\nwget it.\n\n<!-- steps end -->\n## Think\n")


def stepped(make_lab: MakeLab, guide: str = GUIDE, steps: str = STEPS, **replace: str) -> Path:
    pairs = {'id = "b-listens"': 'id = "b-listens"\nstep = "serve"',
             'id = "a-reaches-b"': 'id = "a-reaches-b"\nstep = "fetch"',
             "[[checks]]": steps + "\n[[checks]]"}
    pairs.update(replace)
    return make_lab(files={"instructions.md": guide}, replace=pairs)


def only_problem(folder: Path) -> tuple[str, int | None, str, str]:
    problems = validate_lab(folder, IMAGES)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0].file, problems[0].line, problems[0].key, problems[0].message


def test_a_stepped_lab_loads_and_splits(make_lab: MakeLab) -> None:
    folder = stepped(make_lab)
    lab = load_lab(folder, IMAGES)
    assert [(s.id, s.title) for s in lab.steps] == [("serve", "Serve the page"), ("fetch", "Fetch it from a")]
    assert [c.id for c in lab.step_checks("serve")] == ["b-listens"]
    assert [c.id for c in lab.step_checks("fetch")] == ["a-reaches-b"]
    guide = split_guide(GUIDE, lab.steps)
    assert guide.intro == "# Two hosts\n\nHello {{ student }}.\n\n"
    assert [part.step.id for part in guide.steps] == ["serve", "fetch"]
    # a marker inside a code block is text, not a step
    assert "```sh run=b\nhttpd -p {{ port }}\n<!-- step: fetch -->\n```" in guide.steps[0].text
    assert guide.steps[1].text.startswith("## Fetch")
    assert guide.outro == "## Think\n"


def test_a_guide_without_steps_is_all_introduction() -> None:
    guide = split_guide("# T\n\ntext\n", ())
    assert (guide.intro, guide.steps, guide.outro) == ("# T\n\ntext\n", (), "")


def test_the_shipped_two_hosts_lab_has_steps() -> None:
    lab = load_lab(REPO / "labs" / "two-hosts")
    assert [s.id for s in lab.steps] == ["look-around", "address", "service", "route"]
    assert all(c.step for c in lab.checks)
    assert lab.needs("a") == ["b"] and lab.needs("b") == []


@pytest.mark.parametrize(("replace", "key", "says"), [
    ({'id = "fetch"': 'id = "serve"'}, "steps[1].id", "step id 'serve' is already used by steps[0]"),
    ({'id = "fetch"': 'id = "Fetch It"'}, "steps[1].id", "step id"),
    ({'title = "Fetch it from a"': 'title = "Fetch"\nname = "x"'}, "steps[1].name", "unknown key 'name'"),
    ({'title = "Fetch it from a"': ''}, "steps[1]", "missing required key 'title'"),
    ({'title = "Fetch it from a"': 'title = " "'}, "steps[1].title", "needs a title"),
    ({'step = "fetch"': 'step = "fetching"'}, "checks[1].step", "belongs to step 'fetching', which is not defined"),
    ({'step = "fetch"': "step = 2"}, "checks[1].step", "step must be a string"),
])
def test_bad_step_definitions_get_one_problem_with_their_key(make_lab: MakeLab, replace: dict[str, str], key: str,
                                                             says: str) -> None:
    renamed = 'id = "fetch"' in replace
    guide = GUIDE.replace("<!-- step: fetch -->\n## Fetch", "## Fetch") if renamed else GUIDE
    folder = stepped(make_lab, guide=guide, **replace, **({'step = "fetch"': ""} if renamed else {}))
    _file, line, found_key, message = only_problem(folder)
    assert (found_key, says in message) == (key, True), message
    assert line is not None
    with pytest.raises(LabFormatError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_lab(folder, IMAGES)


def test_steps_must_be_a_list_of_tables(make_lab: MakeLab) -> None:
    folder = make_lab(replace={'title = "Two hosts"': 'title = "Two hosts"\nsteps = ["serve"]'})
    assert only_problem(folder)[2:] == ("steps", "steps must be an array of tables [[steps]]")


@pytest.mark.parametrize(("guide", "line", "says"), [
    (GUIDE.replace("<!-- step: serve -->", "<!-- step: serving -->"), 5, "step marker for 'serving'"),
    (GUIDE.replace("<!-- step: fetch -->\n## Fetch", "<!-- step: serve -->\n## Fetch"), 13,
     "a second marker for step 'serve'"),
    (GUIDE.replace("run=b", "run=c"), 8, "run=c names no machine of the lab"),
    (GUIDE.replace("<!-- steps end -->", "<!-- steps end -->\n<!-- steps end -->"), 19, "must come once"),
])
def test_bad_markers_are_reported_at_their_line(make_lab: MakeLab, guide: str, line: int, says: str) -> None:
    folder = stepped(make_lab, guide=guide)
    problems = validate_lab(folder, IMAGES)
    found = [p for p in problems if p.file == str(folder / "instructions.md") and says in p.message]
    assert found and found[0].line == line, "\n".join(map(str, problems))


def test_a_step_without_its_marker_names_the_step(make_lab: MakeLab) -> None:
    folder = stepped(make_lab, guide=GUIDE.replace("<!-- step: fetch -->\n## Fetch", "## Fetch"))
    _file, _line, key, message = only_problem(folder)
    assert key == "steps[1].id"
    assert "step fetch has no line <!-- step: fetch --> in instructions.md" in message


def test_markers_follow_the_order_of_steps(make_lab: MakeLab) -> None:
    swapped = STEPS.replace('id = "serve"\ntitle = "Serve the page"', 'id = "x"\ntitle = "X"').replace(
        'id = "fetch"\ntitle = "Fetch it from a"', 'id = "serve"\ntitle = "Serve the page"').replace(
        'id = "x"\ntitle = "X"', 'id = "fetch"\ntitle = "Fetch it from a"')
    folder = stepped(make_lab, steps=swapped)
    _file, line, _key, message = only_problem(folder)
    assert line == 13 and "keep one order" in message


def test_a_step_is_a_plain_value() -> None:
    assert StepDef("serve", "Serve").title == "Serve"
    with pytest.raises(LabFormatError, match="needs a title"):
        StepDef("serve", "")
