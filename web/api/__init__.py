"""The JSON API, ``/api/v1``: the web's actions for scripts, authenticated by bearer tokens, never by cookies.

Tokens are made with ``labkit user token create NAME TOKEN-NAME`` and sent as ``Authorization: Bearer lk_...``.
The rights are the web's: a student sees their own machines and grades, an instructor the courses they own, and
anything else answers 404 as if it did not exist. 403 means the object is the caller's to see but the action is
for the other role (a student asking for the class gradebook of their own course). Long actions answer 202 with a
job (``GET /api/v1/jobs/<id>`` for its progress). The routes are described in `web.openapi`.

The package is one blueprint split by purpose, like `web.instructor`: this module authenticates and turns errors into
JSON; `scope` decides what the caller may see, `jobs` queues and shows jobs, and `courses`, `grades` and `machines`
hold the routes.
"""

from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from labkit.errors import LabkitError
from web import csrf
from web.errors import MESSAGES
from web.state import services

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer tokens, not cookies: a browser cannot send them on its own, so there is nothing to forge

#: endpoints anyone may read
PUBLIC = frozenset({"api.openapi"})
REALM = 'Bearer realm="labkit"'


# ---- who is asking ---------------------------------------------------------------------------------------------
@bp.before_request
def _authenticate() -> ResponseReturnValue | None:
    if request.endpoint in PUBLIC:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.strip().partition(" ")
    if not header:
        return _error("send an API token: 'Authorization: Bearer lk_...' (create one with 'labkit user token "
                      "create NAME TOKEN-NAME')", 401, {"WWW-Authenticate": REALM})
    if scheme.lower() != "bearer" or not secret.strip():
        return _error("the Authorization header must be 'Bearer <token>'", 401,
                      {"WWW-Authenticate": f'{REALM}, error="invalid_request"'})
    user = services().accounts("api").verify_api_token(secret.strip())
    if user is None:
        return _error("the API token is not valid: unknown, revoked, or its user is disabled", 401,
                      {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
    g.labkit_user = user  # web.access.current_user() and actor() see the token's user, never a session cookie
    return None



# ---- errors: JSON {"error": sentence, "status": code} ---------------------------------------------------------------
def _error(message: str, status: int, headers: dict[str, str] | None = None) -> ResponseReturnValue:
    return jsonify(error=message, status=status), status, headers or {}


@bp.errorhandler(LabkitError)
def _labkit_error(err: LabkitError) -> ResponseReturnValue:
    if err.status >= 500:
        log.error("%s: %s", request.path, err, exc_info=err)
    return _error(str(err), err.status)


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> ResponseReturnValue:
    status = err.code or 500
    default = type(err).description
    message = err.description if err.description and err.description != default else MESSAGES.get(status, err.name)
    headers = {"Allow": ", ".join(err.valid_methods)} if getattr(err, "valid_methods", None) else {}  # type: ignore[attr-defined]
    return _error(message, status, headers)


# ---- the description ---------------------------------------------------------------------------------------------
@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    from web.openapi import document

    return jsonify(document())


# the views register themselves on ``bp``
from web.api import courses, grades, jobs, machines  # noqa: E402, F401
