"""What the JSON API accepts: request bodies read strictly, so a typo or a wrong type is a 400 naming the field.

A body is optional where every field is; when one is sent it must be a JSON object with ``Content-Type:
application/json``. Unknown fields are refused rather than ignored (a misspelt ``"studnet"`` must not turn a
one-student action into a whole-class one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType


@dataclass(frozen=True)
class Field:
    kind: type
    required: bool = False

    def describe(self) -> str:
        return {str: "a string", bool: "true or false", int: "an integer"}[self.kind]


def json_body(fields: dict[str, Field]) -> dict[str, Any]:
    """The request's JSON object, checked against ``fields`` (name -> Field); absent optional fields are left out."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        data: object = {}
    else:
        if request.mimetype != "application/json":
            raise UnsupportedMediaType(f"send the body as JSON with 'Content-Type: application/json' (got "
                                       f"{request.mimetype or 'no content type'!r})")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise BadRequest(f"the body is not UTF-8 (byte {err.start} cannot be decoded)") from err
        except json.JSONDecodeError as err:
            raise BadRequest(f"the body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") \
                from err
        except RecursionError as err:  # no route takes nested values: a deep body is never a real request
            raise BadRequest("the body is nested too deeply: send a flat JSON object") from err
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}" + (f" (this route takes: {', '.join(sorted(fields))})"
                                                            if fields else " (this route takes no fields)"))
    for name, spec in fields.items():
        if name not in data:
            if spec.required:
                raise BadRequest(f"field {name!r} is required ({spec.describe()})")
            continue
        value = data[name]
        if (spec.kind is not bool and isinstance(value, bool)) or not isinstance(value, spec.kind):
            raise BadRequest(f"field {name!r} must be {spec.describe()}, not {_json_type(value)}")
        if spec.kind is str and not value:
            raise BadRequest(f"field {name!r} is empty")
    return data


def flag(name: str) -> bool:
    """A yes/no query parameter: absent, 0/false/no or 1/true/yes."""
    value = request.args.get(name)
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise BadRequest(f"query parameter {name!r} must be 1 or 0, not {value!r}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
