"""Jinja2 templates of a lab: instructions, ``files/<machine>/**.j2``, startup scripts and the templated values of
lab.toml, rendered with one student's parameters.

Instructors share labs, so templates run in an immutable sandbox with StrictUndefined: a missing variable is an error,
never a blank in a student's machine. Lab files are walked without trusting symlinks: any path that resolves outside the
lab folder is refused, and nothing is ever read from or written outside the lab and the target folder.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from labkit.atomic import write_atomic
from labkit.errors import LabFormatError
from labkit.labs.model import RESERVED_VARIABLES, CheckDef, Lab, MachineDef, is_template, startup_name
from labkit.labs.schema import CHECK_KINDS, CHECK_LITERAL_OPTIONS, PORT, STR

TEMPLATE_SUFFIX = ".j2"
LAB_FILE = "lab.toml"
#: a rendered template larger than this is refused (a runaway loop, not a lab file)
MAX_OUTPUT = 16 << 20
_MAX_REPEAT = 1_000_000
#: One rendering may take this many loop steps and function or macro calls in all, and this many seconds: far more
#: than any lab file needs, and a runaway ``{% for %}`` over ``range(100000)`` twice stops in about a second.
MAX_STEPS = 1_000_000
RENDER_SECONDS = 2.0
_COUNTED = "labkit_counted"

#: (line inside the template or None, message)
TemplateProblem = tuple[int | None, str]


def _host(network: str, number: int) -> str:
    """``{{ lan | host(2) }}``: the address ``number`` places after the network address of ``network``."""
    net = ipaddress.IPv4Network(str(network), strict=False)
    if not 0 < int(number) < net.num_addresses - 1:
        raise ValueError(f"host number {number} is outside {net}")
    return str(net.network_address + int(number))


def _prefixlen(network: str) -> int:
    return ipaddress.IPv4Network(str(network), strict=False).prefixlen


def _netmask(network: str) -> str:
    return str(ipaddress.IPv4Network(str(network), strict=False).netmask)


class TemplateTooCostly(SecurityError):
    """A template ran more loop steps and calls, or longer, than a lab file may (a runaway loop or recursion)."""


@dataclass
class _RenderBudget:
    """What one rendering may still spend: loop steps and calls together, and wall-clock time."""

    deadline: float
    steps: int = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateTooCostly(f"template stopped after {MAX_STEPS:,} loop steps and calls: a loop or a macro "
                                    "runs far too long for a lab file")
        if time.monotonic() > self.deadline:
            raise TemplateTooCostly(f"template stopped after {RENDER_SECONDS:g} s: a loop or a macro runs far too "
                                    "long for a lab file")


_BUDGET: contextvars.ContextVar[_RenderBudget | None] = contextvars.ContextVar("labkit_render_budget", default=None)


def _counted(iterable: Any) -> Any:
    """The iterable of a ``{% for %}`` (put there when the template is compiled): each item costs one step."""
    budget = _BUDGET.get()
    if budget is None:
        return iterable
    return _each_counted(iterable, budget)


def _each_counted(iterable: Any, budget: _RenderBudget) -> Iterator[Any]:
    for item in iterable:
        budget.step()
        yield item


def _replace(value: Any, old: Any, new: Any, count: int | None = None) -> Any:
    """The ``replace`` filter, refusing a result beyond `MAX_OUTPUT` before making it."""
    text, old, new = str(value), str(old), str(new)
    hits = text.count(old) if old else len(text) + 1
    if count is not None and int(count) >= 0:
        hits = min(hits, int(count))
    if len(text) + hits * len(new) > MAX_OUTPUT:
        raise SecurityError("replacing makes the text too large")
    return text.replace(old, new, -1 if count is None else int(count))


#: str methods whose integer arguments are sizes of the result
_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


class LabEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox every lab template runs in; also refuses huge string repeats, powers and paddings, and counts
    loop steps and calls against the rendering's budget (`MAX_STEPS`, `RENDER_SECONDS`)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > _MAX_REPEAT:
                    raise SecurityError(f"repeating a value {count} times makes it too large")
        if operator == "**" and isinstance(right, int) and abs(right) > 128:
            raise SecurityError(f"the power {right} is too large")
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.step()
        owner, method = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        sizes = [a for a in (*args, *kwargs.values()) if isinstance(a, int)]
        if isinstance(owner, str) and method in _SIZED_METHODS and any(size > _MAX_REPEAT for size in sizes):
            raise SecurityError(f"{method} would make the text too large")
        if isinstance(owner, str) and method == "replace":
            return _replace(owner, *args, **kwargs)
        return super().call(context, obj, *args, **kwargs)


def make_environment() -> LabEnvironment:
    env = LabEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(host=_host, prefixlen=_prefixlen, netmask=_netmask, replace=_replace)
    env.filters[_COUNTED] = _counted
    return env


_ENV = make_environment()


def _count_loops(tree: nodes.Template) -> nodes.Template:
    """Make every ``{% for %}`` draw its items through `_counted`, so a loop spends the rendering's budget."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _COUNTED, [], [], None, None, lineno=loop.iter.lineno)
    return tree


@functools.lru_cache(maxsize=1024)
def _compile(source: str, name: str) -> Template:
    """Compiled once per (source, name): provisioning renders the same templates for every student."""
    code = _ENV.compile(_count_loops(_ENV.parse(source, name=name, filename=name)), name=name, filename=name)
    return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)


def _error_line(err: BaseException, name: str) -> int | None:
    """The template line an error was raised at: Jinja2 rewrites tracebacks so template frames carry its line."""
    if isinstance(err, TemplateSyntaxError):
        return err.lineno
    line = None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == name:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def syntax_problems(source: str, name: str, known: set[str]) -> list[TemplateProblem]:
    """Syntax errors, and variables used but neither parameters nor labkit's own (``known``), with their lines."""
    try:
        tree = _ENV.parse(source, name=name, filename=name)
        missing = meta.find_undeclared_variables(tree) - known - set(_ENV.globals)
    except TemplateSyntaxError as err:  # also unknown filters and tests, found while compiling
        return [(err.lineno, f"template syntax error: {err.message}")]
    problems: list[TemplateProblem] = []
    for var in sorted(missing):
        line = min((n.lineno for n in tree.find_all(nodes.Name) if n.name == var and n.ctx == "load"), default=None)
        problems.append((line, f"template uses {var!r}, which is not a parameter of this lab"))
    return problems


def try_render(source: str, context: Mapping[str, object], name: str) -> tuple[str | None, TemplateProblem | None]:
    """Render ``source``; on failure return the line and one sentence instead of raising."""
    token = _BUDGET.set(_RenderBudget(time.monotonic() + RENDER_SECONDS))
    try:
        text = _compile(source, name).render(dict(context))
    except TemplateSyntaxError as err:
        return None, (err.lineno, f"template syntax error: {err.message}")
    except TemplateTooCostly as err:
        return None, (_error_line(err, name), str(err))
    except RecursionError as err:
        return None, (_error_line(err, name), "template stopped: a macro calls itself too deeply")
    except SecurityError as err:
        return None, (_error_line(err, name), f"template does something the sandbox forbids: {err}")
    except TemplateError as err:  # UndefinedError and friends
        return None, (_error_line(err, name), f"template error: {err}")
    except (ArithmeticError, LookupError, TypeError, ValueError) as err:
        return None, (_error_line(err, name), f"template failed: {err}")
    finally:
        _BUDGET.reset(token)
    if len(text) > MAX_OUTPUT:
        return None, (None, f"template renders to {len(text)} characters; the limit is {MAX_OUTPUT}")
    return text, None


def render_text(source: str, context: Mapping[str, object], name: str, file: str | None = None) -> str:
    """Render one template or raise `LabFormatError` naming ``file`` (default ``name``) and the template line."""
    text, problem = try_render(source, context, name)
    if problem is not None:
        line, message = problem
        raise LabFormatError(message, file or name, line)
    assert text is not None
    return text


def template_context(lab: Lab, params: Mapping[str, object], course: str, student: str,
                     topology: Any | None = None) -> dict[str, object]:
    """What every template of one student sees: the parameters, ``lab``, ``course``, ``student``, and (once the
    topology is planned) ``networks.<net>`` = subnet and ``addresses.<machine>.<net>`` = address."""
    context: dict[str, object] = dict(params)
    context.update(lab=lab.id, course=course, student=student)
    if topology is not None:
        context["networks"] = {name: str(net) for name, net in topology.subnets.items()}
        context["addresses"] = {m: {n: str(a.ip) for n, a in nets.items()} for m, nets in topology.addresses.items()}
    return context


def known_variables(lab: Lab | None, params: set[str] | None = None) -> set[str]:
    return set(params if params is not None else (lab.params if lab else ())) | RESERVED_VARIABLES


# ---- paths inside the lab folder ----


def lab_path(root: Path, rel: str) -> tuple[Path | None, str | None]:
    """``rel`` inside the lab folder ``root`` (resolving symlinks), or None and why it is refused."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or "\\" in rel:
        return None, f"path {rel!r} must be relative to the lab folder"
    if ".." in pure.parts:
        return None, f"path {rel!r} may not contain '..'"
    real_root = root.resolve()
    real = (root / pure).resolve()
    if not real.is_relative_to(real_root):
        return None, f"path {rel!r} leads outside the lab folder (to {real})"
    return real, None


@dataclass(frozen=True)
class LabFile:
    """One file of ``files/<machine>/``: where it is read and where it goes in the guest (``.j2`` dropped)."""

    source: Path
    rel: str  # as written under files/<machine>/
    target: PurePosixPath
    template: bool
    executable: bool


def machine_files(root: Path, machine: MachineDef) -> tuple[list[LabFile], list[tuple[str, str]]]:
    """The files a machine gets, and the problems found: (path under the lab, message). Symlinks are followed only
    while they stay inside the lab; a missing default ``files/<machine>`` folder just means no files."""
    problems: list[tuple[str, str]] = []
    folder, why = lab_path(root, machine.files)
    if folder is None:
        return [], [(machine.files, why or "")]
    if not folder.exists():
        if machine.files != f"files/{machine.name}":
            problems.append((machine.files, f"files folder {machine.files!r} of machine {machine.name} is missing"))
        return [], problems
    if not folder.is_dir():
        return [], [(machine.files, f"{machine.files!r} of machine {machine.name} is not a folder")]
    real_root = root.resolve()
    entries: list[LabFile] = []
    targets: dict[PurePosixPath, str] = {}
    for rel, path in _walk(folder, PurePosixPath(machine.files), real_root, {folder}, problems):
        inner = PurePosixPath(rel).relative_to(machine.files)
        template = inner.name.endswith(TEMPLATE_SUFFIX) and len(inner.name) > len(TEMPLATE_SUFFIX)
        target = inner.with_name(inner.name[: -len(TEMPLATE_SUFFIX)]) if template else inner
        if target in targets:
            problems.append((rel, f"{rel} and {targets[target]} both become {target} in machine {machine.name}"))
            continue
        targets[target] = rel
        executable = bool(path.stat().st_mode & 0o111)
        entries.append(LabFile(path, str(inner), target, template, executable))
    return entries, problems


def _walk(folder: Path, rel: PurePosixPath, real_root: Path, seen: set[Path],
          problems: list[tuple[str, str]]) -> Iterator[tuple[str, Path]]:
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        child_rel = rel / child.name
        info = child.lstat()
        real = child
        if stat.S_ISLNK(info.st_mode):
            try:
                real = child.resolve(strict=True)
            except (OSError, RuntimeError):
                problems.append((str(child_rel), f"symlink {child_rel} is broken"))
                continue
            if not real.is_relative_to(real_root):
                problems.append((str(child_rel), f"symlink {child_rel} points outside the lab folder (to {real})"))
                continue
            info = real.stat()
        if stat.S_ISDIR(info.st_mode):
            if real.resolve() in seen:
                problems.append((str(child_rel), f"symlink {child_rel} makes a loop"))
                continue
            yield from _walk(real, child_rel, real_root, seen | {real.resolve()}, problems)
        elif stat.S_ISREG(info.st_mode):
            yield str(child_rel), real
        else:
            problems.append((str(child_rel), f"{child_rel} is not a file, folder or symlink"))


def _read_text(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LabFormatError(f"template {shown} is not UTF-8 text ({err.reason} at byte {err.start})", shown) from err
    except OSError as err:
        raise LabFormatError(f"cannot read {shown}: {err.strerror}", shown) from err


def _require_folder(lab: Lab) -> Path:
    if lab.folder is None:
        raise LabFormatError(f"lab {lab.id} has no folder to read its files from")
    return lab.folder


def render_instructions(lab: Lab, context: Mapping[str, object]) -> str:
    """The student's instructions (Markdown) with their values filled in."""
    root = _require_folder(lab)
    path, why = lab_path(root, lab.instructions)
    shown = str(root / lab.instructions)
    if path is None:
        raise LabFormatError(why or "bad path", str(root / LAB_FILE))
    return render_text(_read_text(path, shown), context, lab.instructions, shown)


def render_machine_files(lab: Lab, machine: str, context: Mapping[str, object], target: Path) -> list[PurePosixPath]:
    """Copy ``files/<machine>/`` into ``target``, rendering ``*.j2`` files (the suffix dropped). Returns the paths
    written, relative to ``target``. Executable files stay executable (0755), others get 0644."""
    root = _require_folder(lab)
    entries, problems = machine_files(root, lab.machine(machine))
    if problems:
        rel, message = problems[0]
        raise LabFormatError(message, str(root / rel))
    target.mkdir(parents=True, exist_ok=True)
    real_target = target.resolve()
    written: list[PurePosixPath] = []
    for entry in entries:
        dest = real_target / entry.target
        folder = real_target
        for part in entry.target.parent.parts:  # never create or write through a symlink in the target
            folder = folder / part
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise LabFormatError(f"refusing to write {entry.target}: {folder} is a symlink or a file", str(target))
            folder.mkdir(exist_ok=True)
        if dest.is_symlink():
            raise LabFormatError(f"refusing to write {entry.target}: the target folder holds a symlink there",
                                 str(target))
        if entry.template:
            shown = str(root / lab.machine(machine).files / entry.rel)
            data = render_text(_read_text(entry.source, shown), context, entry.rel, shown).encode()
        else:
            data = entry.source.read_bytes()
        write_atomic(dest, data, 0o755 if entry.executable else 0o644)
        written.append(entry.target)
    return written


def render_startup(lab: Lab, machine: str, context: Mapping[str, object]) -> list[tuple[str, str]]:
    """A machine's startup scripts as (file name, text), ``.j2`` ones rendered: the shape SeedSpec takes."""
    root = _require_folder(lab)
    scripts: list[tuple[str, str]] = []
    for rel in lab.machine(machine).startup:
        path, why = lab_path(root, rel)
        if path is None:
            raise LabFormatError(why or "bad path", str(root / LAB_FILE))
        shown = str(root / rel)
        text = _read_text(path, shown)
        if rel.endswith(TEMPLATE_SUFFIX):
            text = render_text(text, context, rel, shown)
        scripts.append((startup_name(rel), text))
    return scripts


def render_value(value: object, context: Mapping[str, object], key: str, file: str = LAB_FILE) -> object:
    """A lab.toml value with its template (if any) rendered; other values unchanged."""
    if isinstance(value, str) and is_template(value):
        return render_text(value, context, key, file)
    return value


def to_port(value: object, what: str) -> int:
    """A rendered port value as an int in 1..65535, or a `LabFormatError` naming ``what``."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise LabFormatError(f"{what} is {value!r}, not a port number between 1 and 65535")
    return int(text)


def render_forwards(machine: MachineDef, context: Mapping[str, object]) -> tuple[int, ...]:
    """The machine's forwarded guest ports for one student (templates rendered, duplicates refused)."""
    ports = [to_port(render_value(p, context, f"machines.{machine.name}.forwards"), f"a forward of {machine.name}")
             for p in machine.forwards]
    if len(set(ports)) != len(ports):
        raise LabFormatError(f"machine {machine.name} forwards the same guest port twice: {ports}")
    return tuple(ports)


def render_check(check: CheckDef, context: Mapping[str, object], index: int = 0) -> dict[str, object]:
    """A check's options with templates rendered and ``port`` as an int, plus ``feedback_pass``/``feedback_fail``:
    what labkit.grading runs for one student."""
    spec = CHECK_KINDS[check.kind]
    out: dict[str, object] = {}
    for key, value in check.options.items():
        if key not in CHECK_LITERAL_OPTIONS and spec.keys.get(key) in (STR, PORT):
            value = render_value(value, context, f"checks[{index}].{key}")
        out[key] = to_port(value, f"port of check {check.id}") if key == "port" else value
    out["feedback_pass"] = render_value(check.feedback_pass, context, f"checks[{index}].feedback_pass")
    out["feedback_fail"] = render_value(check.feedback_fail, context, f"checks[{index}].feedback_fail")
    return out
