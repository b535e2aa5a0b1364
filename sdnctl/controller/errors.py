"""Domain errors. One gRPC interceptor maps each class to a status code.

``Invalid`` (bad input) lives in :mod:`sdnctl.api.model`, because the model validates too; it is
re-exported here so that controller code imports every domain error from one place. It is a
``ValueError``, not an :class:`SdnError`.
"""

from __future__ import annotations

from sdnctl.api.model import Invalid


class SdnError(Exception):
    """Base of the controller's domain errors; ``message`` is fit to show a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(SdnError):
    """``NotFound("network", "front")``: network 'front' not found."""

    def __init__(self, field: str, name: str) -> None:
        super().__init__(f"{field} {name!r} not found")
        self.field = field
        self.name = name


class AlreadyExists(SdnError):
    """``AlreadyExists("network", "front")``: network 'front' already exists.

    With ``detail``, the message is ``field: detail``, for a value that is taken rather than an
    object that exists (``container.fixed_ip: 10.88.0.5 is taken by container 'db'``).
    """

    def __init__(self, field: str, name: str, detail: str = "") -> None:
        super().__init__(f"{field}: {detail}" if detail else f"{field} {name!r} already exists")
        self.field = field
        self.name = name


class Conflict(SdnError):
    """A concurrent writer kept winning; the caller may retry."""


class Exhausted(SdnError):
    """No free subnet or address is left."""


class PermissionDenied(SdnError):
    """The caller is who it says, but may not do this (an agent reporting another host's
    containers)."""


class FailedPrecondition(SdnError):
    """The request is valid but the current state forbids it (e.g. deleting a network in use)."""


class Unavailable(SdnError):
    """Something the request needs is out of reach (the registry images are pushed to)."""


__all__ = [
    "AlreadyExists",
    "Conflict",
    "Exhausted",
    "FailedPrecondition",
    "Invalid",
    "NotFound",
    "PermissionDenied",
    "SdnError",
    "Unavailable",
]
