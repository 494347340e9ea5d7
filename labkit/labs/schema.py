"""Which keys each table of lab.toml holds and what type each value has.

The loader reads raw TOML against these tables, so an unknown key or a wrong type is found with its key path before any
model is built. Generators (params.py) and check kinds (below) declare their options with the same `ValueType`s, so the
reference in docs/lab-format.md and the validator cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ValueType:
    """A TOML value type as a person would name it ("an integer"), with the test that accepts it."""

    name: str
    accepts: Callable[[object], bool]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _list_of(test: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, list) and all(test(item) for item in value)


STR = ValueType("a string", lambda v: isinstance(v, str))
INT = ValueType("an integer", _is_int)
NUMBER = ValueType("a number", _is_number)
BOOL = ValueType("true or false", lambda v: isinstance(v, bool))
TABLE = ValueType("a table", lambda v: isinstance(v, dict))
STR_LIST = ValueType("a list of strings", _list_of(lambda v: isinstance(v, str)))
#: a port number, or a template string that renders to one (per-student ports)
PORT = ValueType("a port number or a template string", lambda v: _is_int(v) or isinstance(v, str))
PORT_LIST = ValueType("a list of port numbers or template strings", _list_of(PORT.accepts))
#: a host number inside the network's subnet, or an address (may be a template)
ADDRESS = ValueType("a host number or an address string", lambda v: _is_int(v) or isinstance(v, str))
HOST_PORT_LIST = ValueType("a list of port numbers", _list_of(_is_int))
SCALAR_LIST = ValueType("a list of strings or integers", _list_of(lambda v: isinstance(v, str) or _is_int(v)))
#: a file mode: an octal string such as "0644", or a TOML integer such as 0o644
MODE = ValueType("an octal mode such as \"0644\"", lambda v: isinstance(v, str) or _is_int(v))


CHECK_LIST = ValueType("an array of tables [[checks]]", _list_of(lambda v: isinstance(v, dict)))
STEP_LIST = ValueType("an array of tables [[steps]]", _list_of(lambda v: isinstance(v, dict)))


@dataclass(frozen=True)
class TableSpec:
    """The keys one table may hold: each with its type; ``required`` ones must be present."""

    keys: Mapping[str, ValueType]
    required: frozenset[str] = frozenset()


LAB_TABLE = TableSpec(
    keys={
        "id": STR, "title": STR, "version": INT, "instructions": STR, "reset_policy": STR,
        "machines": TABLE, "networks": TABLE, "params": TABLE, "checks": CHECK_LIST, "reach": TABLE,
        "steps": STEP_LIST,
    },
    required=frozenset({"id", "title"}),
)

#: what every guest of the lab reaches beyond its own machines (docs/lab-format.md, "[reach]")
REACH_TABLE = TableSpec(keys={"host_ports": HOST_PORT_LIST, "outbound": BOOL})

MACHINE_TABLE = TableSpec(
    keys={
        "image": STR, "memory": INT, "forwards": PORT_LIST, "networks": TABLE, "depends_on": STR_LIST,
        "startup": STR_LIST, "files": STR, "host_ports": HOST_PORT_LIST, "outbound": BOOL, "backend": STR,
    },
    required=frozenset({"image"}),
)

#: one [[steps]] entry: a step of the guide (docs/lab-format.md, "Steps")
STEP_TABLE = TableSpec(keys={"id": STR, "title": STR}, required=frozenset({"id", "title"}))

NETWORK_TABLE = TableSpec(keys={"subnet": STR}, required=frozenset({"subnet"}))

#: keys every [params.<name>] table has besides its generator's options
PARAM_COMMON = TableSpec(keys={"kind": STR}, required=frozenset({"kind"}))

#: keys every [[checks]] entry has besides its kind's options
CHECK_COMMON = TableSpec(
    keys={
        "id": STR, "title": STR, "points": NUMBER, "machine": STR, "hidden": BOOL, "depends_on": STR_LIST,
        "feedback_pass": STR, "feedback_fail": STR, "kind": STR, "baseline_pass": BOOL, "timeout": NUMBER,
        "step": STR,
    },
    required=frozenset({"id", "kind"}),
)

#: check option kinds whose string values are Jinja2 templates over the student's parameters
TEMPLATE_TYPES = (STR, PORT)

#: The options of each check kind (structure only: labkit.grading runs them). ``regex`` options are compiled after
#: rendering; ``port`` options render to an integer.
CHECK_KINDS: dict[str, TableSpec] = {
    "command": TableSpec(
        keys={"command": STR, "exit_code": INT, "equals": STR, "contains": STR, "regex": STR},
        required=frozenset({"command"}),
    ),
    "file": TableSpec(
        keys={"path": STR, "exists": BOOL, "contains": STR, "regex": STR, "mode": MODE, "owner": STR},
        required=frozenset({"path"}),
    ),
    "port": TableSpec(keys={"port": PORT, "via": STR, "open": BOOL}, required=frozenset({"port"})),
    "http": TableSpec(
        keys={"port": PORT, "path": STR, "via": STR, "status": INT, "equals": STR, "contains": STR, "regex": STR},
        required=frozenset({"port"}),
    ),
    "script": TableSpec(keys={"function": STR}, required=frozenset({"function"})),
}

#: check options that are not templates even though they are strings
CHECK_LITERAL_OPTIONS = frozenset({"via", "function", "mode"})
#: check options that hold regular expressions (checked after rendering)
CHECK_REGEX_OPTIONS = frozenset({"regex"})
#: where a port or http check connects from
VIA = ("guest", "host")
