"""``python -m labkit``: the ``labkit`` command, for when its script is not on PATH (labkit/cli/tmux.py uses it)."""

from labkit.cli import main

main()
