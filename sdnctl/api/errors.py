"""The errors a client of the controller says to its user (the CLI prints them and exits 1).

Design note. Both ways of reaching the controller raise these: the CLI's own gRPC
(``sdnctl.api.client`` over ``wire``) and grpcio's channels of the daemons and tests
(``sdnctl.api.grpcchannel``), so they live apart from either.
"""

from __future__ import annotations


class ControllerUnavailable(RuntimeError):
    """No controller answers, and none could be started."""


class CommandError(RuntimeError):
    """A verb failed in a way the user can act on: sdnctl prints the message, exits 1."""
