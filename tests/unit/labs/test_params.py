"""Per-student parameters: deterministic for the same inputs, different between students, unguessable without the
course secret, and always inside the declared ranges."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from labkit.errors import LabFormatError
from labkit.labs.model import ImageRef, Lab, MachineDef, ParamDef
from labkit.labs.params import GENERATORS, PASSWORD_ALPHABET, WORDS, Stream, student_params

SECRET = b"course-secret-0123456789abcdef"
MACHINE = {"m": MachineDef("m", ImageRef("tiny"))}


def make(params: dict[str, tuple[str, dict[str, object]]], lab_id: str = "lab") -> Lab:
    return Lab(lab_id, "A lab", machines=MACHINE,
               params={name: ParamDef(name, kind, options) for name, (kind, options) in params.items()})


ALL = make({
    "port": ("int", {"min": 8000, "max": 8999}),
    "color": ("choice", {"choices": ["red", "green", "blue"]}),
    "user": ("word", {"digits": 3}),
    "pw": ("password", {"length": 16}),
    "token": ("hex", {"length": 32}),
    "ip": ("ipv4", {"subnet": "192.168.0.0/16"}),
    "net": ("ipv4", {"subnet": "10.64.0.0/10", "prefix": 24}),
})


def test_registry_is_explicit() -> None:
    assert set(GENERATORS) == {"int", "choice", "word", "password", "hex", "ipv4"}


def test_same_inputs_same_values() -> None:
    first = student_params(ALL, "net101", "alice", SECRET)
    assert first == student_params(ALL, "net101", "alice", SECRET)
    assert first == student_params(ALL, "net101", "alice", SECRET.decode())  # str and bytes secrets agree
    assert list(first) == list(ALL.params)


def test_values_are_in_range() -> None:
    for number in range(200):
        values = student_params(ALL, "c", f"s{number}", SECRET)
        assert 8000 <= int(values["port"]) <= 8999  # type: ignore[call-overload]
        assert values["color"] in ("red", "green", "blue")
        user = str(values["user"])
        assert user[:-3] in WORDS and user[-3:].isdigit()
        assert len(str(values["pw"])) == 16 and set(str(values["pw"])) <= set(PASSWORD_ALPHABET)
        assert len(str(values["token"])) == 32 and int(str(values["token"]), 16) >= 0
        ip = ipaddress.IPv4Address(values["ip"])
        assert ip in ipaddress.IPv4Network("192.168.0.0/16") and str(ip) not in ("192.168.0.0", "192.168.255.255")
        net = ipaddress.IPv4Network(values["net"])
        assert net.prefixlen == 24 and net.subnet_of(ipaddress.IPv4Network("10.64.0.0/10"))


def test_int_range_reaches_both_ends() -> None:
    lab = make({"n": ("int", {"min": 1, "max": 3})})
    seen = {student_params(lab, "c", f"s{i}", SECRET)["n"] for i in range(100)}
    assert seen == {1, 2, 3}


def test_students_get_different_values() -> None:
    values = [student_params(ALL, "c", f"student{i}", SECRET) for i in range(50)]
    for name in ("pw", "token", "net", "ip"):
        assert len({str(v[name]) for v in values}) == 50, name
    assert len({v["user"] for v in values}) > 45
    assert len({v["color"] for v in values}) == 3


@pytest.mark.parametrize(
    ("course", "student", "lab_id"),
    [("other", "alice", "lab"), ("net101", "bob", "lab"), ("net101", "alice", "lab2")],
)
def test_every_input_changes_the_values(course: str, student: str, lab_id: str) -> None:
    base = student_params(ALL, "net101", "alice", SECRET)
    lab = ALL if lab_id == "lab" else make({n: (p.kind, dict(p.options)) for n, p in ALL.params.items()}, lab_id)
    other = student_params(lab, course, student, SECRET)
    assert base["token"] != other["token"] and base["pw"] != other["pw"]


def test_values_cannot_be_computed_without_the_secret() -> None:
    """A student knows the scheme, every name and their own values; without the secret, a classmate's values are
    whatever HMAC gives under an unknown key: a different secret gives unrelated values for everybody."""
    mine = student_params(ALL, "net101", "alice", SECRET)
    theirs = student_params(ALL, "net101", "bob", SECRET)
    guessed_secret = b"course-secret-0123456789abcdeF"
    assert student_params(ALL, "net101", "alice", guessed_secret)["token"] != mine["token"]
    assert student_params(ALL, "net101", "bob", guessed_secret)["token"] != theirs["token"]
    # no value is the plain hash of public names
    public = hashlib.sha256(b"net101\x00bob\x00lab\x00token").hexdigest()
    assert theirs["token"] not in public


def test_short_secret_is_refused() -> None:
    with pytest.raises(LabFormatError, match="at least 16"):
        student_params(ALL, "c", "s", b"short")


def test_adding_a_parameter_keeps_the_others() -> None:
    small = make({"token": ("hex", {}), "port": ("int", {"min": 1, "max": 60000})})
    large = make({"extra": ("password", {}), "token": ("hex", {}), "port": ("int", {"min": 1, "max": 60000})})
    a, b = student_params(small, "c", "s", SECRET), student_params(large, "c", "s", SECRET)
    assert (a["token"], a["port"]) == (b["token"], b["port"])
    assert len(str(a["token"])) == 16 and len(str(b["extra"])) == 12  # defaults


def test_ipv4_values_of_one_student_never_overlap() -> None:
    lab = make({f"n{i}": ("ipv4", {"subnet": "10.0.0.0/28", "prefix": 30}) for i in range(4)})
    for student in range(30):
        nets = [ipaddress.IPv4Network(v) for v in student_params(lab, "c", f"s{student}", SECRET).values()]
        assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1:])
    crowded = make({f"n{i}": ("ipv4", {"subnet": "10.0.0.0/28", "prefix": 30}) for i in range(5)})
    with pytest.raises(LabFormatError, match="larger range"):
        student_params(crowded, "c", "s", SECRET)


def test_stream_below_is_uniform_enough() -> None:
    stream = Stream(SECRET, b"label")
    counts = [0] * 6
    for _ in range(6000):
        counts[stream.below(6)] += 1
    assert all(800 < count < 1200 for count in counts)


@pytest.mark.parametrize(
    ("kind", "options", "says"),
    [
        ("int", {"min": 5}, "needs 'max'"),
        ("int", {"min": 5, "max": 1}, "smaller than min"),
        ("int", {"min": 1, "max": "9"}, "must be an integer"),
        ("choice", {"choices": []}, "empty"),
        ("choice", {"choices": ["a", "a"]}, "twice"),
        ("choice", {"choices": [1.5]}, "strings or integers"),
        ("word", {"digits": 9}, "between 0 and 6"),
        ("password", {"length": 200}, "between 6 and 128"),
        ("hex", {"length": 0}, "between 1 and 256"),
        ("ipv4", {}, "needs 'subnet'"),
        ("ipv4", {"subnet": "10.0.0.1/8"}, "host bits"),
        ("ipv4", {"subnet": "10.0.0.0/31"}, "too small"),
        ("ipv4", {"subnet": "10.0.0.0/8", "prefix": 31}, "at most 30"),
        ("uuid", {}, "unknown generator kind"),
    ],
)
def test_bad_generator_options(kind: str, options: dict[str, object], says: str) -> None:
    with pytest.raises(LabFormatError, match=says):
        ParamDef("p", kind, options)
