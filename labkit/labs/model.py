"""The lab format as plain values: a `Lab` with its machines, networks, parameters and checks.

Every class checks its own values when it is built and refuses to exist in a wrong state; `Lab` also checks the
references between its parts (networks a machine joins, dependency cycles, checks on unknown machines). Nothing here
runs a backend (a machine's backend is only checked against the registry's kinds) or touches the database or global
settings. Values that are templates (a per-student subnet, port or expected output) are only checked once rendered:
see topology.py and render.py.
"""

from __future__ import annotations

import ipaddress
import keyword
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from labkit.errors import BadNameError, LabFormatError
from labkit.labs.params import GENERATORS
from labkit.labs.schema import CHECK_KINDS, CHECK_LITERAL_OPTIONS, CHECK_REGEX_OPTIONS, VIA
from labkit.names import check_name
from labkit.runtime import DEFAULT_BACKEND, backend_class, backend_kinds

RESET_POLICIES = ("each-session", "persist")
DEFAULT_RESET_POLICY = "persist"
DEFAULT_INSTRUCTIONS = "instructions.md"
DEFAULT_MEMORY = 128
MIN_MEMORY, MAX_MEMORY = 16, 65536
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 3600.0
#: template variables labkit provides itself; a parameter may not take these names
RESERVED_VARIABLES = frozenset({"lab", "course", "student", "networks", "addresses"})
_PARAM_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODE = re.compile(r"0?[0-7]{3,4}")

#: (key relative to the object, message)
Problems = list[tuple[str, str]]


class LabDefinitionError(LabFormatError):
    """A model object was built with wrong values; ``problems`` lists all of them as (key, message)."""

    def __init__(self, what: str, problems: Problems) -> None:
        text = "; ".join(f"{key}: {message}" if key else message for key, message in problems)
        super().__init__(f"{what}: {text}")
        self.problems = problems


def is_template(text: str) -> bool:
    """True when ``text`` holds Jinja2 markup, so it can only be checked once rendered."""
    return "{{" in text or "{%" in text or "{#" in text


def _name_problem(name: str, what: str) -> Problems:
    try:
        check_name(name, what)
    except BadNameError as err:
        return [("", str(err))]
    return []


def _raise(what: str, problems: Problems) -> None:
    if problems:
        raise LabDefinitionError(what, problems)


def _port_problem(key: str, port: int | str) -> Problems:
    if isinstance(port, int) and not 1 <= port <= 65535:
        return [(key, f"port {port} is not between 1 and 65535")]
    return []


def host_port_problems(key: str, ports: Sequence[int]) -> Problems:
    """Problems of a list of host ports guests may reach: numbers 1 to 65535, each once (no templates: the host's
    services are the same for every student)."""
    problems: Problems = []
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            problems.append((key, f"host port {port!r} is not a port number between 1 and 65535"))
    for port in sorted({port for port in ports if list(ports).count(port) > 1}):
        problems.append((key, f"host port {port} is listed twice"))
    return problems


def backend_problems(machine: str, backend: str, networked: bool, memory: int = DEFAULT_MEMORY) -> Problems:
    """Problems of machine ``machine`` naming ``backend``: a registered kind, one that joins lab networks when the
    machine is on one, and enough memory for it. Only the registry's list is read; a backend's module is loaded only
    for a networked machine or one with less memory than the default."""
    kinds = backend_kinds()
    if backend not in kinds:
        return [("backend", f"unknown backend {backend!r} for machine {machine}; known backends: {', '.join(kinds)}")]
    if networked and not backend_class(backend).capabilities.lab_networks:
        return [("networks", f"machine {machine} runs on backend {backend}, which cannot join lab networks")]
    if memory < DEFAULT_MEMORY and memory < (least := backend_class(backend).min_memory_mb):
        return [("memory", f"memory {memory} MB is too little for machine {machine} on backend {backend}: it needs at "
                           f"least {least} MB")]
    return []


def startup_name(rel: str) -> str:
    """The name a startup script has in the seed: its file name without ``.j2`` and ``.sh`` (the seed adds ``.sh``
    back), so ``startup/a.sh.j2`` is ``a``."""
    return PurePosixPath(rel).name.removesuffix(".j2").removesuffix(".sh")


def parse_mode(value: int | str) -> int | None:
    """A file mode from ``"0644"``, ``"644"`` or TOML ``0o644``; None when it is not one."""
    if isinstance(value, int):
        return value if 0 <= value <= 0o7777 else None
    return int(value, 8) if _MODE.fullmatch(value) else None


@dataclass(frozen=True)
class ImageRef:
    """A base image by name, optionally pinned to one stored version (``tiny`` or ``tiny:3``)."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        name, sep, version = text.partition(":")
        if sep and not (version.isdigit() and int(version) >= 1):
            raise LabDefinitionError(f"image {text!r}", [("", "write the image as NAME or NAME:VERSION, VERSION >= 1")])
        return cls(name, int(version) if sep else None)

    def __post_init__(self) -> None:
        problems = _name_problem(self.name, "image name")
        if self.version is not None and self.version < 1:
            problems.append(("", f"image version {self.version} must be 1 or more"))
        _raise(f"image {self}", problems)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


@dataclass(frozen=True)
class NetworkDef:
    """A private network between one student's machines. ``subnet`` is CIDR text or a template rendering to it."""

    name: str
    subnet: str

    def __post_init__(self) -> None:
        _raise(f"network {self.name!r}", self.problems())

    def problems(self) -> Problems:
        problems = _name_problem(self.name, "network name")
        if not is_template(self.subnet):
            problems += [("subnet", message) for message in subnet_problems(self.subnet)]
        return problems


def subnet_problems(text: str) -> list[str]:
    """What is wrong with ``text`` as a lab network's subnet (IPv4, no host bits, room for hosts)."""
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError as err:
        return [f"subnet {text!r} is not an IPv4 network such as 10.1.0.0/24 ({err})"]
    if network.prefixlen > 30:
        return [f"subnet {text} is too small; use /30 or larger"]
    return []


@dataclass(frozen=True)
class MachineDef:
    """One machine of a lab. ``networks`` maps a network name to a host number or an address (template allowed);
    ``forwards`` are guest ports reachable from the host; ``files`` is the folder copied into the guest.
    ``host_ports`` are added to the lab's (`Lab.reach`); ``outbound`` None means: as the lab says. ``backend`` is a
    registered backend kind (`labkit.runtime.backend_kinds`); the loader fills in the image's (or labkit's default)
    when lab.toml names none."""

    name: str
    image: ImageRef
    memory: int = DEFAULT_MEMORY
    forwards: tuple[int | str, ...] = ()
    networks: Mapping[str, int | str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    startup: tuple[str, ...] = ()
    files: str = ""
    host_ports: tuple[int, ...] = ()
    outbound: bool | None = None
    backend: str = DEFAULT_BACKEND

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", MappingProxyType(dict(self.networks)))
        if not self.files:
            object.__setattr__(self, "files", f"files/{self.name}")
        _raise(f"machine {self.name!r}", self.problems())

    def problems(self) -> Problems:
        problems = _name_problem(self.name, "machine name")
        if not MIN_MEMORY <= self.memory <= MAX_MEMORY:
            problems.append(("memory", f"memory {self.memory} MB is not between {MIN_MEMORY} and {MAX_MEMORY}"))
        for port in self.forwards:
            problems += _port_problem("forwards", port)
        static = [port for port in self.forwards if isinstance(port, int)]
        for port in sorted({port for port in static if static.count(port) > 1}):
            problems.append(("forwards", f"guest port {port} is forwarded twice"))
        for network, address in self.networks.items():
            if isinstance(address, int) and address < 1:
                problems.append((f"networks.{network}", f"host number {address} must be 1 or more"))
            elif isinstance(address, str) and not is_template(address) and "/" in address:
                problems.append((f"networks.{network}", f"write the address {address!r} without a /prefix; "
                                                        "the network's subnet gives it"))
        problems += host_port_problems("host_ports", self.host_ports)
        problems += backend_problems(self.name, self.backend, bool(self.networks), self.memory)
        if self.name in self.depends_on:
            problems.append(("depends_on", f"machine {self.name} depends on itself"))
        for script in self.startup:
            if self.startup.count(script) > 1:
                problems.append(("startup", f"startup script {script!r} is listed twice"))
                break
        seen: dict[str, str] = {}
        for script in dict.fromkeys(self.startup):
            name = startup_name(script)
            try:
                check_name(name, f"startup script {script!r}: its name without .j2 and .sh")
            except BadNameError as err:
                problems.append(("startup", str(err)))
            if name in seen:
                problems.append(("startup", f"startup scripts {seen[name]!r} and {script!r} would both be {name!r} "
                                            "in the guest"))
            seen[name] = script
        return problems


@dataclass(frozen=True)
class ParamDef:
    """A per-student parameter: a generator ``kind`` from params.GENERATORS and its options."""

    name: str
    kind: str
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        _raise(f"parameter {self.name!r}", self.problems())

    def problems(self) -> Problems:
        problems: Problems = []
        if not _PARAM_NAME.fullmatch(self.name) or keyword.iskeyword(self.name):
            problems.append(("", f"parameter name {self.name!r} must be lower-case letters, digits and '_', "
                                 "starting with a letter or '_' (it is a template variable)"))
        if self.name in RESERVED_VARIABLES:
            problems.append(("", f"parameter name {self.name!r} is reserved: labkit provides "
                                 f"{', '.join(sorted(RESERVED_VARIABLES))} to templates"))
        generator = GENERATORS.get(self.kind)
        if generator is None:
            problems.append(("kind", f"unknown generator kind {self.kind!r}; use one of {', '.join(GENERATORS)}"))
            return problems
        for key in sorted(generator.required - set(self.options)):
            problems.append((key, f"the {self.kind} generator needs {key!r}"))
        for key, value in self.options.items():
            spec = generator.options.get(key)
            if spec is None:
                problems.append((key, f"unknown option {key!r} for the {self.kind} generator"))
            elif not spec.accepts(value):
                problems.append((key, f"{key} must be {spec.name}"))
        if not problems:
            problems += generator.problems(self.options)
        return problems


@dataclass(frozen=True)
class StepDef:
    """One step of the lab's guide, in the order of ``[[steps]]``: its part of the instructions starts at the line
    ``<!-- step: <id> -->`` (labkit.labs.guide), and checks name it with ``step = "<id>"``."""

    id: str
    title: str

    def __post_init__(self) -> None:
        problems = [("id", message) for _key, message in _name_problem(self.id, "step id")]
        if not self.title.strip():
            problems.append(("title", f"step {self.id} needs a title"))
        _raise(f"step {self.id!r}", problems)


@dataclass(frozen=True)
class CheckDef:
    """One graded check: common fields plus the options of its ``kind`` (schema.CHECK_KINDS). String options other
    than ``via``, ``function`` and ``mode`` are templates over the student's parameters."""

    id: str
    kind: str
    title: str = ""
    points: float = 1
    machine: str | None = None
    hidden: bool = False
    depends_on: tuple[str, ...] = ()
    feedback_pass: str = ""
    feedback_fail: str = ""
    baseline_pass: bool = False
    timeout: float = DEFAULT_TIMEOUT
    options: Mapping[str, object] = field(default_factory=dict)
    #: the guide step this check belongs to (its Check button runs it), or None
    step: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if not self.title:
            object.__setattr__(self, "title", self.id)
        _raise(f"check {self.id!r}", self.problems())

    def problems(self) -> Problems:
        problems = [("id", message) for _key, message in _name_problem(self.id, "check id")]
        if not self.points > 0:
            problems.append(("points", f"points {self.points} must be more than 0"))
        if not 0 < self.timeout <= MAX_TIMEOUT:
            problems.append(("timeout", f"timeout {self.timeout} s is not between 0 and {MAX_TIMEOUT:g}"))
        if self.id in self.depends_on:
            problems.append(("depends_on", f"check {self.id} depends on itself"))
        spec = CHECK_KINDS.get(self.kind)
        if spec is None:
            problems.append(("kind", f"unknown check kind {self.kind!r}; use one of {', '.join(CHECK_KINDS)}"))
            return problems
        if self.machine is None and self.kind != "script":
            problems.append(("machine", f"a {self.kind} check needs a machine"))
        for key in sorted(spec.required - set(self.options)):
            problems.append((key, f"a {self.kind} check needs {key!r}"))
        for key, value in self.options.items():
            option = spec.keys.get(key)
            if option is None:
                problems.append((key, f"unknown option {key!r} for a {self.kind} check"))
            elif not option.accepts(value):
                problems.append((key, f"{key} must be {option.name}"))
            else:
                problems += option_problems(key, value)
        if self.kind == "file" and self.options.get("exists") is False:
            extra = sorted({"contains", "regex", "mode", "owner"} & set(self.options))
            if extra:
                problems.append(("exists", f"exists = false cannot be combined with {', '.join(extra)}"))
        return problems


def option_problems(key: str, value: object) -> Problems:
    """Problems of one check option value; template strings pass here and are checked once rendered."""
    if isinstance(value, str) and is_template(value) and key not in CHECK_LITERAL_OPTIONS:
        return []
    if key in CHECK_REGEX_OPTIONS:
        try:
            re.compile(str(value))
        except re.error as err:
            return [(key, f"bad regular expression {value!r}: {err}")]
    elif key == "port" and isinstance(value, str):
        return [] if value.isdigit() and 1 <= int(value) <= 65535 else [(key, f"port {value!r} is not a port number")]
    elif key == "port" and isinstance(value, int):
        return _port_problem(key, value)
    elif key == "via" and value not in VIA:
        return [(key, f"via {value!r} must be one of {', '.join(VIA)}")]
    elif key == "function" and isinstance(value, str) and not _IDENTIFIER.fullmatch(value):
        return [(key, f"function {value!r} is not a Python function name")]
    elif key == "mode" and isinstance(value, int | str) and parse_mode(value) is None:
        return [(key, f"mode {value!r} is not an octal file mode such as \"0644\"")]
    elif key == "exit_code" and isinstance(value, int) and not 0 <= value <= 255:
        return [(key, f"exit code {value} is not between 0 and 255")]
    elif key == "status" and isinstance(value, int) and not 100 <= value <= 599:
        return [(key, f"HTTP status {value} is not between 100 and 599")]
    return []


def _cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One dependency cycle in ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def cross_problems(
    machines: Mapping[str, MachineDef | None],
    networks: Mapping[str, NetworkDef | None],
    checks: Sequence[tuple[str | None, CheckDef | None]],
    steps: Sequence[str | None] = (),
) -> Problems:
    """Problems between parts of a lab, with keys from the lab's root. A part that is None was declared but is broken
    itself: references to it are accepted and its own references are not followed."""
    problems: Problems = []
    for name, machine in machines.items():
        if machine is None:
            continue
        for network in machine.networks:
            if network not in networks:
                problems.append((f"machines.{name}.networks.{network}", f"network {network!r} is not defined"))
        for dep in machine.depends_on:
            if dep not in machines:
                problems.append((f"machines.{name}.depends_on", f"machine {dep!r} is not defined"))
    graph = {name: m.depends_on for name, m in machines.items() if m is not None}
    if cycle := _cycle(graph):
        problems.append((f"machines.{cycle[0]}.depends_on", f"machines depend on each other in a cycle: "
                                                            f"{' -> '.join(cycle)}"))
    index = _first_uses([check_id for check_id, _check in checks], "check", problems)
    for i, (_check_id, check) in enumerate(checks):
        if check is None:
            continue
        if check.machine is not None and check.machine not in machines:
            problems.append((f"checks[{i}].machine", f"check {check.id} runs on machine {check.machine!r}, "
                                                     "which is not defined"))
        for dep in check.depends_on:
            if dep not in index:
                problems.append((f"checks[{i}].depends_on", f"check {check.id} depends on unknown check {dep!r}"))
        machine = machines.get(check.machine or "")
        port = check.options.get("port")
        if machine and check.options.get("via") == "host" and isinstance(port, int) and port not in machine.forwards:
            problems.append((f"checks[{i}].port", f"check {check.id} reaches guest port {port} from the host, but "
                                                  f"machine {machine.name} does not forward it"))
    problems += _step_problems(steps, checks)
    check_graph = {c.id: c.depends_on for _i, c in checks if c is not None}
    if cycle := _cycle(check_graph):
        where = index.get(cycle[0], 0)
        message = f"checks depend on each other in a cycle: {' -> '.join(cycle)}"
        problems.append((f"checks[{where}].depends_on", message))
    return problems


def _first_uses(ids: Sequence[str | None], kind: str, problems: Problems) -> dict[str, int]:
    """Where each id of a lab.toml array (``checks`` or ``steps``, as ``kind``) is first used; a second use is a problem
    at its ``<kind>s[i].id``. None stands for a broken entry."""
    first: dict[str, int] = {}
    for i, item in enumerate(ids):
        if item is None:
            continue
        if item in first:
            problems.append((f"{kind}s[{i}].id", f"{kind} id {item!r} is already used by {kind}s[{first[item]}]"))
        else:
            first[item] = i
    return first


def _step_problems(steps: Sequence[str | None], checks: Sequence[tuple[str | None, CheckDef | None]]) -> Problems:
    """Step ids used once; a check's ``step`` names a step (``steps`` holds the ids, None for a broken entry)."""
    problems: Problems = []
    _first_uses(steps, "step", problems)
    for i, (_check_id, check) in enumerate(checks):
        if check is None or check.step is None or check.step in steps:
            continue
        known = ", ".join(dict.fromkeys(s for s in steps if s)) or "none: add [[steps]] tables"
        problems.append((f"checks[{i}].step", f"check {check.id} belongs to step {check.step!r}, which is not "
                                              f"defined (steps: {known})"))
    return problems


def lab_field_problems(lab_id: str, version: int, reset_policy: str, machine_count: int) -> Problems:
    """Problems of the lab's own top-level values (the loader also uses this when some part is broken)."""
    problems = [("id", message) for _key, message in _name_problem(lab_id, "lab id")]
    if version < 1:
        problems.append(("version", f"version {version} must be 1 or more"))
    if reset_policy not in RESET_POLICIES:
        problems.append(("reset_policy", f"reset_policy {reset_policy!r} must be one of {', '.join(RESET_POLICIES)}"))
    if not machine_count:
        problems.append(("machines", "a lab needs at least one [machines.<name>] table"))
    return problems


@dataclass(frozen=True)
class Lab:
    """A whole lab, as read from ``labs/<lab>/lab.toml``. ``folder`` is where its files live (None for a lab built in
    code without files)."""

    id: str
    title: str
    version: int = 1
    instructions: str = DEFAULT_INSTRUCTIONS
    reset_policy: str = DEFAULT_RESET_POLICY
    machines: Mapping[str, MachineDef] = field(default_factory=dict)
    networks: Mapping[str, NetworkDef] = field(default_factory=dict)
    params: Mapping[str, ParamDef] = field(default_factory=dict)
    checks: tuple[CheckDef, ...] = ()
    folder: Path | None = None
    #: ``[reach]``: ports of the lab host's loopback every guest may reach (as 10.0.2.2:PORT), and outbound traffic
    host_ports: tuple[int, ...] = ()
    outbound: bool = True
    #: ``[[steps]]``: the guide's steps in order (empty: the guide is one page)
    steps: tuple[StepDef, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("machines", "networks", "params"):
            object.__setattr__(self, attr, MappingProxyType(dict(getattr(self, attr))))
        _raise(f"lab {self.id!r}", self.problems())

    def reach(self, machine: str) -> tuple[tuple[int, ...], bool]:
        """What ``machine``'s guest reaches beyond the lab: the host ports (the lab's and its own) and whether it has
        outbound traffic (its own setting, else the lab's)."""
        own = self.machine(machine)
        ports = tuple(sorted({*self.host_ports, *own.host_ports}))
        return ports, self.outbound if own.outbound is None else own.outbound

    def problems(self) -> Problems:
        problems = lab_field_problems(self.id, self.version, self.reset_policy, len(self.machines))
        problems += host_port_problems("reach.host_ports", self.host_ports)
        for kind, table in (("machines", self.machines), ("networks", self.networks), ("params", self.params)):
            for key, value in table.items():
                if key != value.name:
                    problems.append((f"{kind}.{key}", f"is filed under {key!r} but named {value.name!r}"))
        problems += cross_problems(self.machines, self.networks, [(c.id, c) for c in self.checks],
                                   [s.id for s in self.steps])
        return problems

    def step(self, step_id: str) -> StepDef:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise LabFormatError(f"lab {self.id} has no step {step_id!r}")

    def step_checks(self, step_id: str, include_hidden: bool = True) -> tuple[CheckDef, ...]:
        """The checks tied to step ``step_id``, in lab order (hidden ones left out unless ``include_hidden``)."""
        self.step(step_id)
        return tuple(c for c in self.checks if c.step == step_id and (include_hidden or not c.hidden))

    def needs(self, machine: str) -> list[str]:
        """The machines ``machine`` depends on, directly or not, in start order (itself not included)."""
        self.machine(machine)
        wanted: set[str] = set()
        todo = list(self.machines[machine].depends_on)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(self.machines[name].depends_on)
        return [name for wave in self.start_order() for name in wave if name in wanted]

    def machine(self, name: str) -> MachineDef:
        try:
            return self.machines[name]
        except KeyError as err:
            raise LabFormatError(f"lab {self.id} has no machine {name!r}") from err

    def start_order(self) -> list[list[str]]:
        """Machines in waves: each wave depends only on earlier waves, so a wave can start in parallel."""
        done: set[str] = set()
        waves: list[list[str]] = []
        while len(done) < len(self.machines):
            wave = sorted(n for n, m in self.machines.items() if n not in done and set(m.depends_on) <= done)
            waves.append(wave)
            done.update(wave)
        return waves
