"""Record ids in URLs and query strings: only what a database row id can be (1 to 2**63 - 1).

SQLite (and PostgreSQL's bigint) store ids as signed 64-bit integers; a larger number from a URL reached the driver
and failed there with ``OverflowError`` (a 500). `IdConverter` replaces Flask's ``int`` converter for the whole app,
so ``/jobs/<int:job_id>`` with a 20-digit id is a plain 404; `record_id` is the same check for query parameters.
"""

from __future__ import annotations

from typing import Any

from werkzeug.routing import IntegerConverter, Map

#: the largest row id a database stores (signed 64-bit)
MAX_ID = 2**63 - 1


class IdConverter(IntegerConverter):
    """``<int:...>`` as Flask has it, bounded to the ids a row can have: anything else does not match (404)."""

    def __init__(self, url_map: Map, fixed_digits: int = 0, min: int | None = None, max: int | None = MAX_ID,
                 signed: bool = False) -> None:
        super().__init__(url_map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


def record_id(value: Any) -> int:
    """A query parameter that names a row: ``type=record_id`` in ``request.args.get`` (ValueError: the default)."""
    number = int(value)
    if not 1 <= number <= MAX_ID:
        raise ValueError(f"{number} is not a record id")
    return number
