"""Errors as answers: a `LabkitError` keeps its one sentence and gets its status code (``LabkitError.status``).

Under ``/api/`` every error is JSON ``{"error": "...", "status": N}``; elsewhere it is a page in the site's layout.
Unexpected exceptions become a 500 (Flask's standard path: logged, then the InternalServerError handler; in tests
they propagate).
"""

from __future__ import annotations

import logging
import re

from flask import Flask, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from labkit.errors import LabkitError

log = logging.getLogger(__name__)

#: clearer sentences than werkzeug's defaults for what people actually meet
MESSAGES = {
    400: "The request was not understood.",
    401: "Log in first.",
    404: "There is nothing here, or it is not yours.",
    405: "That action is not allowed here.",
    413: "The upload is too large.",
    429: "Too many attempts; wait a little and try again.",
    # Flask logs the traceback of an unexpected error before it gets here
    500: "Something went wrong on the server; the error is in its log.",
}


#: the routes that answer JSON: the API, the job progress polled by the pages, and the .json views
_JSON_PATHS = re.compile(r"/api/|/jobs/|/teach/courses/[^/]+/jobs/|.*\.json$")


def wants_json() -> bool:
    """Errors on a JSON route are JSON too, even when no view matched (``/jobs/<an id past 2**63>``)."""
    return _JSON_PATHS.match(request.path) is not None


def answer(message: str, status: int) -> ResponseReturnValue:
    if wants_json():
        return jsonify(error=message, status=status), status
    return render_template("error.html", message=message, status=status), status


def _labkit_error(err: LabkitError) -> ResponseReturnValue:
    if err.status >= 500:
        log.error("%s: %s", request.path, err, exc_info=err)
    return answer(str(err), err.status)


def _csrf_error(err: CSRFError) -> ResponseReturnValue:
    reason = err.description.rstrip(".")
    return answer(f"The form was refused: {reason[:1].lower()}{reason[1:]}. Reload the page and try again.", 400)


def _http_error(err: HTTPException) -> ResponseReturnValue:
    status = err.code or 500
    # abort(404, "a specific sentence") keeps it; a bare abort(404) gets ours
    default = type(err).description
    message = err.description if err.description and err.description != default else MESSAGES.get(
        status, err.name)
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        size = f"{limit / (1 << 20):g} MiB" if limit and limit >= 1 << 20 else f"{(limit or 0) // 1024} KiB"
        message = f"The upload is too large: the limit is {size}." if limit else message
    response = answer(message, status)
    if status == 405 and err.valid_methods:  # type: ignore[attr-defined]
        body, code = response  # type: ignore[misc]
        return body, code, {"Allow": ", ".join(err.valid_methods)}  # type: ignore[attr-defined]
    return response


def init_app(app: Flask) -> None:
    app.register_error_handler(LabkitError, _labkit_error)
    app.register_error_handler(CSRFError, _csrf_error)
    app.register_error_handler(HTTPException, _http_error)
