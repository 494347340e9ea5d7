"""Persistence models (SQLAlchemy 2.0, typed). Separate from the lab-format models on purpose (style guide 6).

The database records intent and facts; the process table and the files are reality, and the services reconcile the two.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[object, object]] = {dt.datetime: DateTime(timezone=True)}


class Image(Base):
    """A built base image version, mirrored from the image store's meta.json."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    recipe_digest: Mapped[str] = mapped_column(String(64))
    built_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    machines: Mapped[list[Machine]] = relationship(back_populates="image")

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


class Machine(Base):
    """One machine: its overlay of a base image, and what labkit last knew about its processes."""

    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    backend: Mapped[str] = mapped_column(String(16), default="uml")
    overlay_kind: Mapped[str] = mapped_column(String(16), default="umlcow")
    overlay_path: Mapped[str] = mapped_column(Text)
    seed_path: Mapped[str] = mapped_column(Text)
    memory_mb: Mapped[int] = mapped_column(Integer, default=128)
    mac: Mapped[str] = mapped_column(String(17))
    #: requested forwards as [[host_port, guest_port], ...]; host 0 means "pick one at start"
    forwards: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    console_password: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="stopped")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    supervisor_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: forwards actually bound by the last start, as [[host_port, guest_port], ...]
    bound_forwards: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="machines")
    snapshots: Mapped[list[Snapshot]] = relationship(back_populates="machine", cascade="all, delete-orphan",
                                                     order_by="Snapshot.created_at")


class Snapshot(Base):
    """A named sparse copy of a machine's overlay."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("machine_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    name: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    machine: Mapped[Machine] = relationship(back_populates="snapshots")


class Event(Base):
    """The audit log: who did what to which thing, and when. Never updated, only added to."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="")
