"""What one web app (one server worker process) holds for its whole life: the installation's settings, one database,
one job runner. Workers share state only through the database and the installation's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import current_app

from labkit.config import Settings
from labkit.services.accounts import Accounts
from labkit.services.db import Database
from labkit.services.jobs import JobRunner, Jobs
from web.ratelimit import LoginLimiter

if TYPE_CHECKING:
    from labkit.services.courses import Courses
    from labkit.services.grading import Grading
    from labkit.services.machines import Machines


@dataclass
class WebState:
    """``app.extensions["labkit"]``. Views reach the services through it (`services()`), never the database."""

    settings: Settings
    db: Database
    jobs: JobRunner
    #: failed logins are counted in the database, shared by every worker process of the server
    limiter: LoginLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = LoginLimiter(self.db)

    # Services are cheap objects over the shared database; each takes the acting user's name for the audit log.
    def accounts(self, actor: str) -> Accounts:
        return Accounts(self.settings, self.db, actor)

    def courses(self, actor: str) -> Courses:
        from labkit.services.courses import Courses

        return Courses(self.settings, self.db, actor)

    def machines(self, actor: str) -> Machines:
        from labkit.services.machines import Machines

        return Machines(self.settings, self.db, actor)

    def grading(self, actor: str) -> Grading:
        from labkit.services.grading import Grading

        return Grading(self.settings, self.db, actor)

    @property
    def job_queries(self) -> Jobs:
        return self.jobs.jobs

    def close(self) -> None:
        self.jobs.shutdown(wait=False)
        self.db.close()


def services() -> WebState:
    """The current app's `WebState` (inside a request or an app context)."""
    return current_app.extensions["labkit"]
