"""``sdnctl``: the one command. Runs a daemon in the foreground, or hands over to the CLI.

Design note. This is the composition root, the only module allowed to import every part:
``sdnctl controller [serve|migrate]`` runs the controller (``sdnctl.controller``), ``sdnctl
agent`` an agent (``agent``), anything else is a client verb (``sdnctl.cli.cli``). So the CLI
package never imports the daemons. The daemons are imported when asked for, not at the top:
every client verb would otherwise load them (pyroute2, the store drivers) for nothing.
"""

from __future__ import annotations

import sys

from sdnctl.cli import cli


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
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
