"""The OpenAPI 3.1 description of ``/api/v1`` (served at ``/api/v1/openapi.json``), kept as data beside `web.api`.

A test compares the app's URL map with ``paths`` here, so a route cannot be added without being described.
"""

from __future__ import annotations

import re
from typing import Any

Schema = dict[str, Any]

VERSION = "1.0.0"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    400: "Bad input: malformed JSON, an unknown field, a wrong type or value (the message names the field).",
    401: "No token, a malformed Authorization header, or a token that is unknown, revoked or of a disabled user.",
    403: "The object is the caller's to see, but the action is for the other role.",
    404: "No such object, or it is not the caller's (the same answer either way).",
    409: "The state does not allow it (a running machine, a session already begun, the memory budget).",
    413: "The body is larger than 1 MiB.",
    415: "The body has the wrong Content-Type.",
}


def _op(summary: str, tag: str, ok: dict[int | str, Schema], errors: tuple[int, ...] = (),
        body: Schema | None = None, body_required: bool = False, query: list[Schema] | None = None,
        description: str = "") -> Schema:
    responses: dict[str, Schema] = {str(code): value for code, value in ok.items()}
    for code in sorted({401, *errors}):
        responses[str(code)] = _json(_ref("Error"), _ERRORS[code])
    if "202" in responses:
        responses["202"] = {**responses["202"], "headers": {"Location": {"description": "Where to follow the job.",
                                                                         "schema": {"type": "string"}}}}
    operation: Schema = {"summary": summary, "tags": [tag], "responses": responses}
    if description:
        operation["description"] = description
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    if query:
        operation["parameters"] = query
    return operation


def _object(properties: dict[str, Schema], required: tuple[str, ...] = (), closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


_NAME = {"type": "string", "minLength": 1}
#: a roster student id (labkit.services.roster.check_student_id; it also refuses "..")
_SID = {"type": "string", "pattern": "^[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NUMBER = {"type": "number"}
_EMPTY = _object({})
_DETAIL = [{"name": "detail", "in": "query", "required": False, "description": "1: a column per check.",
            "schema": {"type": "string", "enum": ["", "0", "1", "true", "false", "yes", "no"]}}]
_JOB = {202: _json(_ref("Job"), "The job was queued (or the same job was already running: that job).")}
_MACHINE_ERRORS = (400, 404, 409, 415)

SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": {"type": "string"}, "status": {"type": "integer"}}, ("error",), closed=False),
    "Membership": _object({"name": _NAME, "role": {"enum": ["instructor", "student"]}, "student": _NULLABLE_STRING,
                           "labs": {"type": "array", "items": {"type": "string"}}},
                          ("name", "role", "student", "labs"), closed=False),
    "Me": _object({"id": {"type": "integer"}, "username": _NAME, "role": {"enum": ["instructor", "student"]},
                   "courses": {"type": "array", "items": _ref("Membership")}}, ("id", "username", "role", "courses")),
    "CourseDetail": {"allOf": [_ref("Membership")], "properties": {
        "memory_budget_mb": {"type": "integer"}, "max_running_per_student": {"type": "integer"},
        "session_open": {"type": "boolean"},
        "lab_details": {"type": "array", "items": _object({"id": _NAME, "version": {"type": "integer"},
                                                           "reset_policy": {"type": "string"},
                                                           "grade_policy": {"enum": ["best", "latest",
                                                                                     "submission"]},
                                                           "provisioned": {"type": "boolean"}}, closed=False)},
        "students": {"type": "array", "items": _object({"id": _NAME, "name": {"type": "string"},
                                                        "email": {"type": "string"},
                                                        "archived": {"type": "boolean"}}, closed=False)}},
        "description": "Instructors also get the labs' details, the limits, the roster and whether a session is "
                       "open; students get the Membership fields."},
    "MachineState": _object({"student": {"type": "string"}, "lab": {"type": "string"},
                             "machine": {"type": "string"}, "name": {"type": "string"},
                             "state": {"type": "string"}, "forwards": {"type": "array", "items": {"type": "string"}},
                             "uptime": {"type": ["number", "null"]}, "overlay_bytes": {"type": "integer"},
                             "memory_mb": {"type": "integer"}}, ("name", "state"), closed=False),
    "Machine": _object({"name": _NAME, "course": {"type": "string"}, "lab": {"type": "string"},
                        "machine": {"type": "string"}, "student": {"type": "string"},
                        "student_name": {"type": "string"},
                        "state": {"enum": ["defined", "stopped", "starting", "running", "paused", "stopping",
                                           "error"]},
                        "forwards": {"type": "array", "items": {"type": "string"}}, "ssh": _NULLABLE_STRING,
                        "uptime": {"type": ["number", "null"]}, "memory_mb": {"type": "integer"},
                        "overlay_bytes": {"type": "integer"},
                        "snapshots": {"type": "array", "items": {"type": "string"}},
                        "snapshot_kind": {"enum": ["disk", "running state"]},
                        "console_read_only": {"type": "boolean"}},
                       ("name", "course", "lab", "machine", "student", "state"), closed=False),
    "Snapshot": _object({"name": _NAME, "created_at": {"type": "string"}, "size": {"type": "integer"},
                         "kind": {"enum": ["disk", "running state"]}},
                        ("name", "created_at", "size"), closed=False),
    "Job": _object({"id": {"type": "integer"}, "kind": {"type": "string"}, "target": {"type": "string"},
                    "state": {"enum": ["queued", "running", "done", "failed"]}, "done": {"type": "integer"},
                    "total": {"type": ["integer", "null"]}, "percent": {"type": ["integer", "null"]},
                    "message": {"type": "string"}, "result": {"type": ["object", "null"]},
                    "error": _NULLABLE_STRING, "created_at": {"type": "string"},
                    "started_at": _NULLABLE_STRING, "finished_at": _NULLABLE_STRING},
                   ("id", "kind", "target", "state", "done", "total", "percent", "message", "result", "error",
                    "created_at", "started_at", "finished_at"), closed=False),
    "Check": _object({"id": {"type": "string"}, "title": {"type": "string"}, "passed": {"type": "boolean"},
                      "points": _NUMBER, "max_points": _NUMBER, "feedback": {"type": "string"},
                      "skipped_reason": _NULLABLE_STRING, "not_checked": _NULLABLE_STRING,
                      "hidden": {"type": "boolean"},
                      "evidence": {"type": "string"}}, ("id", "passed", "points", "max_points"), closed=False),
    "Grade": _object({"student": {"type": "string"}, "lab": {"type": "string"}, "points": _NUMBER,
                      "max_points": _NUMBER, "passed": {"type": "integer"}, "graded_at": {"type": "string"},
                      "source": {"type": "string"}, "complete": {"type": "boolean"},
                      "not_graded_because": _NULLABLE_STRING,
                      "checks": {"type": "array", "items": _ref("Check")}},
                     ("student", "lab", "points", "max_points", "checks"), closed=False),
    "StudentGrades": _object({"student": {"type": "string"}, "grades": {"type": "array", "items": _ref("Grade")}},
                             ("student", "grades")),
    "Gradebook": _object({"columns": {"type": "array", "items": {"type": "string"}},
                          "rows": {"type": "array", "items": {"type": "array"}},
                          "pass_rates": {"type": "array", "items": {"type": "object"}}},
                         ("columns", "rows", "pass_rates")),
    "Submission": _object({"id": {"type": "integer"}, "course": {"type": "string"}, "student": {"type": "string"},
                           "lab": {"type": "string"}, "created_at": {"type": "string"},
                           "machines": {"type": "array", "items": {"type": "string"}}, "bytes": {"type": "integer"},
                           "points": {"type": ["number", "null"]}, "max_points": {"type": ["number", "null"]},
                           "not_checked": {"type": "integer"}, "not_graded_because": _NULLABLE_STRING},
                          ("id", "course", "student", "lab", "created_at", "machines"), closed=False),
    "RosterReport": _object({key: {"type": "array", "items": {"type": "string"}}
                             for key in ("added", "updated", "archived", "restored", "purged", "held")},
                            ("added", "updated", "archived", "restored", "purged")),
    "SessionBegun": _object({"course": {"type": "string"}, "session": {"type": "integer"},
                             "begun_at": {"type": "string"}}, ("course", "session", "begun_at"), closed=False),
    "Extension": _object({"course": _NAME, "student": _SID, "lab": _NAME, "added": {"type": "integer"},
                          "extra_minutes": {"type": "integer"}, "deadline": _NULLABLE_STRING},
                         ("course", "student", "lab", "added", "extra_minutes", "deadline"), closed=False),
    # request bodies
    "Selection": _object({"student": _SID, "lab": _NAME, "machine": _NAME}),
    "Provision": _object({"upgrade": {"type": "boolean"}}),
    "GradeRequest": _object({"lab": _NAME, "student": _SID, "submissions": {"type": "boolean"}}),
    "LabChoice": _object({"lab": _NAME}),
    "ExtendRequest": _object({"lab": _NAME, "minutes": {"type": "integer", "minimum": 1, "maximum": 1440}},
                             ("lab", "minutes")),
    "Reset": _object({"confirm": {"const": True}, "discard": {"type": "boolean"}}, ("confirm",)),
    "NewSnapshot": _object({"name": {"type": "string", "maxLength": 32, "pattern": "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"}},
                           ("name",)),
}

PATHS: dict[str, dict[str, Schema]] = {
    "/api/v1/openapi.json": {"get": {
        "summary": "This document", "tags": ["meta"], "security": [],
        "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")}}},
    "/api/v1/me": {"get": _op("The token's user and their courses", "me", {200: _json(_ref("Me"), "The user.")})},
    "/api/v1/courses": {"get": _op(
        "The caller's courses", "courses",
        {200: _json({"type": "array", "items": _ref("Membership")}, "Owned (instructor) or joined (student).")})},
    "/api/v1/courses/{course}": {"get": _op("One course", "courses",
                                            {200: _json(_ref("CourseDetail"), "The course.")}, (404,))},
    "/api/v1/courses/{course}/status": {"get": _op(
        "The course's machines and their states (a student: their own)", "courses",
        {200: _json({"type": "array", "items": _ref("MachineState")}, "One row per student machine.")}, (404,))},
    "/api/v1/courses/{course}/start": {"post": _op(
        "Start the class, or one student, lab or machine (instructor)", "courses", _JOB, (400, 403, 404, 409, 415),
        body=_ref("Selection"), description="Machines start in the labs' depends_on order, within the memory "
                                            "budget; a refusal of the budget fails the job.")},
    "/api/v1/courses/{course}/stop": {"post": _op(
        "Stop the class, or one student, lab or machine (instructor)", "courses", _JOB, (400, 403, 404, 409, 415),
        body=_ref("Selection"))},
    "/api/v1/courses/{course}/provision": {"post": _op(
        "Create the students' missing machines (instructor)", "courses", _JOB, (400, 403, 404, 409, 415),
        body=_ref("Provision"))},
    "/api/v1/courses/{course}/roster": {"post": {
        **_op("Import a CSV roster: the header line id,name,email, then a student a line (instructor)", "courses",
              {200: _json(_ref("RosterReport"), "What changed.")}, (400, 403, 404, 409, 413, 415),
              description="Students not listed are archived (their work is kept). Bad lines are reported by line "
                          "number and nothing changes."),
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string", "minLength": 1}}}}}},
    "/api/v1/courses/{course}/sessions/begin": {"post": _op(
        "Begin a class session (instructor)", "sessions", {201: _json(_ref("SessionBegun"), "The session.")},
        (400, 403, 404, 409, 415), body=_EMPTY)},
    "/api/v1/courses/{course}/sessions/end": {"post": _op(
        "End the session: submit (graded live) and reset each-session labs, stop every machine (instructor)",
        "sessions", _JOB,
        (400, 403, 404, 409, 415), body=_EMPTY)},
    "/api/v1/courses/{course}/grades": {"get": _op(
        "The class gradebook and per-check pass rates (instructor)", "grades",
        {200: _json(_ref("Gradebook"), "Students × labs (× checks with detail=1).")}, (400, 403, 404),
        query=_DETAIL)},
    "/api/v1/courses/{course}/grades.csv": {"get": _op(
        "The gradebook as CSV, as `labkit grades --csv` (instructor)", "grades",
        {200: {"description": "UTF-8 CSV with a byte order mark.",
               "content": {"text/csv": {"schema": {"type": "string"}}}}}, (400, 403, 404), query=_DETAIL)},
    "/api/v1/courses/{course}/grade": {"post": _op(
        "Grade the class, a lab or a student: live machines or the latest submissions (instructor)", "grades",
        _JOB, (400, 403, 404, 409, 415), body=_ref("GradeRequest"))},
    "/api/v1/courses/{course}/students/{sid}/grades": {"get": _op(
        "A student's latest grade per lab (the instructor, or the student: without hidden checks)", "grades",
        {200: _json(_ref("StudentGrades"), "Per lab.")}, (400, 404))},
    "/api/v1/courses/{course}/students/{sid}/submissions": {"get": _op(
        "A student's submissions (the instructor, or the student)", "submissions",
        {200: _json({"type": "array", "items": _ref("Submission")}, "Oldest first.")}, (400, 404))},
    "/api/v1/courses/{course}/students/{sid}/submit": {"post": _op(
        "Freeze a student's machines as a submission (the instructor, or the student)", "submissions", _JOB,
        (400, 404, 409, 415), body=_ref("LabChoice"))},
    "/api/v1/courses/{course}/students/{sid}/extend": {"post": _op(
        "Give one student extra minutes on a lab: their allowance and the lab's close move (instructor)", "courses",
        {200: _json(_ref("Extension"), "Their extra minutes in all and their deadline now (null: no limit).")},
        (400, 403, 404, 415), body=_ref("ExtendRequest"), body_required=True)},
    "/api/v1/labs/{course}/{lab}/self-check": {"post": _op(
        "Run the lab's non-hidden checks on the caller's machines (student)", "labs", _JOB,
        (400, 403, 404, 409, 415), body=_EMPTY)},
    "/api/v1/labs/{course}/{lab}/submit": {"post": _op(
        "Submit the caller's machines of the lab (student)", "labs", _JOB, (400, 403, 404, 409, 415),
        body=_EMPTY)},
    "/api/v1/machines": {"get": _op(
        "The caller's machines (an instructor: every machine of their courses)", "machines",
        {200: _json({"type": "array", "items": _ref("Machine")}, "The machines.")})},
    "/api/v1/machines/{name}": {"get": _op("One machine", "machines", {200: _json(_ref("Machine"), "It.")},
                                           (404,))},
    "/api/v1/machines/{name}/start": {"post": _op("Start the machine", "machines", _JOB, _MACHINE_ERRORS,
                                                  body=_EMPTY)},
    "/api/v1/machines/{name}/stop": {"post": _op("Stop the machine", "machines", _JOB, _MACHINE_ERRORS,
                                                 body=_EMPTY)},
    "/api/v1/machines/{name}/reset": {"post": _op(
        "Reset the machine to its lab's start (the old disk is kept as a snapshot)", "machines", _JOB,
        _MACHINE_ERRORS, body=_ref("Reset"), body_required=True,
        description='Needs {"confirm": true}; the machine must be stopped. The old disk is kept as snapshot '
                    'before-reset-<time> unless {"discard": true}.')},
    "/api/v1/machines/{name}/snapshots": {
        "get": _op("The machine's snapshots", "snapshots",
                   {200: _json({"type": "array", "items": _ref("Snapshot")}, "Oldest first.")}, (404,)),
        "post": _op("Take a snapshot (a running machine is paused for the copy; a running QEMU machine's running "
                    "state is kept too)", "snapshots", _JOB,
                    _MACHINE_ERRORS, body=_ref("NewSnapshot"), body_required=True)},
    "/api/v1/machines/{name}/snapshots/{snapshot}/restore": {"post": _op(
        "Restore a snapshot (the machine must be stopped; changes since are lost)", "snapshots", _JOB,
        _MACHINE_ERRORS, body=_EMPTY)},
    "/api/v1/machines/{name}/snapshots/{snapshot}": {"delete": _op(
        "Delete a snapshot", "snapshots", {204: {"description": "Deleted."}}, (404,))},
    "/api/v1/jobs/{job_id}": {"get": _op(
        "A job's progress and result (its owner, the course's instructor, or the machine's student)", "jobs",
        {200: _json(_ref("Job"), "The job.")}, (404,))},
}

_PARAMETER_DOCS = {
    "course": "A course name.", "sid": "A student id of the course's roster.", "lab": "A lab id of the course.",
    "name": "A machine name (as in GET /api/v1/machines).", "snapshot": "A snapshot name.", "job_id": "A job id.",
}


def _path_parameters(path: str) -> list[Schema]:
    parameters = []
    for name in re.findall(r"{(\w+)}", path):
        schema: Schema = {"type": "integer", "minimum": 1} if name == "job_id" else {"type": "string"}
        parameters.append({"name": name, "in": "path", "required": True, "description": _PARAMETER_DOCS[name],
                           "schema": schema})
    return parameters


def document() -> dict[str, Any]:
    paths: dict[str, Schema] = {}
    for path, operations in PATHS.items():
        paths[path] = dict(operations)
        if parameters := _path_parameters(path):
            paths[path]["parameters"] = parameters
    return {
        "openapi": "3.1.0",
        "info": {"title": "labkit API", "version": VERSION,
                 "description": "The labkit web app's actions for scripts. Authenticate with a bearer token made by "
                                "`labkit user token create NAME TOKEN-NAME`. Errors are JSON "
                                '`{"error": "...", "status": N}`. Long actions answer 202 with a job; follow it at '
                                "`/api/v1/jobs/{id}`. See docs/api.md."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": name} for name in ("me", "courses", "sessions", "grades", "submissions", "labs",
                                             "machines", "snapshots", "jobs", "meta")],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token: lk_ followed by 43 characters."}},
            "schemas": SCHEMAS,
        },
    }
