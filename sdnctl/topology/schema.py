"""The JSON Schema of topology files, and its errors in our words.

The schema (``topology.schema.json``, shipped beside this module) says what shape a topology
document has: which keys exist, their types, the enumerations. ``topology.parse`` checks it
first, so a document that reaches the semantic checks is well-formed. jsonschema's own messages
("Additional properties are not allowed ('colour' was unexpected)") speak about JSON; ours name
the field and say what was expected, so each error is translated here. Two non-standard keys in
the schema help: ``x-error`` replaces the message for that subschema, ``x-what`` names what an
enumeration lists. A schema error may not be the first one jsonschema meets: of all errors we
report the one earliest in the document, as a person reads it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import jsonschema

from sdnctl.api.fields import check_name
from sdnctl.api.model import Invalid

SCHEMA_FILE = "topology.schema.json"

#: When two errors start on one line, the one a person should fix first.
_PRIORITY = ("type", "additionalProperties", "required", "enum", "pattern", "maxLength",
             "minLength", "minimum", "maximum", "minItems", "maxItems")


@dataclass(frozen=True)
class SchemaError:
    path: str  # in the document: networks[0].subnet ("" for the document itself)
    message: str
    kind: str = ""  # the JSON Schema keyword that failed: type, required, enum, ...


@functools.cache
def topology_schema() -> dict[str, Any]:
    text = resources.files("sdnctl.topology").joinpath(SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema  # itself valid against the metaschema: tests/unit/test_schema.py (0.2 s here)


def errors(document: Any) -> list[SchemaError]:
    """Every schema violation of ``document``, translated; empty when it is well-formed."""
    validator = jsonschema.Draft202012Validator(topology_schema())
    return [_translate(e) for e in validator.iter_errors(document)]


def first_error(document: Any, line_of: Callable[[str], int | None]) -> SchemaError | None:
    """The violation a person meets first reading the document (by line, then by kind)."""

    def order(error: SchemaError) -> tuple[int, int]:
        kind = _PRIORITY.index(error.kind) if error.kind in _PRIORITY else len(_PRIORITY)
        return (line_of(error.path) or 0, kind)

    return min(errors(document), key=order, default=None)


def path_text(parts: Iterable[str | int]) -> str:
    """``deque(['networks', 0, 'subnet'])`` -> ``networks[0].subnet``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_KIND = {"object": "a mapping", "array": "a list", "integer": "int", "boolean": "bool",
         "string": "str", "null": "nothing"}


def _translate(e: jsonschema.ValidationError) -> SchemaError:
    return replace(_explain(e), kind=str(e.validator))


def _explain(e: jsonschema.ValidationError) -> SchemaError:
    path = path_text(e.absolute_path)
    schema = e.schema if isinstance(e.schema, dict) else {}
    value = e.instance
    if e.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = next(k for k in value if k not in allowed)
        return SchemaError(path_text([*e.absolute_path, extra]),
                           f"unknown field; expected one of {', '.join(allowed)}")
    if e.validator == "required":
        missing = next(k for k in e.validator_value if k not in value)
        return SchemaError(path, f"missing required field {missing!r}")
    if "x-error" in schema:
        return SchemaError(path, schema["x-error"])
    if schema.get("x-check") == "name":
        try:
            check_name(value, path)
        except Invalid as invalid:
            return SchemaError(path, invalid.message)
    if e.validator == "type":
        return SchemaError(path, _type_message(e.validator_value, value))
    if e.validator == "enum":
        field = str(e.absolute_path[-1]) if e.absolute_path else "value"
        what = schema.get("x-what", field)
        choices = (json.dumps(v) if isinstance(v, bool) else str(v) for v in e.validator_value)
        return SchemaError(path, f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    if e.validator in ("minimum", "maximum"):
        return SchemaError(path, f"{value} is outside {schema.get('minimum', '')}.."
                           f"{schema.get('maximum', '')}")
    return SchemaError(path, e.message)


def _type_message(wanted: str | list[str], value: Any) -> str:
    kinds = [k for k in ([wanted] if isinstance(wanted, str) else wanted) if k != "null"]
    got = type(value).__name__
    if kinds[0] in ("object", "array"):
        return f"expected {_KIND[kinds[0]]}, got {got}"
    return f"expected {' or '.join(_KIND[k] for k in kinds)}, got {got} {value!r}"
