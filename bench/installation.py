"""A private labkit installation for one benchmark run: a short folder under /tmp with its own home, database and
`Courses` service, using the shared image cache; `close()` kills what still runs and removes the folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.report import REPO
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.courses import Courses
from labkit.services.db import Database


def short_dir(prefix: str) -> Path:
    """A new folder with a short path (UNIX sockets), without "_" or "," (UML's slirp transport mangles them)."""
    while True:
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        if "_" not in path and "," not in path:
            return Path(path)
        os.rmdir(path)


class Installation:
    """``self.root``, ``self.settings``, ``self.db`` and ``self.courses`` (actor "bench") of a fresh installation."""

    def __init__(self, prefix: str) -> None:
        self.root = short_dir(prefix)
        self.settings = Settings.from_env({
            "LABKIT_HOME": str(self.root / "home"), "LABKIT_RUN": str(self.root / "run"),
            "LABKIT_CACHE": os.environ.get("LABKIT_CACHE") or str(Path.home() / ".cache/labkit"),
            "LABKIT_RECIPES": str(REPO / "base_images"),
        })
        self.settings.ensure()
        self.db = Database(self.settings)
        self.courses = Courses(self.settings, self.db, actor="bench")

    def close(self) -> None:
        for view in self.courses.machines.status():
            if view.state != "stopped":
                self.courses.machines.kill(view.name)
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def ensure_tiny(self) -> None:
        """Build the `tiny` image unless the cache has it (before any clock: a build takes a while)."""
        store = ImageStore(self.settings)
        if not store.list("tiny"):
            store.build(find_recipe(self.settings.recipes, "tiny"))

    def enroll(self, course: str, students: int) -> None:
        """Import a roster of ``students`` students s001, s002, ... into ``course``."""
        roster = self.root / f"{course}.csv"
        roster.write_text("id,name,email\n" + "".join(f"s{i:03d},Student {i},s{i:03d}@example.org\n"
                                                      for i in range(1, students + 1)))
        self.courses.import_roster(course, roster)
