"""Accounts of the web app: users, passwords, one-time set-password links, API tokens, and course owners.

Decision (issue 5): instructors are created on the command line (``labkit user create``); students get their accounts
from the roster, each with a one-time link to set a password (``labkit course links``), valid 7 days. Secrets (links,
API tokens) are shown once and only their SHA-256 is stored; passwords are stored as werkzeug scrypt hashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Row, bindparam, delete, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, NotFoundError, NotYoursError
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.enrolments import Held, enrolled_courses, held_students, refusal
from labkit.services.lookup import course_by_name
from labkit.services.models import (
    ApiToken,
    Assignment,
    Course,
    CourseLab,
    Machine,
    PasswordToken,
    Student,
    User,
    WebSession,
)
from labkit.services.roles import ROLES

LINK_LIFETIME = dt.timedelta(days=7)
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
#: the prefix makes a leaked token recognizable (secret scanners, logs)
API_TOKEN_PREFIX = "lk_"
#: last_used_at is written at most this often, so an API client does not turn every request into a write
_TOKEN_TOUCH = dt.timedelta(minutes=1)
#: the same characters as a roster student id (a student's username is their id)
_USERNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def hash_secret(token: str) -> str:
    """Links and API tokens are 256-bit random strings: a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(token.encode()).hexdigest()


@cache
def _dummy_hash() -> str:
    """A real scrypt hash to check against when the user is unknown, so the answer takes as long either way."""
    return generate_password_hash(secrets.token_urlsafe(16))


def check_username(username: str) -> str:
    if not isinstance(username, str) or not username:
        raise BadNameError("the username is empty")
    if ".." in username or not _USERNAME.fullmatch(username):
        raise BadNameError(f"username {username!r} may only hold ASCII letters, digits, '.', '_' and '-' (at most 64, "
                           "starting and ending with a letter or digit)")
    return username


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise BadNameError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadNameError(f"the password is too long: at most {MAX_PASSWORD} characters")
    return password


@dataclass(frozen=True)
class UserView:
    id: int
    username: str
    role: str
    has_password: bool
    created_at: dt.datetime
    disabled: bool
    #: changes when the password changes or the user is disabled: a session made before is no longer valid
    stamp: str

    @property
    def is_instructor(self) -> bool:
        return self.role == "instructor"

    @property
    def is_student(self) -> bool:
        return self.role == "student"


@dataclass(frozen=True)
class PasswordLink:
    """A freshly made one-time link: ``token`` is the secret, shown once (the URL is ``/set-password/<token>``)."""

    username: str
    name: str
    email: str
    token: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class ApiTokenView:
    id: int
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked: bool


@dataclass(frozen=True)
class OwnedCourse:
    id: int
    name: str


@dataclass(frozen=True)
class OwnedMachine:
    """A student machine a user may see: the student's own, or any machine of a course the instructor owns."""

    name: str
    machine: str
    lab: str
    course: str
    course_id: int
    student: str
    student_name: str
    #: an instructor watches a student's machine; only the student types into its console
    read_only: bool


#: the columns `_view` reads, without the ORM; built once (building a statement costs more than running it)
_USER_BY_ID = select(User.id, User.username, User.role, User.password_hash, User.created_at,
                     User.disabled_at).where(User.id == bindparam("uid"))
#: the same, only while the browser session (by the hash of its secret) is open
_USER_BY_SESSION = _USER_BY_ID.join(WebSession, WebSession.user_id == User.id) \
    .where(WebSession.token_hash == bindparam("digest"))
#: how long a browser session lasts at most (the web app's cookie lifetime is the same)
SESSION_LIFETIME = dt.timedelta(hours=12)


def _view(user: User | Row[Any]) -> UserView:
    stamp = hashlib.sha256(f"{user.password_hash}|{user.disabled_at}".encode()).hexdigest()[:16]
    return UserView(id=user.id, username=user.username, role=user.role, has_password=user.password_hash is not None,
                    created_at=_aware(user.created_at), disabled=user.disabled_at is not None, stamp=stamp)


def _token_view(token: ApiToken) -> ApiTokenView:
    return ApiTokenView(id=token.id, name=token.name, created_at=_aware(token.created_at),
                        last_used_at=_aware(token.last_used_at) if token.last_used_at else None,
                        revoked=token.revoked_at is not None)


class Accounts:
    """``labkit user ...`` and the web app's login: every write to users and tokens goes through here."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()

    # ---- users -------------------------------------------------------------------------------------------------
    @staticmethod
    def _user(session: Session, username: str) -> User:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFoundError(f"no user named {username!r}")
        return user

    def create_user(self, username: str, role: str, password: str | None = None) -> UserView:
        """A new user; without a password it cannot log in until one is set (a link, or ``user passwd``)."""
        check_username(username)
        if role not in ROLES:
            raise BadNameError(f"role {role!r} is not one of: {', '.join(ROLES)}")
        password_hash = generate_password_hash(check_password(password)) if password is not None else None
        with self.db.transaction() as session:
            if session.scalar(select(User).where(User.username == username)) is not None:
                raise ConflictError(f"a user named {username!r} already exists")
            user = User(username=username, role=role, password_hash=password_hash)
            session.add(user)
            record(session, self.actor, "user-create", username, role)
            session.flush()
            return _view(user)

    def get(self, username: str) -> UserView:
        with self.db.transaction() as session:
            return _view(self._user(session, username))

    def get_by_id(self, user_id: int) -> UserView | None:
        """Asked at every page view (who is logged in): one plain row."""
        with self.db.read_rows() as connection:
            user = connection.execute(_USER_BY_ID, {"uid": user_id}).one_or_none()
            return _view(user) if user is not None else None

    # ---- browser sessions --------------------------------------------------------------------------------------
    def open_session(self, user_id: int, lifetime: dt.timedelta = SESSION_LIFETIME) -> str:
        """A new session's secret (for the cookie); sessions older than ``lifetime`` are deleted on the way."""
        secret = secrets.token_urlsafe(32)
        with self.db.transaction() as session:
            session.execute(delete(WebSession).where(WebSession.created_at < _now() - lifetime))
            session.add(WebSession(user_id=user_id, token_hash=hash_secret(secret)))
        return secret

    def close_session(self, secret: str) -> None:
        """Logging out: the session's row goes, so the same cookie, copied or not, no longer logs anyone in."""
        with self.db.transaction() as session:
            session.execute(delete(WebSession).where(WebSession.token_hash == hash_secret(secret)))

    def get_by_session(self, user_id: int, secret: str) -> UserView | None:
        """The user of an open browser session (one plain row, asked at every page view), else None."""
        with self.db.read_rows() as connection:
            user = connection.execute(_USER_BY_SESSION, {"uid": user_id, "digest": hash_secret(secret)}) \
                .one_or_none()
            return _view(user) if user is not None else None

    def users(self) -> list[UserView]:
        with self.db.transaction() as session:
            return [_view(u) for u in session.scalars(select(User).order_by(User.role, User.username))]

    def set_password(self, username: str, password: str) -> UserView:
        password_hash = generate_password_hash(check_password(password))
        with self.db.transaction() as session:
            user = self._user(session, username)
            user.password_hash = password_hash
            record(session, self.actor, "user-passwd", username)
            session.flush()
            return _view(user)

    def disable(self, username: str, disabled: bool = True) -> UserView:
        """A disabled user cannot log in, and their sessions and API tokens stop working."""
        with self.db.transaction() as session:
            user = self._user(session, username)
            user.disabled_at = _now() if disabled else None
            record(session, self.actor, "user-disable" if disabled else "user-enable", username)
            session.flush()
            return _view(user)

    def verify(self, username: str, password: str) -> UserView | None:
        """The user if the password is right, else None. Takes one scrypt check whether or not the user exists."""
        with self.db.transaction() as session:
            user = session.scalar(select(User).where(User.username == username)) if isinstance(username, str) \
                else None
            view = _view(user) if user is not None else None
            stored = user.password_hash if user is not None else None
        ok = check_password_hash(stored or _dummy_hash(), password if isinstance(password, str) else "")
        if view is None or stored is None or view.disabled or not ok:
            return None
        return view

    # ---- one-time set-password links ---------------------------------------------------------------------------
    def create_links(self, course: str, students: list[str] | None = None) -> list[PasswordLink]:
        """A new link for every active roster student of ``course`` who cannot log in yet (or only ``students``).

        This acts with the rights of the course's owner (`labkit.services.enrolments`): a student without an account
        gets one (username = student id, role student), and a roster line is bound to an existing account only when
        that account is the owner's. A named student whose account is not the owner's is refused with the reason
        (nothing is made); without names, such held students are left out (`held` lists them). Older unused links
        of the same user stop working: only the newest link is valid.
        """
        links: list[PasswordLink] = []
        now = _now()
        with self.db.transaction() as session:
            found = course_by_name(session, course)
            roster = [s for s in found.students if s.archived_at is None]
            if students is not None:
                unknown = sorted(set(students) - {s.sid for s in roster})
                if unknown:
                    raise NotFoundError(f"course {course} has no active student {', '.join(unknown)}")
                roster = [s for s in roster if s.sid in students]
            for student in roster:
                user, reason = self._student_user(session, found, student)
                if user is None or reason is not None:
                    if students is not None:
                        raise NotYoursError(f"no link for {student.sid}: {reason}")
                    continue
                if user.password_hash is not None and students is None:
                    continue
                links.append(self._new_link(session, user, student.name, student.email, now))
            record(session, self.actor, "links-create", course, f"{len(links)} links")
        return links

    def held(self, course: str) -> list[Held]:
        """The course's roster lines whose account belongs to another instructor's course (or is an instructor)."""
        with self.db.transaction() as session:
            return held_students(session, course_by_name(session, course))

    @staticmethod
    def _new_link(session: Session, user: User, name: str, email: str, now: dt.datetime) -> PasswordLink:
        for old in session.scalars(select(PasswordToken).where(PasswordToken.user_id == user.id,
                                                                PasswordToken.used_at.is_(None))):
            old.used_at = now
        token = secrets.token_urlsafe(32)
        expires = now + LINK_LIFETIME
        session.add(PasswordToken(user_id=user.id, token_hash=hash_secret(token), expires_at=expires))
        return PasswordLink(username=user.username, name=name, email=email, token=token, expires_at=expires)

    def _student_user(self, session: Session, course: Course, student: Student) -> tuple[User | None, str | None]:
        """The roster line's account (bound now if it is the owner's to bind, made if there is none), and why the
        course's owner may not act for it (None: they may)."""
        if student.user_id is not None:
            user = session.get(User, student.user_id)
            assert user is not None
            return user, refusal(session, user, course)
        user = session.scalar(select(User).where(User.username == student.sid))
        if user is not None and user.role != "student":
            raise ConflictError(f"student id {student.sid!r} is already the username of an {user.role}; rename one")
        if user is None:
            user = User(username=check_username(student.sid), role="student")
            session.add(user)
            session.flush()
            record(session, self.actor, "user-create", user.username, "student (roster)")
        elif (reason := refusal(session, user, course)) is not None:
            return None, reason
        student.user_id = user.id
        record(session, self.actor, "enrol", user.username, course.name)
        session.flush()
        return user, None

    # ---- what only an admin does (the command line: ``labkit user ...``) ---------------------------------------
    def admin_link(self, username: str) -> PasswordLink:
        """A one-time link for any account (the admin's way to reset an account shared by courses)."""
        with self.db.transaction() as session:
            user = self._user(session, username)
            link = self._new_link(session, user, "", "", _now())
            record(session, self.actor, "link-admin", username)
            return link

    def enrol(self, username: str, course: str) -> list[str]:
        """Bind the course's roster line ``username`` to the account of that name, whoever else it is enrolled with
        (the admin has checked that it is the same person). Returns the courses the account is now enrolled in."""
        with self.db.transaction() as session:
            found = course_by_name(session, course)
            user = self._user(session, username)
            if user.role != "student":
                raise ConflictError(f"user {username} is an {user.role}; only a student account joins a roster")
            student = next((s for s in found.students if s.sid == username), None)
            if student is None:
                raise NotFoundError(f"course {course} has no student {username!r} on its roster; import it first")
            if student.user_id not in (None, user.id):
                raise ConflictError(f"the roster line {username} of course {course} is bound to another account")
            student.user_id = user.id
            record(session, self.actor, "enrol", username, f"{course} (admin)")
            session.flush()
            return [name for name, _owner in enrolled_courses(session, user.id)]

    def enrolments(self, username: str) -> list[tuple[str, str | None]]:
        """(course, owner's username or None) of every course the account is enrolled in."""
        with self.db.transaction() as session:
            user = self._user(session, username)
            owners = {u.id: u.username for u in session.scalars(select(User).where(User.role == "instructor"))}
            return [(name, owners.get(owner) if owner is not None else None)
                    for name, owner in enrolled_courses(session, user.id)]

    def _link(self, session: Session, token: str) -> PasswordToken:
        link = session.scalar(select(PasswordToken).where(PasswordToken.token_hash == hash_secret(token)))
        if link is None:
            raise NotFoundError("this set-password link is not valid; ask your instructor for a new one")
        if link.used_at is not None:
            raise ConflictError("this set-password link was already used (or replaced by a newer one); "
                                "ask your instructor for a new one")
        if _aware(link.expires_at) <= _now():
            raise ConflictError(f"this set-password link expired on {_aware(link.expires_at):%Y-%m-%d %H:%M} UTC; "
                                "ask your instructor for a new one")
        return link

    def check_link(self, token: str) -> UserView:
        """The user a link is for, if the link can still be used (else NotFoundError or ConflictError)."""
        with self.db.transaction() as session:
            return _view(self._link(session, token).user)

    def use_link(self, token: str, password: str) -> UserView:
        """Set the password through a link; the link is spent, even if the user had a password before."""
        password_hash = generate_password_hash(check_password(password))
        with self.db.transaction() as session:
            link = self._link(session, token)
            link.used_at = _now()
            link.user.password_hash = password_hash
            record(session, link.user.username, "link-use", link.user.username)
            session.flush()
            return _view(link.user)

    # ---- API tokens --------------------------------------------------------------------------------------------
    def create_api_token(self, username: str, name: str) -> tuple[ApiTokenView, str]:
        """A new bearer token; the secret is returned here once and never again."""
        check_username(name)
        secret = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction() as session:
            user = self._user(session, username)
            if session.scalar(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.name == name)) is not None:
                raise ConflictError(f"user {username} already has a token named {name!r}")
            token = ApiToken(user_id=user.id, name=name, token_hash=hash_secret(secret))
            session.add(token)
            record(session, self.actor, "token-create", username, name)
            session.flush()
            return _token_view(token), secret

    def revoke_api_token(self, username: str, name: str) -> ApiTokenView:
        with self.db.transaction() as session:
            user = self._user(session, username)
            token = session.scalar(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.name == name))
            if token is None:
                raise NotFoundError(f"user {username} has no token named {name!r}")
            if token.revoked_at is None:
                token.revoked_at = _now()
                record(session, self.actor, "token-revoke", username, name)
            session.flush()
            return _token_view(token)

    def api_tokens(self, username: str) -> list[ApiTokenView]:
        with self.db.transaction() as session:
            user = self._user(session, username)
            return [_token_view(t) for t in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)
                                                            .order_by(ApiToken.name))]

    def verify_api_token(self, secret: str) -> UserView | None:
        """The user behind a bearer token, or None (unknown, revoked, or the user is disabled)."""
        if not isinstance(secret, str) or not secret.startswith(API_TOKEN_PREFIX):
            return None
        digest = hash_secret(secret)
        with self.db.transaction() as session:
            token = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
            # the lookup is by the hash of a 256-bit secret; compare again in constant time all the same
            if token is None or not hmac.compare_digest(token.token_hash, digest) or token.revoked_at is not None:
                return None
            if token.user.disabled_at is not None:
                return None
            now = _now()
            if token.last_used_at is None or now - _aware(token.last_used_at) > _TOKEN_TOUCH:
                token.last_used_at = now
            return _view(token.user)

    # ---- course owners -----------------------------------------------------------------------------------------
    def check_owner(self, username: str) -> UserView:
        """The user, if they can own a course (an enabled instructor)."""
        user = self.get(username)
        if not user.is_instructor or user.disabled:
            raise ConflictError(f"user {username} is {'disabled' if user.disabled else 'a ' + user.role}; only an "
                                "enabled instructor can own a course")
        return user

    def set_course_owner(self, course: str, username: str) -> None:
        with self.db.transaction() as session:
            found = course_by_name(session, course)
            user = self._user(session, username)
            if user.role != "instructor" or user.disabled_at is not None:
                raise ConflictError(f"user {username} is {'disabled' if user.disabled_at else 'a ' + user.role}; "
                                    "only an enabled instructor can own a course")
            found.owner_id = user.id
            record(session, self.actor, "course-owner", course, username)

    def owned_courses(self, user_id: int) -> list[str]:
        with self.db.transaction() as session:
            return list(session.scalars(select(Course.name).where(Course.owner_id == user_id).order_by(Course.name)))

    # ---- what a user may see (the web app's 404 rules) ---------------------------------------------------------
    def owned_course(self, user: UserView, course: str) -> OwnedCourse | None:
        """The course if ``user`` is the instructor who owns it, else None."""
        if not user.is_instructor or user.disabled:
            return None
        with self.db.transaction() as session:
            found = session.scalar(select(Course).where(Course.name == course, Course.owner_id == user.id))
            return OwnedCourse(found.id, found.name) if found is not None else None

    def owned_machine(self, user: UserView, machine_name: str) -> OwnedMachine | None:
        """The machine if it is ``user``'s own (student, active on the roster) or of a course they own, else None."""
        found = self._machines(user, Machine.name == machine_name)
        return found[0] if found else None

    def machines_of(self, user: UserView, course: str | None = None) -> list[OwnedMachine]:
        """Every machine ``user`` may see (a student: their own; an instructor: those of their courses)."""
        return self._machines(user, Course.name == course) if course is not None else self._machines(user)

    def _machines(self, user: UserView, *where: object) -> list[OwnedMachine]:
        if user.disabled:
            return []
        query = (select(Machine.name, Assignment.machine, CourseLab.lab_id, Course.name, Course.id, Student.sid,
                        Student.name)
                 .select_from(Assignment).join(Machine, Assignment.machine_id == Machine.id)
                 .join(Student, Assignment.student_id == Student.id)
                 .join(CourseLab, Assignment.course_lab_id == CourseLab.id)
                 .join(Course, CourseLab.course_id == Course.id)
                 .where(*where)  # type: ignore[arg-type]
                 .order_by(Course.name, Student.sid, CourseLab.id, Assignment.machine))
        if user.is_student:
            query = query.where(Student.user_id == user.id, Student.archived_at.is_(None))
        elif user.is_instructor:
            query = query.where(Course.owner_id == user.id)
        else:
            return []
        with self.db.read() as session:
            return [OwnedMachine(name=row[0], machine=row[1], lab=row[2], course=row[3], course_id=row[4],
                                 student=row[5], student_name=row[6], read_only=not user.is_student)
                    for row in session.execute(query)]
