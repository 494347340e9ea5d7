"""Migration 0004 on a database that already holds courses, students and grade runs: nothing is lost."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from labkit.config import Settings
from labkit.services.db import Database, alembic_config, make_engine


def test_upgrade_to_0004_keeps_existing_rows(web_settings: Settings) -> None:
    engine = make_engine(web_settings)
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO courses (id, name, secret, max_running_per_student, created_at) "
                                "VALUES (1, 'c1', 's', 4, '2026-01-01')"))
        connection.execute(text("INSERT INTO students (course_id, sid, name, email) VALUES (1, 'alice', 'A', '')"))
        connection.execute(text("INSERT INTO grade_runs (course_id, kind, actor, started_at) "
                                "VALUES (1, 'grade', 't', '2026-01-01')"))
    engine.dispose()
    db = Database(web_settings)  # migrates to the head on open, with foreign keys on
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM grade_runs")).scalar() == 1
        assert connection.execute(text("SELECT sid, user_id FROM students")).one() == ("alice", None)
        assert connection.execute(text("SELECT owner_id FROM courses")).scalar() is None
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() >= "0004"
    db.close()


def test_upgrade_to_0005_keeps_jobs_and_downgrades(web_settings: Settings) -> None:
    engine = make_engine(web_settings)
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO courses (id, name, secret, max_running_per_student, created_at) "
                                "VALUES (1, 'c1', 's', 4, '2026-01-01')"))
        connection.execute(text("INSERT INTO jobs (kind, course_id, target, state, done, message, created_at) "
                                "VALUES ('grade', 1, 'c1', 'done', 0, '', '2026-01-01')"))
    engine.dispose()
    db = Database(web_settings)
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT course_id, state, runner FROM jobs")).one() == (1, "done", None)
        assert connection.execute(text("SELECT count(*) FROM login_failures")).scalar() == 0
    db.close()
    engine = make_engine(web_settings)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0004"
    engine.dispose()


def test_upgrade_to_0007_adds_web_sessions_and_downgrades(web_settings: Settings) -> None:
    engine = make_engine(web_settings)
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO users (id, username, role, created_at) "
                                "VALUES (1, 'alice', 'student', '2026-01-01')"))
    engine.dispose()
    db = Database(web_settings)
    with db.engine.begin() as connection:
        connection.execute(text("INSERT INTO web_sessions (user_id, token_hash, created_at) "
                                "VALUES (1, 'h', '2026-01-01')"))
        assert connection.execute(text("SELECT username FROM users")).scalar() == "alice"
    db.close()
    engine = make_engine(web_settings)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM users")).scalar() == 1
        assert "web_sessions" not in {row[0] for row in connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    engine.dispose()


def test_upgrade_to_0010_gives_old_labs_no_time_bounds_and_downgrades(web_settings: Settings) -> None:
    engine = make_engine(web_settings)
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0009")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO courses (id, name, secret, max_running_per_student, created_at) "
                                "VALUES (1, 'c1', 's', 4, '2026-01-01')"))
        connection.execute(text("INSERT INTO course_labs (id, course_id, lab_id, path, version, files, reset_policy) "
                                "VALUES (1, 1, 'l', '/x', 1, '{}', 'persist')"))
    engine.dispose()
    db = Database(web_settings)
    with db.engine.begin() as connection:
        row = connection.execute(text("SELECT opens_at, closes_at, allowance_minutes, idle_minutes, exam, "
                                      "results_released_at, grade_policy FROM course_labs")).one()
        assert tuple(row) == (None, None, None, None, 0, None, "best")
        connection.execute(text("INSERT INTO students (id, course_id, sid, name, email) VALUES (1, 1, 'a', '', '')"))
        connection.execute(text("INSERT INTO attempts (student_id, course_lab_id) VALUES (1, 1)"))
        assert connection.execute(text("SELECT extra_minutes FROM attempts")).scalar() == 0
    db.close()
    engine = make_engine(web_settings)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0009")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT lab_id FROM course_labs")).scalar() == "l"
        assert "attempts" not in {row[0] for row in connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
    engine.dispose()
