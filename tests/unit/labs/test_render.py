"""Rendering one student's lab: instructions, machine files (``.j2`` rendered, suffix dropped, others copied as they
are), startup scripts, check options, and the planned network topology; nothing outside the lab is ever read."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from labkit.errors import LabFormatError
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.labs.params import student_params
from labkit.labs.render import (
    render_check,
    render_forwards,
    render_instructions,
    render_machine_files,
    render_startup,
    render_text,
    template_context,
)
from labkit.labs.topology import plan_topology

MakeLab = Callable[..., Path]
SECRET = "a-course-secret-of-some-length"


def context_for(lab: Lab, student: str) -> dict[str, object]:
    params = student_params(lab, "net101", student, SECRET)
    topology = plan_topology(lab, template_context(lab, params, "net101", student))
    return template_context(lab, params, "net101", student, topology)


def test_topology_and_context(make_lab: MakeLab) -> None:
    lab = load_lab(make_lab())
    ctx = context_for(lab, "alice")
    lan = str(ctx["lan"])
    assert ctx["networks"] == {"lan": lan}
    prefix = lan.rsplit(".", 1)[0]
    assert ctx["addresses"] == {"a": {"lan": f"{prefix}.1"}, "b": {"lan": f"{prefix}.2"}}
    assert (ctx["lab"], ctx["course"], ctx["student"]) == ("two-hosts", "net101", "alice")
    assert context_for(lab, "bob")["lan"] != lan


def test_render_machine_files(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = load_lab(make_lab())
    ctx = context_for(lab, "alice")
    out = tmp_path / "out-a"
    written = render_machine_files(lab, "a", ctx, out)
    assert written == [PurePosixPath("etc/motd"), PurePosixPath("usr/local/bin/hello")]
    assert (out / "etc/motd").read_text() == f"Welcome {ctx['user']} ({ctx['color']})\n"
    assert not (out / "etc/motd.j2").exists()
    # not a template: copied byte for byte, braces and all, and still executable
    assert (out / "usr/local/bin/hello").read_text() == "#!/bin/sh\necho '{{ not a template }}'\n"
    assert stat.S_IMODE((out / "usr/local/bin/hello").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "etc/motd").stat().st_mode) == 0o644
    render_machine_files(lab, "b", ctx, tmp_path / "out-b")
    assert (tmp_path / "out-b/var/www/index.html").read_text() == f"<p>{ctx['color']} {ctx['secret']}</p>\n"
    # rendering again gives the same files (re-provisioning)
    render_machine_files(lab, "a", ctx, out)
    assert (out / "etc/motd").read_text() == f"Welcome {ctx['user']} ({ctx['color']})\n"
    assert not [p for p in out.rglob(".render-*")]


def test_two_students_get_different_files(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = load_lab(make_lab())
    render_machine_files(lab, "b", context_for(lab, "alice"), tmp_path / "alice")
    render_machine_files(lab, "b", context_for(lab, "bob"), tmp_path / "bob")
    page = "var/www/index.html"
    assert (tmp_path / "alice" / page).read_text() != (tmp_path / "bob" / page).read_text()


def test_render_instructions_and_startup(make_lab: MakeLab) -> None:
    lab = load_lab(make_lab())
    ctx = context_for(lab, "alice")
    text = render_instructions(lab, ctx)
    assert f"Hello alice. Log in as {ctx['user']}." in text
    assert f"Machine b is at {ctx['addresses']['b']['lan']} on {ctx['lan']}, port {ctx['port']}." in text  # type: ignore[index]
    scripts = render_startup(lab, "a", ctx)
    assert scripts == [
        ("a", f"ip addr add {ctx['addresses']['a']['lan']}/24 dev eth1\n"),  # type: ignore[index]
        ("common", "echo {{ kept as is }}\n"),
    ]


def test_render_checks_and_forwards(make_lab: MakeLab) -> None:
    lab = load_lab(make_lab())
    ctx = context_for(lab, "alice")
    assert render_forwards(lab.machines["b"], ctx) == (22, ctx["port"])
    port_check = render_check(lab.checks[0], ctx, 0)
    assert port_check["port"] == ctx["port"] and isinstance(port_check["port"], int)
    command = render_check(lab.checks[1], ctx, 1)
    b_address = ctx["addresses"]["b"]["lan"]  # type: ignore[index]
    assert command["command"] == f"wget -qO- http://{b_address}:{ctx['port']}/"
    assert command["contains"] == ctx["secret"]
    assert command["feedback_fail"] == f"a cannot fetch http://{b_address}:{ctx['port']}/"
    file_check = render_check(lab.checks[2], ctx, 2)
    assert file_check["path"] == f"/home/{ctx['user']}/secret.txt" and file_check["mode"] == "0600"
    assert render_check(lab.checks[4], ctx, 4)["function"] == "grade_routes"


def test_strict_undefined_and_sandbox() -> None:
    with pytest.raises(LabFormatError, match="'missing' is undefined") as err:
        render_text("line one\n{{ missing }}\n", {}, "t.j2")
    assert (err.value.file, err.value.line) == ("t.j2", 2)
    with pytest.raises(LabFormatError, match="sandbox"):
        render_text("{{ x.__class__.__subclasses__() }}", {"x": 1}, "t.j2")
    with pytest.raises(LabFormatError, match="too large"):
        render_text("{{ 'a' * 10 ** 9 }}", {}, "t.j2")
    assert render_text("{{ net | host(5) }} {{ net | netmask }}", {"net": "10.1.2.0/24"}, "t") == \
        "10.1.2.5 255.255.255.0"


@pytest.mark.parametrize(("source", "says"), [  # a macro's problem is reported at the macro (line 1)
    ("x\n{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
     "template stopped after 1,000,000 loop steps and calls"),
    ("{% set s = 'x' * 1000000 %}\n{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "loop steps"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}\n{{ f(60) }}",
     "template stopped after"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(1) }}", "a macro calls itself too deeply"),
    ("x\n{{ ('x' * 1000000) | replace('x', 'x' * 1000000) }}", "replacing makes the text too large"),
    ("x\n{{ ('x' * 1000000).replace('x', 'x' * 1000000) }}", "replacing makes the text too large"),
    ("x\n{{ 'x'.center(1000000000) }}", "center would make the text too large"),
])
def test_runaway_templates_stop_at_their_line(source: str, says: str) -> None:
    with pytest.raises(LabFormatError, match=says) as err:
        render_text(source, {}, "t.j2")
    assert err.value.line == (1 if source.startswith("{% macro") else 2)


def test_the_budget_leaves_ordinary_templates_alone() -> None:
    source = ("{% for i in range(3) %}{{ i }}{% if loop.last %}!{% endif %}{% else %}none{% endfor %} "
              "{% for x in [] %}{{ x }}{% else %}empty{% endfor %} {{ 'a-b' | replace('-', '+') }} "
              "{{ 'ab'.replace('a', 'c') }} {% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %} "
              "{% for x in [[1, [2]], 3] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}"
              "{% endfor %} {% for i in range(1000) %}{% for j in range(500) %}{% endfor %}{% endfor %}done")
    assert render_text(source, {}, "t.j2") == "012! empty a+b cb a=1 123 done"


def test_render_refuses_symlinks_out(make_lab: MakeLab, tmp_path: Path) -> None:
    folder = make_lab()
    lab = load_lab(folder)
    ctx = context_for(lab, "alice")
    secret = tmp_path / "host-secret"
    secret.write_text("do not copy\n")
    os.symlink(secret, folder / "files/a/etc/leak")  # added after validation: rendering still refuses it
    with pytest.raises(LabFormatError, match="points outside the lab folder"):
        render_machine_files(lab, "a", ctx, tmp_path / "out")
    assert not (tmp_path / "out/etc/leak").exists()


def test_render_does_not_write_through_target_symlinks(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = load_lab(make_lab())
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "usr")  # files/a/usr/local/bin/hello would go through it
    with pytest.raises(LabFormatError, match="symlink"):
        render_machine_files(lab, "a", context_for(lab, "alice"), out)
    assert list(victim.iterdir()) == []


def test_plan_topology_raises_with_every_problem(make_lab: MakeLab) -> None:
    lab = load_lab(make_lab())
    bad = {**context_for(lab, "alice"), "lan": "10.0.0.0/8"}
    with pytest.raises(LabFormatError, match=r"overlaps 10\.0\.2\.0/24"):
        plan_topology(lab, bad)


def test_startup_script_names_are_those_the_seed_takes(make_lab: MakeLab) -> None:
    """``startup/a.sh.j2`` (as lab-format.md shows it) provisions as the seed's ``a``: the seed adds ``.sh`` itself."""
    from labkit.images.seed import SeedSpec

    lab = load_lab(make_lab())
    scripts = render_startup(lab, "a", context_for(lab, "alice"))
    SeedSpec(hostname="a", startup_scripts=scripts).validate()
