"""The console supervisor's import budget: one supervisor runs per machine, so every module it imports is memory that
every running machine pays for (docs/runtime.md, "Memory"). Checked from the modules it loads, not from a measured size
(which depends on the host and the Python build): the supervisor is started the way `spawn_supervisor` starts it (same
interpreter flags, same environment) and lists what it imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import labkit
from labkit.runtime.supervisor import SUPERVISOR_FLAGS, supervisor_env

#: Modules the supervisor must not import, with what they cost here (private memory, Python 3.11): dataclasses brings
#: inspect, ast, dis and tokenize (1.1 MB); tempfile brings random and shutil (0.6 MB); typing 0.4 MB;
#: labkit.runtime.base is the backend interface (dataclasses, enum); labkit.errors and traceback are imported only on
#: paths that need them; argparse, logging, the settings and the services belong to the CLI and the web app.
FORBIDDEN = ("dataclasses", "inspect", "ast", "tempfile", "random", "shutil", "typing", "traceback", "argparse",
             "logging", "labkit.errors", "labkit.runtime.base", "labkit.config", "labkit.services")

#: What the supervisor is started by: the same flags and module as `spawn_supervisor`, stopped after its imports.
PROBE = """
import runpy, sys
runpy.run_module("labkit.runtime.supervisor", run_name="labkit_supervisor_probe")
import json
print(json.dumps({"modules": sorted(sys.modules), "file": sys.modules["labkit"].__file__}))
"""


def _loaded(env: dict[str, str], cwd: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, *SUPERVISOR_FLAGS, "-c", PROBE], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _forbidden(modules: list[str]) -> list[str]:
    return [name for name in modules if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)]


@pytest.mark.parametrize("pythonpath", [None, "/nonexistent", str(Path(labkit.__file__).resolve().parent.parent)])
def test_supervisor_imports_stay_within_budget(tmp_path: Path, pythonpath: str | None) -> None:
    """As started for a machine, whatever PYTHONPATH the caller had (none, unrelated, the tests' own)."""
    base = {key: value for key, value in supervisor_env().items() if key != "PYTHONPATH"}
    if pythonpath is not None:
        base["PYTHONPATH"] = pythonpath
    loaded = _loaded(supervisor_env(base), tmp_path)
    assert Path(str(loaded["file"])).resolve() == Path(labkit.__file__).resolve()
    assert _forbidden(list(loaded["modules"])) == []  # type: ignore[arg-type]
    assert "site" not in loaded["modules"]  # started without site: no .pth file of the environment is read


def test_supervisor_finds_labkit_installed_elsewhere(tmp_path: Path) -> None:
    """A plain (non-editable) install: labkit in some site-packages folder that only PYTHONPATH names, with -S."""
    site = tmp_path / "site-packages"
    shutil.copytree(Path(labkit.__file__).resolve().parent, site / "labkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {key: value for key, value in supervisor_env().items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    loaded = _loaded(env, tmp_path)
    assert Path(str(loaded["file"])).resolve() == (site / "labkit" / "__init__.py").resolve()
    assert _forbidden(list(loaded["modules"])) == []  # type: ignore[arg-type]


def test_supervisor_may_write_bytecode_caches() -> None:
    """A supervisor that compiles labkit's modules from source keeps the compiler's garbage for the machine's life."""
    env = supervisor_env({"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin"})
    assert "PYTHONDONTWRITEBYTECODE" not in env and env["PATH"] == "/usr/bin"
