"""lab.toml validation: the valid sample lab loads, and every kind of mistake is reported with its file and line."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from labkit.errors import LabFormatError
from labkit.labs.loader import LabProblem, load_lab, validate_lab
from labkit.labs.locate import KeyLocator
from labkit.runtime import BACKENDS
from labkit.runtime.base import Capabilities
from labkit.runtime.uml.backend import UmlBackend

MakeLab = Callable[..., Path]
IMAGES = {"tiny": "uml", "tiny:1": "uml", "debian-bookworm": "uml"}


def line_of(toml: str, text: str) -> int:
    """The 1-based line of the last line holding ``text``."""
    return max(i for i, line in enumerate(toml.splitlines(), start=1) if text in line)


def problems_of(lab: Path, images: Mapping[str, str] | None = IMAGES) -> list[LabProblem]:
    return validate_lab(lab, images)


def test_valid_lab_loads(make_lab: MakeLab) -> None:
    folder = make_lab()
    assert validate_lab(folder, IMAGES) == []
    lab = load_lab(folder / "lab.toml")
    assert (lab.id, lab.title, lab.version, lab.reset_policy) == ("two-hosts", "Two hosts", 2, "each-session")
    assert set(lab.machines) == {"a", "b"}
    a, b = lab.machines["a"], lab.machines["b"]
    assert (a.image.name, a.image.version, a.memory, a.files) == ("tiny", None, 64, "files/a")
    assert (b.image.name, b.image.version, b.memory) == ("tiny", 1, 128)
    assert b.forwards == (22, "{{ port }}")
    assert dict(a.networks) == {"lan": 1}
    assert lab.start_order() == [["b"], ["a"]]
    assert [c.id for c in lab.checks] == ["b-listens", "a-reaches-b", "secret-file", "http-page", "routes"]
    routes = lab.checks[4]
    assert (routes.kind, routes.machine, routes.points, routes.timeout) == ("script", None, 3.5, 30)
    assert lab.checks[2].hidden and lab.checks[2].title == "secret-file"
    assert lab.checks[1].depends_on == ("b-listens",)
    assert dict(lab.checks[2].options) == {"path": "/home/{{ user }}/secret.txt", "regex": "^{{ secret }}$",
                                           "mode": "0600"}
    assert set(lab.params) == {"lan", "port", "user", "secret", "color", "pw"}
    assert lab.params["port"].kind == "int" and dict(lab.params["port"].options) == {"min": 8000, "max": 8999}


def test_minimal_lab_uses_defaults(make_lab: MakeLab) -> None:
    folder = make_lab(toml='id = "solo"\ntitle = "Solo"\n[machines.m]\nimage = "tiny"\n'
                           '[[checks]]\nid = "c"\nkind = "command"\ncommand = "true"\n',
                      files={"grader.py": None, "instructions.md": "Hello {{ student }}\n", "startup/a.sh.j2": None,
                             "files/a/etc/motd.j2": None, "files/a/usr/local/bin/hello": None,
                             "files/b/var/www/index.html.j2": None})
    lab = load_lab(folder)
    assert (lab.version, lab.instructions, lab.reset_policy) == (1, "instructions.md", "persist")
    assert lab.checks[0].machine == "m"  # the only machine is the default
    assert (lab.checks[0].points, lab.checks[0].hidden, lab.checks[0].baseline_pass) == (1, False, False)


# Each case: a replacement in the valid lab.toml, the text on the line the problem must point to (None: no line
# check), the key path and a piece of the message.
TOML_CASES = [
    ({"memory = 64": 'memory = "lots"'}, 'memory = "lots"', "machines.a.memory", "must be an integer"),
    ({"memory = 64": "memroy = 64"}, "memroy", "machines.a.memroy", "unknown key 'memroy'"),
    ({'title = "Two hosts"': 'title = "Two hosts"\ncolour = 1'}, "colour", "colour", "unknown key"),
    ({"hidden = true": 'hidden = "yes"'}, 'hidden = "yes"', "checks[2].hidden", "true or false"),
    ({"points = 2": "points = 0"}, "points = 0", "checks[0].points", "more than 0"),
    ({"points = 3.5": "points = -1"}, "points = -1", "checks[4].points", "more than 0"),
    ({'kind = "port"': 'kind = "ping"'}, 'kind = "ping"', "checks[0].kind", "unknown check kind 'ping'"),
    ({'regex = "^{{ secret }}$"': 'regex = "(["'}, 'regex = "(["', "checks[2].regex", "bad regular expression"),
    ({'regex = "^{{ secret }}$"': 'regex = "{{ secret }}(["'}, "regex =", "checks[2].regex", "bad regular expression"),
    ({'mode = "0600"': 'mode = "rw-r"'}, "mode =", "checks[2].mode", "octal file mode"),
    ({'via = "host"': 'via = "moon"'}, "via =", "checks[3].via", "one of guest, host"),
    ({"status = 200": "status = 200\ncolor = 3"}, "color = 3", "checks[3].color", "unknown option 'color'"),
    ({'path = "/home/{{ user }}/secret.txt"': ""}, None, "checks[2].path", "needs 'path'"),
    ({'machine = "a"': 'machine = "c"'}, 'machine = "c"', "checks[1].machine", "machine 'c', which is not defined"),
    ({'machine = "a"\n': ""}, None, "checks[1].machine", "needs a machine"),
    ({'depends_on = ["b-listens"]': 'depends_on = ["nope"]'}, 'depends_on = ["nope"]', "checks[1].depends_on",
     "unknown check 'nope'"),
    ({'depends_on = ["b-listens"]': 'depends_on = ["http-page"]', "status = 200": 'status = 200\n'
      'depends_on = ["a-reaches-b"]'}, 'depends_on = ["http-page"]', "checks[1].depends_on", "cycle"),
    ({'id = "b-listens"': 'id = "routes"', 'depends_on = ["b-listens"]': ""}, 'id = "routes"',
     "checks[4].id", "already used by checks[0]"),
    ({'id = "routes"': 'id = "Bad Id"'}, 'id = "Bad Id"', "checks[4].id", "check id 'Bad Id'"),
    ({'function = "grade_routes"': 'function = "grade_other"'}, "function =", "checks[4].function",
     "no top-level function 'grade_other'"),
    ({'function = "grade_routes"': 'function = "not valid"'}, "function =", "checks[4].function", "function name"),
    ({"timeout = 30": "timeout = 0"}, "timeout = 0", "checks[4].timeout", "timeout"),
    ({"[machines.b]": "[machines.B]"}, "[machines.B]", "machines.B", "machine name 'B'"),
    ({'id = "two-hosts"': 'id = "Two Hosts"'}, 'id = "Two Hosts"', "id", "lab id"),
    ({'reset_policy = "each-session"': 'reset_policy = "never"'}, "reset_policy", "reset_policy", "each-session"),
    ({"version = 2": "version = 0"}, "version = 0", "version", "1 or more"),
    ({'image = "tiny"': 'image = "tiny:latest"'}, 'image = "tiny:latest"', "machines.a.image", "NAME:VERSION"),
    ({'image = "tiny"': 'image = "Tiny"'}, 'image = "Tiny"', "machines.a.image", "image name 'Tiny'"),
    ({"memory = 64": "memory = 8"}, "memory = 8", "machines.a.memory", "between 16"),
    ({"forwards = [22]": "forwards = [22, 22]"}, "forwards = [22, 22]", "machines.a.forwards", "forwarded twice"),
    ({"forwards = [22]": "forwards = [70000]"}, "forwards = [70000]", "machines.a.forwards", "between 1 and 65535"),
    ({"forwards = [22]": 'forwards = ["{{ user }}"]'}, "{{ user }}\"]", "machines.a.forwards", "not a port number"),
    ({'depends_on = ["b"]': 'depends_on = ["c"]'}, 'depends_on = ["c"]', "machines.a.depends_on",
     "machine 'c' is not defined"),
    ({'depends_on = ["b"]': 'depends_on = ["a"]'}, 'depends_on = ["a"]', "machines.a.depends_on", "itself"),
    ({'networks = { lan = "{{ lan | host(2) }}" }': 'networks = { lan = 2 }\ndepends_on = ["a"]'},
     'depends_on = ["b"]', "machines.a.depends_on", "cycle: a -> b -> a"),
    ({"networks = { lan = 1 }": "networks = { wan = 1 }"}, "networks = { wan = 1 }", "machines.a.networks.wan",
     "network 'wan' is not defined"),
    ({"networks = { lan = 1 }": 'networks = { lan = "10.0.0.1/24" }'}, "10.0.0.1/24", "machines.a.networks.lan",
     "without a /prefix"),
    ({"networks = { lan = 1 }": "networks = { lan = true }"}, "lan = true", "machines.a.networks.lan",
     "host number or an address"),
    ({'kind = "word"': 'kind = "animal"'}, 'kind = "animal"', "params.user.kind", "unknown generator kind"),
    ({"max = 8999": "max = 7000"}, "max = 7000", "params.port.max", "smaller than min"),
    ({"digits = 2": 'digits = "two"'}, 'digits = "two"', "params.user.digits", "must be an integer"),
    ({"digits = 2": "letters = 2"}, "letters = 2", "params.user.letters", "unknown option 'letters'"),
    ({'choices = ["red", "green", "blue"]': "choices = []"}, "choices = []", "params.color.choices", "empty"),
    ({"prefix = 24": "prefix = 8"}, "prefix = 8", "params.lan.prefix", "longer than /16"),
    ({'subnet = "10.100.0.0/16"': 'subnet = "10.100.0.0/33"'}, 'subnet = "10.100.0.0/33"', "params.lan.subnet",
     "not an IPv4 network"),
    ({"[params.pw]": "[params.student]"}, "[params.student]", "params.student", "reserved"),
    ({"[params.pw]": "[params.Pw-2]"}, "[params.Pw-2]", "params.Pw-2", "template variable"),
    ({"[params.pw]": "[params.pw]\nlength = 2"}, "length = 2", "params.pw.length", "between 6 and 128"),
    ({"[params.pw]": "[reach]\nhost_ports = [3142, 70000]\n[params.pw]"}, "70000", "reach.host_ports",
     "host port 70000 is not a port number between 1 and 65535"),
    ({"[params.pw]": "[reach]\nhost_ports = [3142, 3142]\n[params.pw]"}, "3142, 3142", "reach.host_ports",
     "host port 3142 is listed twice"),
    ({"[params.pw]": '[reach]\nhost_ports = ["{{ port }}"]\n[params.pw]'}, "host_ports", "reach.host_ports",
     "must be a list of port numbers"),
    ({"[params.pw]": '[reach]\noutbound = "off"\n[params.pw]'}, "outbound", "reach.outbound", "true or false"),
    ({"[params.pw]": "[reach]\nhost_port = [3142]\n[params.pw]"}, "host_port =", "reach.host_port",
     "unknown key 'host_port'; allowed here: host_ports, outbound"),
    ({'title = "Two hosts"': 'title = "Two hosts"\nreach = 3142'}, "reach = 3142", "reach", "must be a table"),
    ({"memory = 64": "memory = 64\nhost_ports = [0]"}, "host_ports = [0]", "machines.a.host_ports",
     "host port 0 is not a port number"),
    ({"memory = 64": "memory = 64\noutbound = 0"}, "outbound = 0", "machines.a.outbound", "true or false"),
]


@pytest.mark.parametrize(("replace", "line_text", "key", "says"), TOML_CASES,
                         ids=[case[2] + ":" + case[3][:20] for case in TOML_CASES])
def test_lab_toml_problem(make_lab: MakeLab, replace: dict[str, str], line_text: str | None, key: str,
                          says: str) -> None:
    folder = make_lab(replace=replace)
    toml = (folder / "lab.toml").read_text()
    problems = problems_of(folder)
    matching = [p for p in problems if p.key == key and says in p.message]
    assert matching, f"no problem at {key} saying {says!r}; got:\n" + "\n".join(map(str, problems))
    problem = matching[0]
    assert problem.file == str(folder / "lab.toml")
    if line_text is not None:
        assert problem.line == line_of(toml, line_text), str(problem)
    with pytest.raises(LabFormatError, match="problem"):
        load_lab(folder, IMAGES)


def test_reach_defaults_and_per_machine_settings(make_lab: MakeLab) -> None:
    lab = load_lab(make_lab(), IMAGES)
    # by default a guest reaches no host port, and has outbound traffic
    assert (lab.host_ports, lab.outbound) == ((), True)
    assert lab.reach("a") == ((), True)
    folder = make_lab(replace={"memory = 64": "memory = 64\nhost_ports = [8080]\noutbound = true",
                               "[params.pw]": "[reach]\nhost_ports = [3142, 80]\noutbound = false\n[params.pw]"})
    lab = load_lab(folder, IMAGES)
    assert lab.reach("a") == ((80, 3142, 8080), True)  # the lab's ports and its own; its own outbound setting
    assert lab.reach("b") == ((80, 3142), False)


def test_malformed_toml_gives_line(make_lab: MakeLab) -> None:
    folder = make_lab(replace={"version = 2": "version = 2\n[broken"})
    [problem] = problems_of(folder)
    assert problem.line == 4 and "malformed TOML" in problem.message
    with pytest.raises(LabFormatError) as err:
        load_lab(folder)
    assert (err.value.file, err.value.line) == (str(folder / "lab.toml"), 4)


def test_duplicate_table_is_malformed_toml(make_lab: MakeLab) -> None:
    folder = make_lab(replace={"[networks.lan]": '[machines.a]\nimage = "tiny"\n\n[networks.lan]'})
    [problem] = problems_of(folder)
    assert "malformed TOML" in problem.message and problem.line is not None


def test_not_utf8_and_missing_file(make_lab: MakeLab, tmp_path: Path) -> None:
    folder = make_lab()
    (folder / "lab.toml").write_bytes(b'id = "\xff"\n')
    assert "not UTF-8" in problems_of(folder)[0].message
    assert "cannot read" in problems_of(tmp_path / "nowhere")[0].message


def test_missing_images(make_lab: MakeLab) -> None:
    folder = make_lab()
    problems = problems_of(folder, {"debian-bookworm": "uml"})
    assert {p.key for p in problems} == {"machines.a.image", "machines.b.image"}
    # a pinned version needs that version; a bare name is happy with any
    problems = problems_of(folder, {"tiny:2": "uml"})
    assert [p.key for p in problems] == ["machines.b.image"] and "tiny:1" in problems[0].message
    assert problems_of(folder, None) == []


def test_wrong_top_level_types(make_lab: MakeLab) -> None:
    folder = make_lab(toml='id = 3\ntitle = "x"\nmachines = 5\ncheck = []\n')
    keys = {(p.key, p.line) for p in problems_of(folder)}
    assert ("id", 1) in keys and ("machines", 3) in keys and ("check", 4) in keys


@pytest.mark.parametrize(
    ("replace", "key", "says"),
    [
        ({'instructions = "instructions.md"': 'instructions = "../other.md"'}, "instructions", "'..'"),
        ({'instructions = "instructions.md"': 'instructions = "/etc/passwd"'}, "instructions", "relative"),
        ({'instructions = "instructions.md"': 'instructions = "missing.md"'}, "instructions", "missing"),
        ({"memory = 64": 'files = "../elsewhere"'}, "machines.a.files", "'..'"),
        ({"memory = 64": 'files = "/tmp"'}, "machines.a.files", "relative"),
        ({"memory = 64": 'files = "files/nothing"'}, "machines.a.files", "missing"),
        ({'"startup/common.sh"': '"startup/../../x.sh"'}, "machines.a.startup", "'..'"),
        ({'"startup/common.sh"': '"startup/gone.sh"'}, "machines.a.startup", "missing"),
    ],
)
def test_paths_escaping_or_missing(make_lab: MakeLab, replace: dict[str, str], key: str, says: str) -> None:
    folder = make_lab(replace=replace)
    problems = problems_of(folder)
    assert any(p.key == key and says in p.message and p.line for p in problems), problems


@pytest.mark.parametrize(
    ("replace", "says"),
    [
        ({'"startup/common.sh"': '"startup/Common_1.sh"'}, "lower-case"),
        ({'"startup/common.sh"': '"startup/a.sh"'}, "would both be 'a'"),
    ],
)
def test_startup_names_the_guest_cannot_take(make_lab: MakeLab, replace: dict[str, str], says: str) -> None:
    """Found by ``lab validate``, not first at provisioning (the seed names each script after its file)."""
    problems = problems_of(make_lab(replace=replace))
    assert any(p.key == "machines.a.startup" and says in p.message for p in problems), problems


def test_symlinks_out_of_the_lab_are_refused(make_lab: MakeLab, tmp_path: Path, valid_toml: str) -> None:
    folder = make_lab()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    os.symlink(outside / "secret", folder / "files/a/etc/stolen")
    os.symlink(outside, folder / "files/b/hostdir")
    os.symlink(folder / "instructions.md", folder / "files/a/etc/inside")  # inside the lab: fine
    os.symlink(outside / "secret", folder / "linked.md")
    os.symlink("/nonexistent/target", folder / "files/a/etc/dangling")
    (folder / "lab.toml").write_text(valid_toml.replace('"instructions.md"', '"linked.md"'))
    problems = problems_of(folder)
    text = "\n".join(map(str, problems))
    assert f"{folder}/files/a/etc/stolen: symlink files/a/etc/stolen points outside the lab folder" in text
    assert "files/b/hostdir points outside the lab folder" in text
    assert "files/a/etc/dangling is broken" in text
    assert any(p.key == "instructions" and "leads outside the lab folder" in p.message for p in problems)
    assert "inside" not in text
    assert len(problems) == 4


def test_grader_symlink_out_of_the_lab_is_refused(make_lab: MakeLab, tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("def grade_routes(guests, params):\n    return 1, ''\n")
    folder = make_lab(files={"grader.py": None})
    os.symlink(outside, folder / "grader.py")
    problems = problems_of(folder)
    assert [(p.file, p.message) for p in problems] == [
        (str(folder / "grader.py"), f"path 'grader.py' leads outside the lab folder (to {outside})")]
    with pytest.raises(LabFormatError, match="leads outside the lab folder"):
        load_lab(folder)


def test_symlinked_lab_folder_inside_is_fine(make_lab: MakeLab) -> None:
    folder = make_lab()
    os.symlink(folder / "files/a/etc", folder / "files/b/etc-copy")
    assert problems_of(folder) == []


def test_files_for_unknown_machine_and_name_clash(make_lab: MakeLab) -> None:
    folder = make_lab(files={"files/c/x": "x", "files/a/etc/motd": "plain"})
    text = "\n".join(map(str, problems_of(folder)))
    assert "files/c belongs to no machine" in text
    assert "both become etc/motd in machine a" in text


@pytest.mark.parametrize(
    ("files", "file", "line", "says"),
    [
        ({"instructions.md": "a\nb\n{% if user %}\nno end\n"}, "instructions.md", 3, "syntax error"),
        ({"instructions.md": "a\n{{ user }\n"}, "instructions.md", 2, "syntax error"),
        ({"instructions.md": "a\n\n{{ nope }}\n"}, "instructions.md", 3, "'nope', which is not a parameter"),
        ({"instructions.md": "a\n{% if false %}\n{{ hidden_typo }}\n{% endif %}\n"}, "instructions.md", 3,
         "'hidden_typo'"),
        ({"instructions.md": "a\n\n\n{{ addresses.c.lan }}\n"}, "instructions.md", 4, "has no attribute 'c'"),
        ({"instructions.md": "{{ user.__class__.__mro__ }}\n"}, "instructions.md", 1, "sandbox forbids"),
        ({"instructions.md": "{{ 'x' * 100000000 }}\n"}, "instructions.md", 1, "too large"),
        ({"files/a/etc/motd.j2": "ok\n{{ color | nosuchfilter }}\n"}, "files/a/etc/motd.j2", 2, "nosuchfilter"),
        ({"files/b/var/www/index.html.j2": "{{ user + 1 }}\n"}, "files/b/var/www/index.html.j2", 1, "failed"),
        ({"startup/a.sh.j2": "#!/bin/sh\n{{ lan | host(999) }}\n"}, "startup/a.sh.j2", 2, "outside"),
    ],
)
def test_template_problems_in_files(make_lab: MakeLab, files: dict[str, str], file: str, line: int,
                                    says: str) -> None:
    folder = make_lab(files=files)
    problems = problems_of(folder)
    assert any(p.file == str(folder / file) and p.line == line and says in p.message for p in problems), problems


def test_template_not_utf8(make_lab: MakeLab) -> None:
    folder = make_lab()
    (folder / "files/a/etc/motd.j2").write_bytes(b"\xff\xfe{{ user }}")
    (folder / "files/a/etc/blob").write_bytes(b"\xff\xfe{{ user }}")  # not a template: copied as bytes
    [problem] = problems_of(folder)
    assert problem.file.endswith("motd.j2") and "not UTF-8" in problem.message


@pytest.mark.parametrize(
    ("replace", "key", "says"),
    [
        ({'contains = "{{ secret }}"': 'contains = "{{ secrt }}"'}, "checks[1].contains", "'secrt'"),
        ({'feedback_fail = "a cannot': 'feedback_pass = "{{ port }"\nfeedback_fail = "a cannot'},
         "checks[1].feedback_pass", "syntax error"),
        ({'subnet = "{{ lan }}"': 'subnet = "{{ lan }}/8"'}, "networks.lan.subnet", "not an IPv4 network"),
        ({'port = "{{ port }}"': 'port = "{{ user }}"'}, "checks[0].port", "not a port number"),
        ({'networks = { lan = "{{ lan | host(2) }}" }': 'networks = { lan = "{{ addresses.a.lan }}" }'},
         "machines.b.networks.lan", "undefined"),
    ],
)
def test_template_problems_in_lab_toml(make_lab: MakeLab, replace: dict[str, str], key: str, says: str) -> None:
    folder = make_lab(replace=replace)
    toml = (folder / "lab.toml").read_text()
    problems = problems_of(folder)
    matching = [p for p in problems if p.key == key and says in p.message]
    assert matching, problems
    assert matching[0].line is not None and matching[0].line <= len(toml.splitlines())


@pytest.mark.parametrize(
    ("replace", "key", "says"),
    [
        ({"networks = { lan = 1 }": "networks = { lan = 2 }"}, "machines.b.networks.lan", "also used by machine a"),
        ({"networks = { lan = 1 }": 'networks = { lan = "10.9.9.9" }'}, "machines.a.networks.lan", "outside"),
        ({"networks = { lan = 1 }": "networks = { lan = 300 }"}, "machines.a.networks.lan", "outside"),
        ({"networks = { lan = 1 }": "networks = { lan = 255 }"}, "machines.a.networks.lan", "outside"),
        ({"networks = { lan = 1 }": 'networks = { lan = "{{ lan | replace(\'/24\', \'\') }}" }'},
         "machines.a.networks.lan", "network or broadcast"),
        ({"[networks.lan]": '[networks.wide]\nsubnet = "10.96.0.0/12"\n\n[networks.lan]'}, "networks.lan.subnet",
         "overlaps 10.96.0.0/12 of network wide"),
        ({'subnet = "{{ lan }}"': 'subnet = "10.0.0.0/8"'}, "networks.lan.subnet", "overlaps 10.0.2.0/24"),
        ({'subnet = "{{ lan }}"': 'subnet = "10.5.0.0/31"'}, "networks.lan.subnet", "too small"),
        ({"[networks.lan]": '[networks.bad]\nsubnet = "10.1.1.1/24"\n\n[networks.lan]'}, "networks.bad.subnet",
         "host bits"),
        ({'id = "http-page"\nmachine = "b"': 'id = "http-page"\nmachine = "a"'}, "checks[3].port",
         "does not forward it"),
    ],
)
def test_network_and_address_conflicts(make_lab: MakeLab, replace: dict[str, str], key: str, says: str) -> None:
    folder = make_lab(replace=replace)
    problems = problems_of(folder)
    assert any(p.key == key and says in p.message and p.line for p in problems), problems


def test_static_host_check_port_must_be_forwarded(make_lab: MakeLab) -> None:
    folder = make_lab(replace={'port = "{{ port }}"\nvia = "host"': 'port = 8080\nvia = "host"'})
    problems = problems_of(folder)
    assert [p.key for p in problems] == ["checks[3].port"] and "8080" in problems[0].message


@pytest.mark.parametrize(
    ("grader", "says", "on_grader"),
    [
        (None, "needs grader.py", False),
        ("def grade_routes(guests, params):\n    return (\n", "Python syntax error", True),
        ("def grade_routes(guests):\n    return 1, ''\n", "two arguments", True),
        ("def grade_routes(a, b, c):\n    return 1, ''\n", "two arguments", True),
        ("class X:\n    def grade_routes(self, g, p):\n        pass\n", "no top-level function", False),
        ("import os\nos.system('touch /tmp/labkit-pwned')\ndef other(g, p):\n    pass\n", "no top-level", False),
    ],
)
def test_grader_problems(make_lab: MakeLab, grader: str | None, says: str, on_grader: bool) -> None:
    folder = make_lab(files={"grader.py": grader})
    problems = problems_of(folder)
    assert any(says in p.message for p in problems), problems
    problem = next(p for p in problems if says in p.message)
    if on_grader:
        assert problem.file == str(folder / "grader.py") and problem.line
    else:
        assert problem.key == "checks[4].function"
    assert not Path("/tmp/labkit-pwned").exists()  # grader.py is parsed, never run


def test_grader_signatures_accepted(make_lab: MakeLab) -> None:
    grader = "def grade_routes(guests, params, extra=None, *, flag=False):\n    pass\n"
    assert problems_of(make_lab(files={"grader.py": grader})) == []
    assert problems_of(make_lab(files={"grader.py": "def grade_routes(*args):\n    pass\n"})) == []


def test_every_problem_is_reported_at_once(make_lab: MakeLab) -> None:
    folder = make_lab(
        replace={"memory = 64": 'memory = "x"', "points = 2": "points = -2", 'kind = "word"': 'kind = "x"',
                 "networks = { lan = 1 }": "networks = { lan = 2 }", 'regex = "^{{ secret }}$"': 'regex = "["'},
        files={"instructions.md": "{{ oops }}\n", "files/a/etc/motd.j2": "{% for %}\n", "grader.py": None},
    )
    problems = problems_of(folder, {"debian-bookworm": "uml"})
    keys = {p.key for p in problems}
    assert {"machines.a.memory", "checks[0].points", "params.user.kind", "checks[2].regex",
            "checks[4].function", "machines.b.image"} <= keys
    files = {Path(p.file).name for p in problems}
    assert {"instructions.md", "motd.j2"} <= files
    with pytest.raises(LabFormatError) as err:
        load_lab(folder)
    assert str(err.value).count("\n  ") == len(validate_lab(folder))
    assert err.value.file == str(folder / "lab.toml") and err.value.line


def test_problem_str() -> None:
    assert str(LabProblem("lab.toml", 3, "machines.a", "bad")) == "lab.toml:3: machines.a: bad"
    assert str(LabProblem("x.md", None, "", "bad")) == "x.md: bad"


def test_locator_finds_keys() -> None:
    text = (
        'id = "x"  # a comment with [brackets]\n'
        'text = """\n[not.a.table]\nkey = 1\n"""\n'
        "list = [\n  1,\n  2,\n]\n"
        "[machines.'web']\n"
        'image = "tiny"\n'
        "networks = { lan = 1 }\n"
        "[[checks]]\n"
        'id = "a"\n'
        "[[checks]]\n"
        'id = "b"\n'
        "opt.sub = 3\n"
    )
    locator = KeyLocator(text)
    assert locator.line(("id",)) == 1
    assert locator.line(("not", "a", "table")) is None and locator.line(("key",)) is None
    assert locator.line(("list",)) == 6
    assert locator.line(("machines", "web")) == 10
    assert locator.line(("machines", "web", "image")) == 11
    assert locator.line(("machines", "web", "networks", "lan")) == 12
    assert locator.line(("checks", 0, "id")) == 14
    assert locator.line(("checks", 1)) == 15
    assert locator.line(("checks", 1, "opt", "sub")) == 17
    assert locator.line(("checks", 1, "missing")) == 15


# ---------------------------------------------------------------- a machine's backend: lab.toml, else its image's


class Standalone(UmlBackend):
    """A kind registered for these tests only (UML underneath) whose machines cannot join lab networks."""

    kind = "standalone"
    capabilities = Capabilities(pause=True, lab_networks=False)


def backends(lab: Path, images: Mapping[str, str] | None) -> dict[str, str]:
    return {name: machine.backend for name, machine in load_lab(lab, images).machines.items()}


def test_a_machine_naming_no_backend_runs_on_its_image_s(make_lab: MakeLab) -> None:
    """a runs on image tiny (the newest version), b on the pinned tiny:1: each gets the backend its image names."""
    folder = make_lab(replace={"memory = 64": "memory = 128"})
    assert backends(folder, {"tiny": "qemu", "tiny:1": "uml"}) == {"a": "qemu", "b": "uml"}
    assert backends(folder, {"tiny": "uml", "tiny:1": "qemu", "tiny:2": "uml"}) == {"a": "uml", "b": "qemu"}
    assert backends(folder, None) == {"a": "uml", "b": "uml"}  # no images known: labkit's default
    # the lab's own word wins over the image's
    folder = make_lab(replace={"memory = 64": 'backend = "uml"'})
    assert backends(folder, {"tiny": "qemu", "tiny:1": "qemu"}) == {"a": "uml", "b": "qemu"}


def test_backend_checks_run_on_the_backend_the_image_gives(make_lab: MakeLab,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Machine a asks for 64 MB and sits on network lan: fine on UML, too little memory on QEMU (128 MB at least),
    and refused on a backend that cannot join lab networks, though its lab.toml names no backend."""
    monkeypatch.setitem(BACKENDS, "standalone", f"{__name__}:Standalone")
    folder = make_lab()
    assert problems_of(folder, {"tiny": "uml", "tiny:1": "uml"}) == []
    assert [(p.key, p.message) for p in problems_of(folder, {"tiny": "qemu", "tiny:1": "uml"})] == [
        ("machines.a.memory", "memory 64 MB is too little for machine a on backend qemu: it needs at least 128 MB")]
    assert [(p.key, p.message) for p in problems_of(folder, {"tiny": "standalone", "tiny:1": "uml"})] == [
        ("machines.a.networks", "machine a runs on backend standalone, which cannot join lab networks")]
    explicit = make_lab(replace={"memory = 64": 'memory = 64\nbackend = "uml"'})
    assert problems_of(explicit, {"tiny": "standalone", "tiny:1": "uml"}) == []
