"""Fuzzing lab.toml loading: a lab folder is written by an instructor (or downloaded from anyone), so whatever its
lab.toml holds, `load_lab` gives a `Lab` or one `LabFormatError`, `validate_lab` gives a list of problems, and neither
raises anything else nor writes into the lab folder.

Three kinds of input: any bytes; TOML-ish text (the valid sample lab with lines cut, doubled or spliced with TOML
fragments); and structured-but-wrong documents (the valid lab's own tables with one value replaced by any TOML value,
a key dropped, or an unknown key added), written as real TOML so they get past the parser to the schema and models.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from labkit.errors import LabFormatError, LabkitError
from labkit.labs.loader import load_lab, validate_lab

# ---- writing TOML (the standard library only reads it) -------------------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` as a TOML inline value: strings, numbers, booleans, dates, arrays and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        # a JSON string is a TOML basic string once DEL (allowed raw in JSON, not in TOML) is escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{toml_value(key)} = {toml_value(value)}\n" for key, value in data.items())


SCALARS = st.one_of(
    st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30),
    st.sampled_from(["", "..", "../../etc/passwd", "/etc/passwd", "{{ undefined }}", "{% for %}", "tiny", "tiny:1",
                     "a", "b", "lan", "10.0.0.0/8", "300.1.1.1/33", "0", "-1", "each-session", "never", "x" * 300]),
    st.dates(), st.datetimes(), st.times(),
)
#: keys a lab's author may write: labkit's own, and names with the characters of its key paths ("a.b", "x[1]")
KEYS = st.one_of(st.sampled_from(["[", "x[", "a.b", "[0]", "x[0]", "]", " ", "kind", "id", "subnet", "port"]),
                 st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)),
                      max_leaves=12)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a parsed TOML document (table keys and array indexes)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_of(item, (*prefix, index))
    return found


@st.composite
def wrong_documents(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """The valid lab with one to three changes: a value replaced, a key dropped, or an unknown key added."""
    data = json.loads(json.dumps(valid))  # a deep copy (the sample lab has no dates)
    for _ in range(draw(st.integers(1, 3))):
        # deepest first: hypothesis favours the first choices, and the nested values are the ones models check
        path = draw(st.sampled_from(sorted(paths_of(data), key=lambda p: -len(p))))
        *parents, last = path
        holder: Any = data
        for step in parents:
            holder = holder[step]
        change = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if change == "replace":
            holder[last] = draw(VALUES)
        elif change == "drop":
            del holder[last]
        elif isinstance(holder, dict):
            holder[draw(KEYS)] = draw(VALUES)
        else:
            holder.append(draw(VALUES))
        if not paths_of(data):
            break
    return data


FRAGMENTS = st.sampled_from([
    "[machines.a]\n", "[[checks]]\n", "[params.x]\nkind = \"int\"\n", "= 1\n", "id = \n", "\"\"\"\n", "'''",
    "x = [1, \"a\"]\n", "a.b.c = 1\n", "[networks.lan]\nsubnet = \"{{ lan }}\"\n", "\x00", "\ufeff", "\r\n",
    "depends_on = [\"a\", \"a\"]\n", "memory = 99999999999999999999\n", "version = -1\n", "[[machines]]\n",
    "kind = \"script\"\nfunction = \"os.system\"\n", "forwards = [0, 65536, \"x\"]\n",
])


@st.composite
def tomlish(draw: st.DrawFn, valid_text: str) -> bytes:
    """The sample lab.toml with lines cut, repeated, swapped or spliced with TOML fragments."""
    lines = valid_text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines)))
        action = draw(st.sampled_from(["cut", "repeat", "fragment", "text", "truncate"]))
        if action == "cut" and at < len(lines):
            del lines[at]
        elif action == "repeat" and at < len(lines):
            lines.insert(at, lines[at])
        elif action == "fragment":
            lines.insert(at, draw(FRAGMENTS))
        elif action == "text":
            lines.insert(at, draw(st.text(max_size=40)))
        elif action == "truncate" and at < len(lines):
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
    return "".join(lines).encode("utf-8", "surrogatepass")


# ---- the property --------------------------------------------------------------------------------------------------


def folder_state(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def load_everything(lab: Path, raw: bytes) -> None:
    """Write ``raw`` as the lab's lab.toml, then load and validate it: a Lab, or LabFormatError, and no writes."""
    (lab / "lab.toml").write_bytes(raw)
    before = folder_state(lab.parent)
    problems = validate_lab(lab, known_images={"tiny": "uml", "tiny:1": "uml"})
    assert all(str(problem) for problem in problems)
    try:
        load_lab(lab)
    except LabFormatError as err:
        assert str(err)
    except LabkitError as err:  # pragma: no cover - the message says which kind escaped
        pytest.fail(f"load_lab raised {type(err).__name__}, not a LabFormatError: {err}")
    assert folder_state(lab.parent) == before, "loading a lab wrote into its folder"


@pytest.fixture
def lab(make_lab: Callable[..., Path]) -> Path:
    return make_lab()


@given(raw=st.binary(max_size=3000))
@fuzz(150)
def test_any_bytes_as_lab_toml(lab: Path, raw: bytes) -> None:
    load_everything(lab, raw)


@given(data=st.data())
@fuzz(200)
def test_tomlish_text_as_lab_toml(lab: Path, valid_toml: str, data: st.DataObject) -> None:
    load_everything(lab, data.draw(tomlish(valid_toml)))


@given(data=st.data())
@fuzz(300)
def test_structured_but_wrong_lab_toml(lab: Path, valid_toml: str, data: st.DataObject) -> None:
    document = data.draw(wrong_documents(tomllib.loads(valid_toml)))
    text = toml_document(document)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:  # the writer above only writes what TOML allows
        pytest.fail(f"the test wrote invalid TOML: {text!r}")
    load_everything(lab, text.encode())


def test_the_writer_round_trips_the_sample_lab(valid_toml: str) -> None:
    """The TOML writer is right: the sample lab survives a round trip (so fuzzed documents are what was drawn)."""
    data = tomllib.loads(valid_toml)
    assert tomllib.loads(toml_document(data)) == data


def test_an_option_named_with_a_bracket_is_a_problem_not_a_crash(make_lab: Callable[..., Path]) -> None:
    """Found by the fuzzer: an unknown generator option ``"x["`` made the key parser raise ValueError."""
    lab = make_lab(replace={"prefix = 24\n": 'prefix = 24\n"x[" = 1\n"a.b[2]" = 2\n'})
    problems = [str(p) for p in validate_lab(lab)]
    assert any("unknown option 'x['" in p for p in problems) and any("'a.b[2]'" in p for p in problems), problems
    assert all(re.search(r"lab\.toml:\d+: params\.lan\.", p) for p in problems), problems  # each with a line
