"""No route answers 500, whatever it is sent: every rule of the app's URL map (the pages under /teach and /my, login,
set-password, jobs, audit, the console's WebSocket, static files and the JSON API), each of its methods, fuzzed.

For each rule and method, hypothesis draws who asks (the course's instructor, its student, or nobody: with a session
cookie and, under /api, a bearer token), the path parameters (the world's real course, machine, snapshot, lab and job
names, or ids that are huge, negative or not numbers, long strings, CR/LF, NUL, unicode, path tricks), a query string
and a form or JSON body with the same kinds of values (with a valid CSRF token most of the time, so a form gets past
CSRF to the view). The app runs with TESTING on, so an unexpected exception is raised here instead of becoming a 500.

The world is test_api's: two courses over the real intro-shell lab, provisioned, with a 1 MB memory budget, so no
start ever boots a guest. Draws are derandomized (tests/fuzzing.py): the same requests on every run.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any
from urllib.parse import quote, urlencode

from flask import Flask
from flask.testing import FlaskClient
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.routing import Rule

from web.access import SESSION_SECRET, SESSION_STAMP, SESSION_USER

from .conftest import csrf_token, state
from .test_api import World, world  # noqa: F401  (the shared fixture)

#: requests per rule and method: about 70 of them, so some 1,400 requests in all
EXAMPLES = 20
#: the values every rule gets in every place (test_every_route_with_every_hostile_value): the kinds that broke before
SWEEP = [str(2**63), "-1", "0", "x" * 3000, "/my\r\nSet-Cookie: x=1", "a\x00b", "é😀\u202e", "../x", ""]
HUGE = [str(2**63), str(2**63 - 1), str(2**64), "9" * 40, "-1", "0", "-9223372036854775809"]
HOSTILE = st.one_of(
    st.sampled_from(["", " ", "x" * 5000, "a\r\nSet-Cookie: x=1", "\r", "\n", "\x00", "a\x00b", "\x7f", "..", "../..",
                     "%2e%2e", "%00", "é", "\u202e", "😀", "\ufeff", "<script>", "'", '"', "\\", "//evil.example",
                     "/\t/evil.example", "null", "true", "[]", "{}", "1.5", "1e400", "NaN", *HUGE]),
    st.text(max_size=40),
    st.integers().map(str),
)
FIELDS = ["job", "before", "next", "detail", "student", "lab", "machine", "format", "back", "name", "confirm",
          "password", "username", "upgrade", "submissions", "snapshot", "csrf_token"]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=8)
WHO = ["teacher", "alice", None]


def real_values(world: World) -> dict[str, list[str]]:  # noqa: F811
    """Path parameter values that name real objects of the world (two of each: the caller's and another's)."""
    jobs = [str(world.wait(world.call(who, "POST", f"/api/v1/courses/{course}/provision"))["id"])
            for who, course in (("teacher", "c1"), ("other", "c2"))]
    machines = [world.machines["alice"], world.machines["carol"]]
    return {"course": ["c1", "c2"], "name": machines, "machine_name": machines, "lab": ["intro-shell"],
            "sid": ["alice", "carol"], "snap": ["s1"], "snapshot": ["s1"], "job_id": jobs,
            "filename": ["css/site.css", "js/jobs.js"],
            "token": [link.token for link in state(world.app).accounts("teacher").create_links("c1", ["bob"])]}


def logged_in(app: Flask, client: FlaskClient, username: str, tokens: dict[str, str]) -> None:
    """Keep ``client`` logged in as ``username`` (a fuzzed logout, link or reset may have ended its session), without
    the login form: fuzzed logins may have made the rate limiter block this address."""
    accounts = state(app).accounts("test")
    user = accounts.get(username)
    with client.session_transaction() as session:
        secret = session.get(SESSION_SECRET)
        fresh = session.get(SESSION_USER) != user.id or session.get(SESSION_STAMP) != user.stamp \
            or "csrf_token" not in session or not isinstance(secret, str) \
            or accounts.get_by_session(user.id, secret) is None  # a fuzzed logout ends the server-side session
        session[SESSION_USER], session[SESSION_STAMP] = user.id, user.stamp
        if fresh:
            session[SESSION_SECRET] = accounts.open_session(user.id)
    if fresh or username not in tokens:
        tokens[username] = csrf_token(client, "/my/" if user.is_student else "/teach/")


def rule_requests(rule: Rule, method: str, values: dict[str, list[str]]) -> st.SearchStrategy[dict[str, Any]]:
    """One request to ``rule`` with ``method``: who, path, query, body (real values and forms first: hypothesis
    favours the first choices, and those get past the lookups and CSRF into the views)."""
    api = rule.rule.startswith("/api/")
    arguments = {name: st.one_of(st.sampled_from(values.get(name, ["x"])), HOSTILE) for name in rule.arguments}
    form = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), HOSTILE, max_size=4)
    bodies = {"form": form.map(lambda d: ("form", d)), "json": JSON.map(lambda value: ("json", value)),
              "raw": st.binary(max_size=300).map(lambda raw: ("raw", raw)),
              "file": st.tuples(st.binary(max_size=300), HOSTILE).map(lambda pair: ("file", pair))}
    order = ("json", "raw", "form") if api else ("form", "file", "json", "raw")
    body = st.one_of(*(bodies[kind] for kind in order))
    return st.fixed_dictionaries({
        "who": st.sampled_from(WHO), "path": st.fixed_dictionaries(arguments),
        "query": st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), HOSTILE, max_size=3),
        "body": body if method in ("POST", "PUT", "PATCH", "DELETE") else st.none(),
        "csrf": st.sampled_from([True, True, True, False]),
        "bearer": st.sampled_from([True, True, False]) if api else st.just(False),
    })


_VARIABLE = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")


def build_path(rule: Rule, arguments: dict[str, str]) -> str:
    """The rule's path with each variable replaced by its quoted value (a ``path:`` variable may hold "/")."""
    return _VARIABLE.sub(lambda m: quote(arguments[m.group(2)], safe="/" if m.group(1) == "path" else ""), rule.rule)


def send(world: World, clients: dict[str, FlaskClient], tokens: dict[str, str], rule: Rule, method: str,  # noqa: F811
         request: dict[str, Any]) -> int:
    who = request["who"]
    client = clients[who or "anonymous"]
    if who is not None:
        logged_in(world.app, client, who, tokens)
    elif "anonymous" not in tokens:
        tokens["anonymous"] = csrf_token(client, "/login")
    headers = {}
    if who is not None and request["bearer"]:
        headers["Authorization"] = f"Bearer {world.tokens[who]}"
    path = build_path(rule, request["path"])
    query = urlencode(request["query"])
    kwargs: dict[str, Any] = {"headers": headers}
    if request["body"] is not None:
        kind, value = request["body"]
        token = tokens[who or "anonymous"] if request["csrf"] else "forged"
        if kind == "form":
            kwargs["data"] = {**value, "csrf_token": token}
        elif kind == "json":
            kwargs["data"], kwargs["content_type"] = json.dumps(value), "application/json"
        elif kind == "raw":
            kwargs["data"], kwargs["content_type"] = value, "text/csv"
        else:
            raw, filename = value
            kwargs["data"] = {"csrf_token": token, "roster": (io.BytesIO(raw), filename)}
            kwargs["content_type"] = "multipart/form-data"
    answer = client.open(f"{path}?{query}" if query else path, method=method, **kwargs)
    assert answer.status_code < 500, (method, path, query, request, answer.status_code,
                                      answer.get_data(as_text=True)[:500])
    return answer.status_code


def fuzz_rule(world: World, clients: dict[str, FlaskClient], tokens: dict[str, str], rule: Rule, method: str,  # noqa: F811
              values: dict[str, list[str]]) -> None:
    @given(request=rule_requests(rule, method, values))
    @fuzz(EXAMPLES)
    def run(request: dict[str, Any]) -> None:
        send(world, clients, tokens, rule, method, request)
        if "/snapshots/" in rule.rule:  # keep snapshot s1 for the rules that follow
            machines = state(world.app).machines("test")
            for who in ("alice", "carol"):
                if "s1" not in {s["name"] for s in machines.snapshots(world.machines[who])}:
                    machines.snapshot(world.machines[who], "s1")

    run()


def test_no_route_answers_500_to_fuzzed_input(world: World) -> None:  # noqa: F811
    app = world.app
    app.config.update(LABKIT_GRID_TICK_S=0.05, LABKIT_GRID_STREAM_S=0.1)  # the grid's event stream ends at once
    clients = {name: app.test_client() for name in ("teacher", "alice", "anonymous")}
    tokens: dict[str, str] = {}
    values = real_values(world)
    failures = []
    for rule, method in rules_of(app):
        try:
            fuzz_rule(world, clients, tokens, rule, method, values)
        except (Exception, BaseExceptionGroup) as err:  # every rule is tried; the test lists all that failed
            failures.append(f"{method} {rule.rule}: {type(err).__name__}: {str(err)[:3000]}")
    for job in state(app).job_queries.list():
        state(app).jobs.wait(job.id, timeout=120)
    unexpected = [(job.kind, job.target, job.error) for job in state(app).job_queries.list()
                  if (job.error or "").startswith("unexpected error")]
    assert not failures, f"{len(failures)} rules failed:\n\n" + "\n\n".join(failures)
    assert not unexpected, unexpected
    assert all(m["state"] in ("stopped", "defined") for m in state(app).courses("test").status("c1"))


def rules_of(app: Flask) -> list[tuple[Rule, str]]:
    rules = sorted(((rule, method) for rule in app.url_map.iter_rules()
                    for method in sorted(rule.methods - {"HEAD", "OPTIONS"})), key=lambda pair: pair[0].rule)
    assert len(rules) >= 60 and any("/audit" in rule.rule for rule, _ in rules)
    return rules


def test_every_route_with_every_hostile_value(world: World) -> None:  # noqa: F811
    """A sweep: each value of SWEEP in each path parameter (the others real), in every known query key, and in every
    known form field (with a valid CSRF token), for the instructor and the student."""
    app = world.app
    app.config.update(LABKIT_GRID_TICK_S=0.05, LABKIT_GRID_STREAM_S=0.1)  # the grid's event stream ends at once
    clients = {name: app.test_client() for name in ("teacher", "alice", "anonymous")}
    tokens: dict[str, str] = {}
    values = real_values(world)
    real = {name: options[0] for name, options in values.items()}
    failures = []

    def attempt(rule: Rule, method: str, who: str, path: dict[str, str], query: dict[str, str],
                form: dict[str, str] | None) -> None:
        request = {"who": who, "path": path, "query": query, "body": None if form is None else ("form", form),
                   "csrf": True, "bearer": rule.rule.startswith("/api/")}
        try:
            send(world, clients, tokens, rule, method, request)
        except (Exception, BaseExceptionGroup) as err:
            failures.append(f"{method} {build_path(rule, path)} {query or ''} {form or ''} as {who}: "
                            f"{type(err).__name__}: {str(err)[:300]}")

    for rule, method in rules_of(app):
        arguments = {name: real.get(name, "x") for name in rule.arguments}
        has_body = method in ("POST", "PUT", "PATCH", "DELETE")
        for who in ("teacher", "alice"):
            for value in SWEEP:
                for name in arguments:
                    attempt(rule, method, who, {**arguments, name: value}, {}, {} if has_body else None)
                everywhere = dict.fromkeys(FIELDS[:-1], value)
                attempt(rule, method, who, arguments, everywhere, everywhere if has_body else None)
    assert not failures, f"{len(failures)} requests failed:\n" + "\n".join(failures[:40])
