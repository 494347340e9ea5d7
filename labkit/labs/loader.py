"""Read ``labs/<lab>/lab.toml`` into a `Lab`, and validate a lab completely: every problem, each with file and line.

Validation goes in layers, and a broken part never hides the problems of the others: TOML syntax; keys and types
against schema.py; values in the model constructors; references between parts; files on disk (paths that escape the
lab, missing files, grader.py functions, images); template syntax; and finally rendering every template and planning the
networks for a few sample students, which finds undefined variables, per-student conflicts and bad rendered values.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabFormatError
from labkit.labs.guide import guide_problems
from labkit.labs.locate import KeyLocator, KeyPath, format_key
from labkit.labs.model import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_RESET_POLICY,
    RESERVED_VARIABLES,
    CheckDef,
    ImageRef,
    Lab,
    LabDefinitionError,
    MachineDef,
    NetworkDef,
    ParamDef,
    Problems,
    StepDef,
    cross_problems,
    host_port_problems,
    is_template,
    lab_field_problems,
)
from labkit.labs.params import student_params
from labkit.labs.render import (
    LAB_FILE,
    TEMPLATE_SUFFIX,
    lab_path,
    machine_files,
    syntax_problems,
    template_context,
    try_render,
)
from labkit.labs.schema import (
    ADDRESS,
    CHECK_COMMON,
    CHECK_KINDS,
    CHECK_LITERAL_OPTIONS,
    CHECK_REGEX_OPTIONS,
    LAB_TABLE,
    MACHINE_TABLE,
    NETWORK_TABLE,
    PORT,
    REACH_TABLE,
    STEP_TABLE,
    STR,
    TableSpec,
)
from labkit.labs.topology import topology_problems
from labkit.runtime import DEFAULT_BACKEND

GRADER_FILE = "grader.py"
#: how many sample students every template is rendered for during validation
SAMPLE_STUDENTS = 3
SAMPLE_SECRET = b"labkit-validation-sample-secret"
TOPOLOGY_VARIABLES = frozenset({"networks", "addresses"})
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True)
class LabProblem:
    """One thing wrong with a lab: in which file, on which line (None when unknown), under which key."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def parse_key(text: str) -> KeyPath:
    """``checks[2].regex`` -> ``("checks", 2, "regex")`` (the inverse of `format_key` for labkit's own keys).

    A part holding a lab's own name with "[" in it (an unknown option ``"x["``) is kept whole as a name: the problem is
    then reported at its table's line, and never lost to a ValueError.
    """
    path: list[str | int] = []
    for part in filter(None, text.split(".")):
        name, *indexes = part.split("[")
        numbers = [i[:-1] for i in indexes]
        if not all(i.endswith("]") and n.isdecimal() and n.isascii() for i, n in zip(indexes, numbers, strict=True)):
            path.append(part)
            continue
        if name:
            path.append(name)
        path.extend(int(n) for n in numbers)
    return tuple(path)


class _Report:
    """Collects problems; keys of lab.toml get their line from the locator."""

    def __init__(self, toml_file: Path) -> None:
        self.toml_file = str(toml_file)
        self.locator = KeyLocator("")
        self.items: list[LabProblem] = []

    def key(self, path: Sequence[str | int], message: str) -> None:
        self.items.append(LabProblem(self.toml_file, self.locator.line(path), format_key(path), message))

    def relative(self, base: KeyPath, problems: Problems) -> None:
        for key, message in problems:
            self.key(base + parse_key(key), message)

    def file(self, file: Path | str, line: int | None, message: str) -> None:
        self.items.append(LabProblem(str(file), line, "", message))

    def unique(self) -> list[LabProblem]:
        """Each problem once, lab.toml first, then by file and line."""
        return sorted(dict.fromkeys(self.items), key=lambda p: (p.file != self.toml_file, p.file, p.line or 0))


def _table(raw: object, path: KeyPath, spec: TableSpec, report: _Report,
           extra: frozenset[str] = frozenset()) -> dict[str, object] | None:
    """The well-typed keys of one table; unknown keys (other than ``extra``), wrong types and missing keys reported.
    None when the table is unusable (not a table, or a required key is missing or wrong)."""
    if not isinstance(raw, dict):
        report.key(path, "must be a table")
        return None
    values: dict[str, object] = {}
    usable = True
    for key, value in raw.items():
        kind = spec.keys.get(key)
        if kind is None:
            if key not in extra:
                report.key((*path, key), f"unknown key {key!r}; allowed here: {', '.join(sorted(spec.keys))}")
        elif not kind.accepts(value):
            report.key((*path, key), f"{key} must be {kind.name}")
            usable = usable and key not in spec.required
        else:
            values[key] = value
    for key in sorted(spec.required - set(raw)):
        report.key(path, f"missing required key {key!r}")
        usable = False
    return values if usable else None


def _build(report: _Report, path: KeyPath, factory: type, **fields: object) -> object | None:
    try:
        return factory(**fields)
    except LabDefinitionError as err:
        report.relative(path, err.problems)
        return None


def _machine(name: str, raw: object, report: _Report, known_images: Mapping[str, str] | None) -> MachineDef | None:
    """The machine, on the backend its lab.toml names, else its image's when ``known_images`` knows the image, else
    labkit's default; resolved here so MachineDef checks networks and memory against the backend it will run on."""
    path: KeyPath = ("machines", name)
    values = _table(raw, path, MACHINE_TABLE, report)
    if values is None:
        return None
    nets = values.pop("networks", {})
    assert isinstance(nets, dict)
    ok = True
    for net, address in nets.items():
        if not ADDRESS.accepts(address):
            report.key((*path, "networks", net), f"the address on {net} must be {ADDRESS.name}")
            ok = False
    try:
        image = ImageRef.parse(str(values.pop("image")))
    except LabDefinitionError as err:
        report.relative((*path, "image"), err.problems)
        return None
    for key in ("forwards", "depends_on", "startup", "host_ports"):
        if key in values:
            values[key] = tuple(values[key])  # type: ignore[call-overload]
    if "backend" not in values:
        values["backend"] = (known_images or {}).get(str(image), DEFAULT_BACKEND)
    machine = _build(report, path, MachineDef, name=name, image=image, networks=nets, **values)
    return machine if ok and isinstance(machine, MachineDef) else None


def _check(index: int, raw: object, report: _Report, machines: Sequence[str]) -> tuple[str | None, CheckDef | None]:
    path: KeyPath = ("checks", index)
    # kind options are checked by CheckDef, which knows the kind and says so
    extra = frozenset(raw) - frozenset(CHECK_COMMON.keys) if isinstance(raw, dict) else frozenset()
    values = _table(raw, path, CHECK_COMMON, report, extra)
    check_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    if values is None or not isinstance(raw, dict):
        return check_id, None
    options = {key: value for key, value in raw.items() if key not in CHECK_COMMON.keys}
    if "machine" not in values and len(machines) == 1 and values["kind"] != "script":
        values["machine"] = machines[0]
    if "depends_on" in values:
        values["depends_on"] = tuple(values["depends_on"])  # type: ignore[call-overload]
    check = _build(report, path, CheckDef, options=options, **values)
    return check_id, check if isinstance(check, CheckDef) else None


def _step(index: int, raw: object, report: _Report) -> tuple[str | None, StepDef | None]:
    path: KeyPath = ("steps", index)
    values = _table(raw, path, STEP_TABLE, report)
    step_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    if values is None:
        return step_id, None
    step = _build(report, path, StepDef, **values)
    return step_id, step if isinstance(step, StepDef) else None


@dataclass
class _Parts:
    """The sound parts of a lab, kept even when other parts are broken so their files can still be checked."""

    instructions: str
    machines: dict[str, MachineDef]
    networks: dict[str, NetworkDef]
    checks: list[tuple[int, CheckDef]]
    param_names: set[str]
    machine_names: set[str]
    lab: Lab | None
    #: the sound steps with their index in [[steps]]
    steps: list[tuple[int, StepDef]]
    #: every step id of [[steps]], broken steps' too (markers naming them are not reported again)
    step_ids: list[str]


def _structure(data: dict[str, object], root: Path, report: _Report,
               known_images: Mapping[str, str] | None) -> _Parts:
    """Keys, types, values and references. The Lab is built only when all of them are sound."""
    top = _table(data, (), LAB_TABLE, report) or {}
    sections: dict[str, dict[str, object]] = {}
    for section in ("machines", "networks", "params"):
        value = top.get(section, {})
        sections[section] = value if isinstance(value, dict) else {}
    machine_names = list(sections["machines"])
    machines: dict[str, MachineDef | None] = {
        name: _machine(name, raw, report, known_images) for name, raw in sections["machines"].items()
    }
    networks: dict[str, NetworkDef | None] = {}
    for name, raw in sections["networks"].items():
        values = _table(raw, ("networks", name), NETWORK_TABLE, report)
        built = _build(report, ("networks", name), NetworkDef, name=name, **values) if values is not None else None
        networks[name] = built if isinstance(built, NetworkDef) else None
    params: dict[str, ParamDef | None] = {}
    for name, raw in sections["params"].items():
        if not isinstance(raw, dict):
            report.key(("params", name), "must be a table such as [params.name] with kind = ...")
            params[name] = None
            continue
        if not isinstance(raw.get("kind"), str):
            report.key(("params", name), "needs kind = \"<generator>\" (a string)")
            params[name] = None
            continue
        options = {key: value for key, value in raw.items() if key != "kind"}
        built = _build(report, ("params", name), ParamDef, name=name, kind=raw["kind"], options=options)
        params[name] = built if isinstance(built, ParamDef) else None
    raw_checks = top.get("checks", [])
    checks = [_check(i, raw, report, machine_names) for i, raw in enumerate(raw_checks)]  # type: ignore[arg-type]
    raw_steps = top.get("steps", [])
    steps = [_step(i, raw, report) for i, raw in enumerate(raw_steps)]  # type: ignore[arg-type]
    lab_id = top.get("id") if isinstance(top.get("id"), str) else "lab"
    version = top.get("version", 1)
    policy = top.get("reset_policy", DEFAULT_RESET_POLICY)
    count = len(machines) if isinstance(data.get("machines", {}), dict) else 1  # a wrong type is reported already
    report.relative((), lab_field_problems(str(lab_id), int(version), str(policy), count))  # type: ignore
    report.relative((), cross_problems(machines, networks, checks, [step_id for step_id, _ in steps]))
    sound_machines = {k: v for k, v in machines.items() if v}
    sound_networks = {k: v for k, v in networks.items() if v}
    sound_checks = [(i, c) for i, (_id, c) in enumerate(checks) if c]
    reach = _table(top["reach"], ("reach",), REACH_TABLE, report) if "reach" in top else {}
    host_ports = tuple((reach or {}).get("host_ports", ()))  # type: ignore[call-overload]
    report.relative((), host_port_problems("reach.host_ports", host_ports))
    instructions = top.get("instructions", DEFAULT_INSTRUCTIONS)
    lab = Lab(
        id=str(top["id"]), title=str(top["title"]), version=int(version),  # type: ignore[call-overload]
        instructions=str(instructions), reset_policy=str(policy),
        machines=sound_machines, networks=sound_networks, params={k: v for k, v in params.items() if v},
        checks=tuple(c for _i, c in sound_checks), folder=root,
        host_ports=host_ports, outbound=bool((reach or {}).get("outbound", True)),
        steps=tuple(step for _id, step in steps if step),
    ) if not report.items else None
    return _Parts(instructions, sound_machines, sound_networks, sound_checks, set(params), set(machines), lab,
                  [(i, step) for i, (_id, step) in enumerate(steps) if step], [i for i, _ in steps if i])


@dataclass
class _Template:
    """A template found during validation, kept to be rendered for sample students once its syntax is known good."""

    source: str
    name: str
    key: KeyPath | None  # lab.toml key; None for a template file (then name is the file)
    #: uses ``networks`` or ``addresses``, so it cannot render while the topology is broken
    uses_topology: bool = False


def _uses_topology(source: str) -> bool:
    return bool(syntax_problems(source, "check", known=RESERVED_VARIABLES - TOPOLOGY_VARIABLES))


def _file_template(path: Path, shown: Path, report: _Report, known: set[str], out: list[_Template]) -> None:
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        report.file(shown, None, f"template is not UTF-8 text ({err.reason} at byte {err.start})")
        return
    except OSError as err:
        report.file(shown, None, f"cannot read the template: {err.strerror}")
        return
    problems = syntax_problems(source, str(shown), known)
    for line, message in problems:
        report.file(shown, line, message)
    if not problems:
        out.append(_Template(source, str(shown), None, _uses_topology(source)))


def _toml_template(value: object, key: KeyPath, report: _Report, known: set[str], out: list[_Template]) -> None:
    if not (isinstance(value, str) and is_template(value)):
        return
    problems = syntax_problems(value, format_key(key), known)
    for _line, message in problems:
        report.key(key, message)
    if not problems:
        out.append(_Template(value, format_key(key), key, _uses_topology(value)))


def _files(parts: _Parts, root: Path, report: _Report, known: set[str], out: list[_Template]) -> None:
    """Instructions, machine files and startup scripts: inside the lab, present, readable, templates well-formed."""
    path, why = lab_path(root, parts.instructions)
    if path is None:
        report.key(("instructions",), why or "")
    elif not path.is_file():
        report.key(("instructions",), f"instructions file {parts.instructions!r} is missing")
    else:
        _file_template(path, root / parts.instructions, report, known, out)
    claimed = {("files", name) for name in parts.machine_names}
    for machine in parts.machines.values():
        claimed.add(Path(machine.files).parts[:2])
        entries, problems = machine_files(root, machine)
        for rel, message in problems:
            if rel == machine.files:
                report.key(("machines", machine.name, "files"), message)
            else:
                report.file(root / rel, None, message)
        for entry in entries:
            if entry.template:
                _file_template(entry.source, root / machine.files / entry.rel, report, known, out)
        for rel in machine.startup:
            path, why = lab_path(root, rel)
            if path is None or not path.is_file():
                report.key(("machines", machine.name, "startup"), why or f"startup script {rel!r} is missing")
            elif rel.endswith(TEMPLATE_SUFFIX):
                _file_template(path, root / rel, report, known, out)
    files_root = root / "files"
    if files_root.is_dir() and not files_root.is_symlink():
        for child in sorted(files_root.iterdir()):
            if ("files", child.name) not in claimed:
                report.file(child, None, f"files/{child.name} belongs to no machine (machines: "
                                         f"{', '.join(parts.machines)})")


def _guide(parts: _Parts, root: Path, report: _Report) -> None:
    """The instructions' step markers and ``run=`` code blocks (labkit.labs.guide) against [[steps]] and machines."""
    path, _why = lab_path(root, parts.instructions)
    if path is None or not path.is_file():
        return  # reported with the instructions
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # reported with the instructions
    problems, unmarked = guide_problems(text, parts.step_ids, parts.machine_names)
    for line, message in problems:
        report.file(root / parts.instructions, line, message)
    for i, step in parts.steps:
        if step.id in unmarked:
            report.key(("steps", i, "id"), f"step {step.id} has no line <!-- step: {step.id} --> in "
                                           f"{parts.instructions} (where its part of the guide starts)")


def _grader(parts: _Parts, root: Path, report: _Report) -> None:
    """Every script check names a top-level function of grader.py that takes (guests, params); grader.py is parsed
    with ast, never imported, so validating a lab runs none of its code."""
    scripts = [(i, c) for i, c in parts.checks if c.kind == "script"]
    if not scripts:
        return
    grader = root / GRADER_FILE
    inside, why = lab_path(root, GRADER_FILE)
    if inside is None:  # a symlink out of the lab: labkit reads no file there, and the sandbox would not see it
        report.file(grader, None, why or "bad path")
        return
    if not grader.is_file():
        for i, check in scripts:
            report.key(("checks", i, "function"), f"check {check.id} needs {GRADER_FILE} in the lab folder")
        return
    try:
        tree = ast.parse(grader.read_bytes(), filename=str(grader))
    except SyntaxError as err:
        report.file(grader, err.lineno, f"Python syntax error: {err.msg}")
        return
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for i, check in scripts:
        name = str(check.options["function"])
        node = functions.get(name)
        if node is None:
            report.key(("checks", i, "function"), f"{GRADER_FILE} has no top-level function {name!r}")
            continue
        positional = len(node.args.posonlyargs) + len(node.args.args)
        required = positional - len(node.args.defaults)
        if required > 2 or (positional < 2 and node.args.vararg is None):
            report.file(grader, node.lineno, f"function {name} must take two arguments: (guests, params)")


def _images(parts: _Parts, known_images: Mapping[str, str], report: _Report) -> None:
    """``known_images`` holds names and ``name:version`` refs: a bare name needs the name, a pinned one its ref."""
    for machine in parts.machines.values():
        ref = machine.image
        found = str(ref) in known_images if ref.version else (
            ref.name in known_images or any(k.startswith(f"{ref.name}:") for k in known_images))
        if not found:
            report.key(("machines", machine.name, "image"), f"image {ref} is not built (labkit image build {ref.name})")


def _toml_templates(parts: _Parts, report: _Report, known: set[str], out: list[_Template]) -> None:
    for name, network in parts.networks.items():
        _toml_template(network.subnet, ("networks", name, "subnet"), report, known, out)
    for machine in parts.machines.values():
        for net, address in machine.networks.items():
            _toml_template(address, ("machines", machine.name, "networks", net), report, known, out)
        for port in machine.forwards:
            _toml_template(port, ("machines", machine.name, "forwards"), report, known, out)
    for i, check in parts.checks:
        spec = CHECK_KINDS[check.kind]
        for key, value in check.options.items():
            if key not in CHECK_LITERAL_OPTIONS and spec.keys.get(key) in (STR, PORT):
                _toml_template(value, ("checks", i, key), report, known, out)
        for key in ("feedback_pass", "feedback_fail"):
            _toml_template(getattr(check, key), ("checks", i, key), report, known, out)


def _samples(lab: Lab, report: _Report, templates: list[_Template]) -> None:
    """Render everything for sample students: undefined variables, bad rendered values, per-student conflicts. Stops
    at the first sample with problems, so one mistake is not listed once per sample."""
    for number in range(SAMPLE_STUDENTS):
        before = len(report.items)
        student = f"sample-{number}"
        try:
            params = student_params(lab, "sample-course", student, SAMPLE_SECRET)
        except LabFormatError as err:
            report.key(("params",), str(err))
            return
        base = template_context(lab, params, "sample-course", student)
        topology, problems = topology_problems(lab, base)
        report.relative((), problems)
        context = template_context(lab, params, "sample-course", student, topology)
        for template in templates:
            if problems and template.uses_topology:
                continue  # it would only fail because of the topology problems reported above
            _text, problem = try_render(template.source, context, template.name)
            if problem is None:
                continue
            line, message = problem
            if template.key is None:
                report.file(template.name, line, message)
            else:
                report.key(template.key, message)
        _rendered_values(lab, context, report)
        if len(report.items) > before:
            return


def _rendered(value: object, context: Mapping[str, object]) -> object | None:
    """``value`` rendered, or None when its template fails (that failure is reported with the template)."""
    if isinstance(value, str) and is_template(value):
        text, problem = try_render(value, context, "value")
        return None if problem else text
    return value


def _port(value: object) -> int | None:
    text = str(value).strip()
    return int(text) if not isinstance(value, bool) and text.isdigit() and 1 <= int(text) <= 65535 else None


def _rendered_values(lab: Lab, context: Mapping[str, object], report: _Report) -> None:
    """Values that must be a port or a regular expression once rendered, and host checks on forwarded ports."""
    forwards: dict[str, set[int]] = {}
    for machine in lab.machines.values():
        ports: list[int] = []
        for value in machine.forwards:
            rendered = _rendered(value, context)
            if rendered is None:
                continue
            port = _port(rendered)
            if port is None:
                report.key(("machines", machine.name, "forwards"), f"forward {value!r} renders to {rendered!r}, "
                                                                   "not a port number between 1 and 65535")
            elif port in ports:
                report.key(("machines", machine.name, "forwards"), f"guest port {port} is forwarded twice")
            else:
                ports.append(port)
        forwards[machine.name] = set(ports)
    for i, check in enumerate(lab.checks):
        for key in CHECK_REGEX_OPTIONS & set(check.options):
            rendered = _rendered(check.options[key], context)
            if rendered is None:
                continue
            try:
                re.compile(str(rendered))
            except re.error as err:
                report.key(("checks", i, key), f"bad regular expression {rendered!r}: {err}")
        if "port" not in check.options or (rendered := _rendered(check.options["port"], context)) is None:
            continue
        port = _port(rendered)
        if port is None:
            report.key(("checks", i, "port"), f"port {check.options['port']!r} renders to {rendered!r}, "
                                              "not a port number between 1 and 65535")
        elif check.options.get("via") == "host" and port not in forwards.get(check.machine or "", {port}):
            report.key(("checks", i, "port"), f"check {check.id} reaches guest port {port} from the host, but "
                                              f"machine {check.machine} does not forward it")


def _lab_file(path: Path) -> Path:
    return path / LAB_FILE if path.is_dir() else path


def _load(path: Path | str, known_images: Mapping[str, str] | None) -> tuple[Lab | None, list[LabProblem]]:
    toml_file = _lab_file(Path(path))
    root = toml_file.parent
    report = _Report(toml_file)
    try:
        text = toml_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        report.file(toml_file, None, f"lab file is not UTF-8 text ({err.reason} at byte {err.start})")
        return None, report.items
    except OSError as err:
        report.file(toml_file, None, f"cannot read the lab file: {err.strerror}")
        return None, report.items
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = _TOML_POSITION.search(str(err))
        line = int(match.group(1)) if match else (text.count("\n") + 1 if "end of document" in str(err) else None)
        report.file(toml_file, line, f"malformed TOML: {_TOML_POSITION.sub('', str(err)).strip()}")
        return None, report.items
    report.locator = KeyLocator(text)
    parts = _structure(data, root, report, known_images)
    known = parts.param_names | RESERVED_VARIABLES
    templates: list[_Template] = []
    _files(parts, root, report, known, templates)
    _guide(parts, root, report)
    _grader(parts, root, report)
    if known_images is not None:
        _images(parts, known_images, report)
    _toml_templates(parts, report, known, templates)
    if parts.lab is not None:
        _samples(parts.lab, report, templates)
    problems = report.unique()
    return (parts.lab if not problems else None), problems


def validate_lab(path: Path | str, known_images: Mapping[str, str] | None = None) -> list[LabProblem]:
    """Every problem of the lab at ``path`` (its folder or its lab.toml); empty when it is sound. ``known_images``
    maps built image names and ``name:version`` refs to their backends; None skips the image check (and machines
    that name no backend get labkit's default)."""
    return _load(path, known_images)[1]


def load_lab(path: Path | str, known_images: Mapping[str, str] | None = None) -> Lab:
    """The validated `Lab` at ``path``, or a `LabFormatError` at the first problem's file and line listing them all."""
    lab, problems = _load(path, known_images)
    if problems or lab is None:
        first = problems[0]
        rest = "".join(f"\n  {problem}" for problem in problems)
        raise LabFormatError(f"{len(problems)} problem(s) in the lab:{rest}", first.file, first.line)
    return lab


def lab_warnings(path: Path | str, known_images: Mapping[str, str] | None = None) -> list[LabProblem]:
    """What a sound lab allows but its author probably did not mean (``lab validate`` prints them, exit code 0).
    Empty when the lab has problems: those come first.

    - A visible check that depends on a hidden one: when the hidden check does not pass, the student sees the
      visible one skipped for "an earlier step" (the grader never names the hidden check), so they learn that some
      hidden step failed.
    """
    lab, _problems = _load(path, known_images)
    if lab is None:
        return []
    toml_file = _lab_file(Path(path))
    locator = KeyLocator(toml_file.read_text(encoding="utf-8"))
    hidden = {check.id for check in lab.checks if check.hidden}
    warnings = []
    for i, check in enumerate(lab.checks):
        for dep in check.depends_on if not check.hidden else ():
            if dep in hidden:
                key = ("checks", i, "depends_on")
                warnings.append(LabProblem(str(toml_file), locator.line(key), format_key(key),
                                           f"visible check {check.id} depends on hidden check {dep}: when {dep} "
                                           f"does not pass, students see {check.id} skipped because 'an earlier "
                                           "step did not pass' (make both hidden, or neither, to say nothing)"))
    return warnings
