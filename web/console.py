"""The browser console's WebSocket: ``/ws/console/<machine_name>`` (flask-sock), relayed by `web.console_relay`.

Rights are checked before the WebSocket handshake, exactly as for a page (`owned_machine_or_404`): a machine that is
not the user's gets a plain HTTP 404, and a handshake from another site's page gets 403. Instructors watching a
student's machine get a read-only relay. A machine that is not running is answered inside the WebSocket (a
``stopped`` message and close code 4000), so the page can say so and wait for it to start.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, g, request
from flask_sock import Sock

from labkit.errors import LabkitError
from web.access import actor, owned_machine_or_404
from web.console_relay import INPUT_LIMIT, ConsoleRelay, WebSocketLike, refuse
from web.state import services

bp = Blueprint("console", __name__)
sock = Sock()


def init_app(app: Flask) -> None:
    """Server pings find browsers that vanished without closing (their relay threads end); the page pings too."""
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"ping_interval": 25, "max_message_size": 4 * INPUT_LIMIT})


@bp.before_request
def check_rights() -> None:
    """Runs before the handshake, so refusals are ordinary HTTP answers (no session or not theirs: 404)."""
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        abort(403)  # cross-site WebSocket hijacking: browsers send the cookie, so the origin has to be checked
    g.console_machine = owned_machine_or_404((request.view_args or {}).get("machine_name", ""))


@sock.route("/ws/console/<machine_name>", bp=bp)
def console_socket(ws: WebSocketLike, machine_name: str) -> None:
    owned = g.console_machine
    try:
        if not owned.read_only:  # the student is back: a machine paused for being idle goes on where it was
            from labkit.services.sweeper import resume_paused

            resume_paused(services().machines(actor()), [owned.name])
        access = services().machines(actor()).console(owned.name)
    except LabkitError as err:  # StateError: not running; anything else is said the same way, in one sentence
        refuse(ws, owned.name, str(err))
        return
    ConsoleRelay(owned.name, access.socket, access.log, read_only=owned.read_only, user=actor()).run(ws)
