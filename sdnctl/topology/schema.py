"""The JSON Schema of topology files, and its errors in our words.

The schema (``topology.schema.json``, shipped beside this module) says what shape a topology
document has: which keys exist, their types, the enumerations. ``topology.parse`` checks it
first, so a document that reaches the semantic checks is well-formed. Its errors speak about
JSON ("Additional properties are not allowed"); ours name the field and say what was
expected, so each error is translated here. Two non-standard keys in the schema help:
``x-error`` replaces the message for that subschema, ``x-what`` names what an enumeration
lists. A schema error may not be the first one met: of all errors we report the one earliest
in the document, as a person reads it.

The validator is ours: the JSON Schema keywords the file uses (``type``, ``properties``,
``additionalProperties``, ``required``, ``items``, ``enum``, ``$ref`` to ``$defs``, and the
bounds ``minimum``/``maximum``, ``minLength``/``maxLength``, ``minItems``/``maxItems``,
``pattern``), with draft 2020-12's meaning, in about sixty lines. jsonschema's import took
34 ms of every `sdnctl up` and `check`, a sixth of the CLI's start. A keyword the file starts
to use and this module does not know is an error at load (``topology_schema``), and
tests/unit/test_schema.py checks the file against the metaschema and these errors against
jsonschema's, on the examples and on generated documents.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

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


#: What the validator knows: the keywords it checks, and those that only annotate.
KEYWORDS = ("$ref", "type", "enum", "required", "properties", "additionalProperties", "items",
            "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern")
ANNOTATIONS = ("$schema", "$id", "$defs", "title", "description", "x-error", "x-what",
               "x-check")


@functools.cache
def topology_schema() -> dict[str, Any]:
    text = resources.files("sdnctl.topology").joinpath(SCHEMA_FILE).read_text()
    schema: dict[str, Any] = json.loads(text)
    unknown = sorted(_keywords(schema) - {*KEYWORDS, *ANNOTATIONS})
    if unknown:
        raise ValueError(f"{SCHEMA_FILE}: keywords this validator does not check: {unknown}")
    return schema  # itself valid against the metaschema: tests/unit/test_schema.py (0.2 s here)


def _keywords(schema: Any) -> set[str]:
    """Every keyword of ``schema`` and its subschemas (property names are not keywords)."""
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    subschemas = [schema.get("items"), schema.get("additionalProperties"),
                  *schema.get("properties", {}).values(), *schema.get("$defs", {}).values()]
    for sub in subschemas:
        found |= _keywords(sub)
    return found


@dataclass(frozen=True)
class Failure:
    """One keyword a value failed, as a JSON Schema validator reports it."""
    path: tuple[str | int, ...]  # where the value is in the document
    keyword: str  # type, required, enum, ...
    expected: Any  # the keyword's value in the schema
    schema: dict[str, Any]  # the subschema holding the keyword
    value: Any
    missing: str = ""  # required: the field (a failure each, as jsonschema reports them)


def failures(document: Any) -> list[Failure]:
    """Every keyword ``document`` fails, in the order a draft 2020-12 validator meets them."""
    root = topology_schema()
    return list(_check(root, root, document, ()))


def errors(document: Any) -> list[SchemaError]:
    """Every schema violation of ``document``, translated; empty when it is well-formed."""
    return [replace(_explain(f), kind=f.keyword) for f in failures(document)]


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    # (draft 2020-12: a number with no fractional part is an integer, 1.0 too)
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, false is not 0."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _check(root: dict[str, Any], schema: dict[str, Any], value: Any,
           path: tuple[str | int, ...]) -> Iterator[Failure]:
    def fail(keyword: str) -> Failure:
        return Failure(path, keyword, schema[keyword], schema, value)

    for keyword, expected in schema.items():
        if keyword == "$ref":
            target = root
            for part in expected.removeprefix("#/").split("/"):
                target = target[part]
            yield from _check(root, target, value, path)
        elif keyword == "type":
            kinds = [expected] if isinstance(expected, str) else expected
            if not any(_TYPES[k](value) for k in kinds):
                yield fail(keyword)
        elif keyword == "enum":
            if not any(_equal(value, choice) for choice in expected):
                yield fail(keyword)
        elif not isinstance(value, dict | list | str | int | float) or isinstance(value, bool):
            continue  # the other keywords speak of objects, arrays, strings and numbers
        elif isinstance(value, dict):
            if keyword == "required":
                yield from (replace(fail(keyword), missing=k) for k in expected if k not in value)
            elif keyword == "properties":
                for name, sub in expected.items():
                    if name in value:
                        yield from _check(root, sub, value[name], (*path, name))
            elif keyword == "additionalProperties":
                extra = [k for k in value if k not in schema.get("properties", {})]
                if expected is False and extra:
                    yield fail(keyword)
                elif isinstance(expected, dict):
                    for name in extra:
                        yield from _check(root, expected, value[name], (*path, name))
        elif isinstance(value, list):
            if keyword == "items":
                for i, item in enumerate(value):
                    yield from _check(root, expected, item, (*path, i))
            elif (keyword == "minItems" and len(value) < expected) or \
                    (keyword == "maxItems" and len(value) > expected):
                yield fail(keyword)
        elif isinstance(value, str):
            if (keyword == "minLength" and len(value) < expected) or \
                    (keyword == "maxLength" and len(value) > expected) or \
                    (keyword == "pattern" and not re.search(expected, value)):
                yield fail(keyword)
        elif (keyword == "minimum" and value < expected) or \
                (keyword == "maximum" and value > expected):
            yield fail(keyword)


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


def _explain(f: Failure) -> SchemaError:
    path = path_text(f.path)
    schema, value = f.schema, f.value
    if f.keyword == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = next(k for k in value if k not in allowed)
        return SchemaError(path_text([*f.path, extra]),
                           f"unknown field; expected one of {', '.join(allowed)}")
    if f.keyword == "required":
        return SchemaError(path, f"missing required field {f.missing!r}")
    if "x-error" in schema:
        return SchemaError(path, schema["x-error"])
    if schema.get("x-check") == "name":
        try:
            check_name(value, path)
        except Invalid as invalid:
            return SchemaError(path, invalid.message)
    if f.keyword == "type":
        return SchemaError(path, _type_message(f.expected, value))
    if f.keyword == "enum":
        field = str(f.path[-1]) if f.path else "value"
        what = schema.get("x-what", field)
        choices = (json.dumps(v) if isinstance(v, bool) else str(v) for v in f.expected)
        return SchemaError(path, f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    if f.keyword in ("minimum", "maximum"):
        return SchemaError(path, f"{value} is outside {schema.get('minimum', '')}.."
                           f"{schema.get('maximum', '')}")
    if f.keyword == "pattern":
        return SchemaError(path, f"{value!r} does not match {f.expected!r}")
    bound = "at least" if f.keyword.startswith("min") else "at most"
    unit = "characters" if f.keyword.endswith("Length") else "items"
    return SchemaError(path, f"expected {bound} {f.expected} {unit}")


def _type_message(wanted: str | list[str], value: Any) -> str:
    kinds = [k for k in ([wanted] if isinstance(wanted, str) else wanted) if k != "null"]
    got = type(value).__name__
    if kinds[0] in ("object", "array"):
        return f"expected {_KIND[kinds[0]]}, got {got}"
    return f"expected {' or '.join(_KIND[k] for k in kinds)}, got {got} {value!r}"
