"""Schemathesis against the real app's ``/api/v1/openapi.json``, in process (WSGI), with real API tokens.

Every operation of the document is called with requests that fit its schema (positive), requests that do not
(negative), and requests whose path names real objects of the test world (c1, alice's machine, snapshot s1, a job),
each by an instructor, another course's instructor, a student or another course's student, chosen per request. The
properties: no answer is a 5xx; answers to schema-valid requests have a documented status, content type, headers and
body; and no job the API queued ended in an unexpected (non-labkit) error.

The world is test_api's (two courses, provisioned, a 1 MB memory budget so a start never boots a guest). Examples are
bounded per operation and derandomized (tests/fuzzing.py) so the run takes about a minute and is the same every time.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import schemathesis
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import state
from .test_api import World, world  # noqa: F401  (the shared fixture)

#: requests per operation: about 30 operations, so some 1,800 requests in all
EXAMPLES = 60
CALLERS = ("teacher", "other", "alice", "carol")
POSITIVE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                   response_headers_conformance, response_schema_conformance]
NEGATIVE_CHECKS = [not_a_server_error]


def real_values(world: World) -> dict[str, list[Any]]:  # noqa: F811
    """Values of path parameters that name objects of the test world, of both courses (the caller may own either
    course or none), and a job of each course's instructor."""
    jobs = [world.wait(world.call(who, "POST", f"/api/v1/courses/{course}/provision"))["id"]
            for who, course in (("teacher", "c1"), ("other", "c2"))]
    return {"course": ["c1", "c2"], "sid": ["alice", "carol"], "lab": ["intro-shell"],
            "name": [world.machines["alice"], world.machines["carol"]], "snapshot": ["s1"], "job_id": jobs}


def operation_cases(operation: Any, values: dict[str, list[Any]]) -> st.SearchStrategy[tuple[Any, bool]]:
    """(case, positive) pairs: with the world's real path parameters (first: hypothesis favours the first
    choices), then generated from the schema, then requests that do not fit the schema."""
    names = [parameter.name for parameter in operation.path_parameters]
    combinations = [dict(zip(names, values, strict=True))
                    for values in itertools.product(*(values[name] for name in names))] if names else []
    real = [operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed) for fixed in combinations]
    generated = operation.as_strategy(GenerationMode.POSITIVE)
    positive = [st.one_of(real), st.one_of(real), generated] if real else [generated]
    negative = operation.as_strategy(GenerationMode.NEGATIVE)
    return st.one_of(*(strategy.map(lambda case: (case, True)) for strategy in positive),
                     negative.map(lambda case: (case, False)))


def keep_the_world(world: World, operation: Any, roster_csv: bytes) -> None:  # noqa: F811
    """Undo what would starve the calls that follow: the roster emptied, snapshot s1 deleted."""
    if operation.path.endswith("/roster"):
        world.call("teacher", "POST", "/api/v1/courses/c1/roster", data=roster_csv, content_type="text/csv")
        world.call("other", "POST", "/api/v1/courses/c2/roster", data=b"id,name,email\ncarol,Student carol,"
                   b"carol@example.org\n", content_type="text/csv")
    if "/snapshots/" in operation.path:
        machines = state(world.app).machines("test")
        for who in ("alice", "carol"):
            if "s1" not in {s["name"] for s in machines.snapshots(world.machines[who])}:
                machines.snapshot(world.machines[who], "s1")


def fuzz_operation(world: World, operation: Any, values: dict[str, list[Any]],  # noqa: F811
                   roster_csv: bytes) -> None:
    @given(pair=operation_cases(operation, values), caller=st.sampled_from(CALLERS))
    @fuzz(EXAMPLES)
    def run(pair: tuple[Any, bool], caller: str) -> None:
        case, positive = pair
        # the caller's real token: a generated one would only ever get a 401
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {world.tokens[caller]}"}
        case.call_and_validate(checks=POSITIVE_CHECKS if positive else NEGATIVE_CHECKS)
        keep_the_world(world, operation, roster_csv)

    run()


def test_every_api_operation_holds_to_its_schema_and_never_answers_5xx(world: World) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", world.app)
    roster = world.call("teacher", "GET", "/api/v1/courses/c1").get_json()["students"]
    roster_csv = ("id,name,email\n" + "".join(f"{s['id']},{s['name']},{s['email']}\n" for s in roster)).encode()
    values = real_values(world)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 25

    for operation in operations:
        try:
            fuzz_operation(world, operation, values, roster_csv)
        except (Exception, BaseExceptionGroup) as err:  # every operation is tried; the test lists all that failed
            failures.append(f"{operation.label}: {err}")

    runner = state(world.app).jobs
    jobs = state(world.app).job_queries.list()
    for job in jobs:
        runner.wait(job.id, timeout=120)
    unexpected = [(job.kind, job.target, job.error) for job in state(world.app).job_queries.list()
                  if (job.error or "").startswith("unexpected error")]
    assert not failures, "\n\n".join(failures)
    assert not unexpected, unexpected


@pytest.mark.parametrize("caller", ["teacher", "alice"])
def test_the_schema_checks_can_fail(world: World, caller: str) -> None:  # noqa: F811
    """The checks above are real: a 500, and a body the schema does not allow, are both caught."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", world.app)
    case = schema["/api/v1/me"]["GET"].Case(headers={"Authorization": f"Bearer {world.tokens[caller]}"})
    response = case.call()
    case.validate_response(response, checks=POSITIVE_CHECKS)  # the real answer passes
    for status, body, needle in ((500, response.content, "Server error"),
                                 (200, b'{"id": "not a number"}', "Response violates schema")):
        changed = Response(status, response.headers, body, response.request, response.elapsed, response.verify)
        with pytest.raises(BaseException) as caught:  # schemathesis raises a BaseExceptionGroup of failures
            case.validate_response(changed, checks=POSITIVE_CHECKS)
        assert needle in str(caught.value) + "".join(str(e) for e in getattr(caught.value, "exceptions", ())), \
            caught.value
