"""Sizes and rates as people write them (``64m``, ``10mbit``): Docker's and tc's units.

Design note. The CLI's ``run`` and ``update`` parse these, and the CLI's everyday entry must
start fast (``sdnctl.cli.everyday``): this module imports nothing but ``re`` and the model's
error, where ``sdnctl.api.fields`` (its other checks) loads the image references.
"""

from __future__ import annotations

import re

from sdnctl.api.model import Invalid

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.I)


def parse_size(value: object, field: str) -> int:
    """Bytes from ``64m``, ``1.5g``, ``512k``, ``1048576`` (Docker's units: powers of 1024)."""
    if isinstance(value, bool):
        raise Invalid(field, f"{value!r} is not a size such as 64m or 1g")
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise Invalid(field, f"{value!r} is not a size such as 64m or 1g")
    power = " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * (1024 ** power))


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(bit|bps)?", re.I)


def parse_rate(value: object, field: str) -> int:
    """Bits per second from ``10mbit``, ``1.5gbit``, ``500kbit``, ``1000000`` (tc's decimal
    units; ``mbps`` is megaBYTES per second, as in tc)."""
    if isinstance(value, bool):
        raise Invalid(field, f"{value!r} is not a rate such as 10mbit")
    if isinstance(value, int):
        return value
    match = _RATE.fullmatch(str(value).strip())
    if not match:
        raise Invalid(field, f"{value!r} is not a rate such as 10mbit or 1gbit")
    power = " kmgt".index(match.group(2).lower() or " ")
    bits = float(match.group(1)) * (1000 ** power)
    return int(bits * 8 if (match.group(3) or "").lower() == "bps" else bits)
