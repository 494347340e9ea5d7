"""Where a labkit installation keeps its state, read once from the environment.

Everything lives under ``LABKIT_HOME`` (design.md, "State"). Paths are derived here and nowhere else, so a test
can point a whole installation at a temporary folder with one variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConfigError

#: The repository's own recipe folder, when labkit runs from a checkout.
_CHECKOUT_RECIPES = Path(__file__).resolve().parent.parent / "base_images"


@dataclass(frozen=True)
class Settings:
    """The folders and settings of one installation."""

    home: Path
    db_url: str
    recipes: Path
    cache: Path
    run_dir: Path
    #: console recordings (docs/operations.md): the cap of one recording (0: consoles are not recorded), and how long
    #: and how much (per machine) the recordings are kept (0: no limit)
    recording_max_bytes: int = 8 << 20
    recordings_keep_days: float = 90.0
    recordings_keep_bytes: int = 256 << 20

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def overlays(self) -> Path:
        return self.home / "overlays"

    @property
    def snapshots(self) -> Path:
        return self.home / "snapshots"

    @property
    def submissions(self) -> Path:
        """Frozen copies of students' overlays, kept apart from the machines' own snapshots."""
        return self.home / "submissions"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def recordings(self) -> Path:
        """Console recordings, one folder per machine (kept across stops, unlike the run folder)."""
        return self.home / "recordings"

    @property
    def keys(self) -> Path:
        return self.home / "keys"

    @property
    def seeds(self) -> Path:
        return self.home / "seeds"

    def ensure(self) -> None:
        """Create the state folders (private to the user: they hold keys and students' work).

        A home that cannot be written (a read-only disk, a file where the folder should be, another user's folder) is
        a `ConfigError` that names the folder, not a traceback from deep inside the first command that needed it.
        """
        try:
            for path in (self.home, self.images, self.overlays, self.snapshots, self.submissions, self.logs,
                         self.keys, self.seeds, self.run_dir, self.cache):
                path.mkdir(parents=True, exist_ok=True)
            for path in (self.home, self.keys):
                if path.stat().st_mode & 0o777 != 0o700:
                    path.chmod(0o700)
        except OSError as err:
            raise ConfigError(f"LABKIT_HOME {self.home} cannot be used: {err.strerror or err} "
                              f"({err.filename}); point LABKIT_HOME at a folder you can write") from err
        if not os.access(self.home, os.W_OK):
            raise ConfigError(f"LABKIT_HOME {self.home} cannot be written (a read-only disk or another user's "
                              "folder); point LABKIT_HOME at a folder you can write")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("LABKIT_HOME") or Path.home() / ".local/share/labkit").expanduser().absolute()
        db_url = env.get("LABKIT_DB") or f"sqlite:///{home / 'labkit.db'}"
        recipes = Path(env.get("LABKIT_RECIPES") or _CHECKOUT_RECIPES).expanduser().absolute()
        cache = Path(env.get("LABKIT_CACHE") or Path.home() / ".cache/labkit").expanduser().absolute()
        run_dir = Path(env.get("LABKIT_RUN") or home / "run").expanduser().absolute()
        return cls(home=home, db_url=db_url, recipes=recipes, cache=cache, run_dir=run_dir,
                   recording_max_bytes=int(_number(env, "LABKIT_RECORDING_MAX_MB", 8) * (1 << 20)),
                   recordings_keep_days=_number(env, "LABKIT_RECORDINGS_KEEP_DAYS", 90),
                   recordings_keep_bytes=int(_number(env, "LABKIT_RECORDINGS_KEEP_MB", 256) * (1 << 20)))


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number from the environment, or one clear error."""
    text = env.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a number of 0 or more, not {text!r}")
    return value
