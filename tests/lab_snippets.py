"""``lab.toml`` fragments more than one test appends to a copy of an example lab, kept once so they cannot drift."""

from __future__ import annotations

#: A hidden check and a visible one that depends on it (issue 11 §3): `labkit lab validate` warns about it, and the
#: student's pages, self-check and grades must never reveal the hidden check's id, title or result.
GATED = """
[[checks]]
id = "hidden-gate"
title = "The secret gate"
kind = "command"
command = "true"
hidden = true

[[checks]]
id = "after-gate"
title = "After the gate"
kind = "command"
command = "true"
depends_on = ["hidden-gate"]
"""
