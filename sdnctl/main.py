"""``sdnctl``: the one command. Runs a daemon in the foreground, or hands over to the CLI.

Design note. This is the composition root, the only module allowed to import every part:
``sdnctl controller [serve|migrate]`` runs the controller (``sdnctl.controller``), ``sdnctl
agent`` an agent (``agent``), anything else is a client verb. So the CLI package never imports
the daemons. Modules are imported when asked for, not at the top, because a CLI process pays
for every import: the daemons (grpcio, the store drivers) load only to run one, and the full
CLI (``sdnctl.cli.cli``: topologies, the lab, certificates, drawing) only when the verb is not
one of the everyday verbs (``sdnctl.cli.everyday``: ``ps``, ``run``, ``rm``, ``exec`` ...),
which start in about a third of the time.

A client verb's process ends with :func:`leave`: once the verb has returned and its output is
flushed, nothing of the interpreter's teardown is worth waiting for (with grpcio's channel it
took 40-45 ms: its core shutting its threads down, then every module freed). The daemons exit
as usual.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from sdnctl.cli import everyday

#: The first words that run a daemon, not a client verb.
DAEMONS = ("controller", "agent")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["controller", "migrate"]:
        from sdnctl.controller.migrate import main as migrate_main

        return migrate_main(argv[2:])
    if argv[:1] == ["controller"]:
        from sdnctl.controller.server import main as controller_main

        return controller_main(argv[2:] if argv[1:2] == ["serve"] else argv[1:])
    if argv[:1] == ["agent"]:
        from agent.main import main as agent_main

        return agent_main(argv[1:])
    done = everyday.main(argv)
    if done is not None:
        return done
    from sdnctl.cli import cli

    return cli.main(argv)


def entry() -> NoReturn:
    """The ``sdnctl`` command: :func:`main`, then a client verb's process leaves at once."""
    argv = sys.argv[1:]
    status = main(argv)
    if argv[:1] and argv[0] in DAEMONS:
        sys.exit(status)
    leave(status)


def leave(status: int) -> NoReturn:
    """Flush standard output and error, then end the process without the interpreter's
    teardown (no client verb leaves a thread, a temporary file or an atexit handler behind).
    A reader that went away (``sdnctl ps | head -1``) is no error: the status stays."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # (ValueError: closed)
            pass
    os._exit(status)


if __name__ == "__main__":
    entry()
