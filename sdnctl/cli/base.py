"""What every ``sdnctl`` client verb shares: the global options and how a verb's errors end.

Design note. Both entries of the CLI (``everyday`` for the verbs that load fast, ``cli`` for all
of them) build their parsers from :func:`add_global_options` and run the chosen verb through
:func:`run`, so an option or an error's exit status is defined once.
"""

from __future__ import annotations

import argparse
import os
import sys

from sdnctl.api import wire
from sdnctl.api.client import TLS_ENV, CommandError, ControllerUnavailable

#: The global options that take a value (``--controller ADDRESS``), for :func:`verb_of`.
VALUE_OPTIONS = ("--controller", "--tls-cert", "--tls-key", "--tls-ca")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", metavar="ADDRESS",
                        help="the controller(s) to talk to: unix:/path or host:port; "
                             "replicas comma-separated, tried in order (default: "
                             "$SDNCTL_CONTROLLER, else unix:<run dir>/controller.sock)")
    parser.add_argument("--tls-cert", help="client certificate for a TCP controller "
                        "(`sdnctl pki issue --user`; default: $SDNCTL_TLS_CERT)")
    parser.add_argument("--tls-key", help="its key (default: $SDNCTL_TLS_KEY)")
    parser.add_argument("--tls-ca", help="the CA the controller's certificate must chain to "
                        "(default: $SDNCTL_TLS_CA)")


def verb_of(argv: list[str]) -> str:
    """The verb ``argv`` names (its first word that is not a global option or its value)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in VALUE_OPTIONS:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return word
    return ""


def run(args: argparse.Namespace) -> int:
    """Run the parsed verb: 0 or its own status; 1, with one line on stderr, when it failed."""
    if args.controller:  # every client below dials paths.controller_address()
        os.environ["SDNCTL_CONTROLLER"] = args.controller
    for env, value in zip(TLS_ENV, (args.tls_cert, args.tls_key, args.tls_ca), strict=True):
        if value:  # and open_channel reads these
            os.environ[env] = value
    try:
        result: int = args.func(args)
        return result
    except (CommandError, ControllerUnavailable) as e:
        print(f"sdnctl: {e}", file=sys.stderr)
        return 1
    except wire.RpcError as e:
        print(f"sdnctl: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
