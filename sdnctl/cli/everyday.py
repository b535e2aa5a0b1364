"""The everyday verbs' entry: ``ps``, ``run``, ``rm``, ``exec``, ``network``, ``image`` ...

Design note. A CLI process pays for every module it imports before it does anything: the whole
CLI (topologies, the lab, the controller's own rules for ``up``'s dry run, certificates, drawing)
took about a second to import, for a ``ps`` that needs a third of that. So the verbs whose
modules import only the client, the protobuf vocabulary and the lab's local helpers register
here, and ``sdnctl.main`` offers every command line to :func:`main` first; any other verb (and
``--help``) goes to the full CLI, ``cli``, which registers these same modules too. A verb is
added to one module, and that module to :data:`MODULES` only if it stays light
(``tests/unit/test_cli_entry.py`` lists what this entry must never load). What only some of
these verbs need is imported inside them, as ``sdnctl.main`` imports the daemons: this
machine's reach into lab containers (``sdnctl.lab.local``: ``exec``, ``logs``, ``inspect``'s
usage, ``image prune``) and the registry client (``image pull``/``push``). With the field
checks (netaddr) and the image references no longer on this path either, and gRPC spoken by
``sdnctl.api.wire`` instead of grpcio, the entry loads in about 60 ms instead of 180; protobuf
and our model are most of what is left (``docs/architecture.md``, "Where a CLI start goes").
"""

from __future__ import annotations

import argparse

from sdnctl.cli import base, imagecli, listing, verbs

#: The verb modules of this entry, in help order.
MODULES = (listing, verbs, imagecli)


def main(argv: list[str]) -> int | None:
    """Run ``argv``'s verb if this entry has it; None if not (then the full CLI takes it)."""
    parser = argparse.ArgumentParser(prog="sdnctl")
    base.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in MODULES:
        module.register(sub)
    if base.verb_of(argv) not in sub.choices:
        return None
    return base.run(parser.parse_args(argv))
