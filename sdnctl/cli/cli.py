"""sdnctl: the command line.

    sdnctl up FILE [--dry-run]  print the plan, build and start a topology, wait until
                              every container runs (--dry-run: only the plan)
    sdnctl down FILE          remove it (containers, networks, hosts, lab namespaces)
    sdnctl status [FILE]      hosts, networks, containers, health
    sdnctl check FILE         expected vs measured reachability, probed for real (exit 1)
    sdnctl graph FILE -o OUT  draw it (.svg, .png or .dot)
    sdnctl trace SRC DST      one probe, hop by hop
    sdnctl network|run|rm|exec|logs|host ...   the everyday verbs
    sdnctl ps [--json]        list containers
    sdnctl inspect {host|network|container} NAME [--json]
    sdnctl ipam [--network N] [--json]         leases, allocations, quarantine, history
    sdnctl ipam check [--network N] [--json]   consistency (exit 1 when there are problems)
    sdnctl ipam gc [--dry-run] [--grace S] [--json]   free what stayed unused a grace period
    sdnctl events [--follow] [--json]          the audit log: who changed what, who was refused
    sdnctl pki init|issue|revoke|ls ...        certificates for mutual TLS (see README)
    sdnctl controller [serve] ...   run the controller in the foreground (= sdnctl-controller)
    sdnctl controller migrate --from STORE --to STORE   copy a store (SQLite <-> etcd)
    sdnctl agent ...          run an agent in the foreground (= sdnctl-agent)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from sdnctl.api import paths, tlsfiles
from sdnctl.api.client import CommandError
from sdnctl.cli import base, everyday, graph, policycli
from sdnctl.cli.output import print_table
from sdnctl.lab import trace
from sdnctl.topology import check, deploy, topology


def cmd_up(args: argparse.Namespace) -> int:
    topo = topology.load(args.file)
    if args.image:
        missing = [f for f in args.image if not os.path.isfile(f)]
        if missing:
            raise CommandError(f"--image: no such file: {', '.join(missing)}")
        topo = dataclasses.replace(
            topo, images=(*topo.images, *(os.path.abspath(f) for f in args.image)))
    if args.dry_run:
        deploy.dry_run(topo)
        return 0
    deploy.up(topo, timeout=args.timeout)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    deploy.down(topology.load(args.file))
    return 0


def default_pki_dir() -> str:
    return os.environ.get("SDNCTL_PKI_DIR", os.path.join(paths.state_dir(), "pki"))


def cmd_pki(args: argparse.Namespace) -> int:
    # (imported here: cryptography's import, about 30 ms, is for this verb alone)
    from sdnctl.api import pki

    try:
        if args.action == "init":
            pki.init(args.dir, args.name, controller_days=args.days)
            print(f"CA and controller certificate in {args.dir}")
        elif args.action == "issue":
            if bool(args.agent) == bool(args.user):
                raise CommandError("pki issue: give --agent HOST or --user NAME --role ROLE")
            kind, name = ("agent", args.agent) if args.agent else ("user", args.user)
            cert, key = pki.issue(args.dir, kind, name, role=args.role or "", days=args.days)
            print(f"{cert}\n{key}")
        elif args.action == "revoke":
            serials = pki.revoke(args.dir, args.what)
            print(f"revoked {', '.join(hex(s) for s in serials) or 'nothing new'}; "
                  f"{os.path.join(args.dir, 'crl.pem')} rewritten (the controller reloads it)")
        else:
            items = pki.listing(args.dir)
            if args.json:
                print(json.dumps(items, indent=2))
            else:
                print_table([[hex(int(str(i["serial"]))), str(i["kind"]), str(i["name"]),
                              str(i["role"]), str(i["not_after"]),
                              "revoked" if i["revoked"] else "expired" if i["expired"] else ""]
                             for i in items],
                            ["SERIAL", "KIND", "NAME", "ROLE", "NOT AFTER", "STATE"])
    except pki.PkiError as e:
        raise CommandError(str(e)) from None
    return 0


def add_pki_parser(sub: Any) -> None:
    pki_parser = sub.add_parser("pki", help="certificates for mutual TLS: init, issue, revoke, "
                                "ls")
    actions = pki_parser.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help)
        p.add_argument("--dir", default=default_pki_dir(),
                       help="the PKI directory (default: $SDNCTL_PKI_DIR, else %(default)s)")
        p.set_defaults(func=cmd_pki)
        return p

    p = action("init", "create a CA and the controller's certificate")
    p.add_argument("--name", action="append", default=[], metavar="DNS|IP",
                   help="a name clients dial the controller by (repeatable; localhost, "
                   "127.0.0.1, ::1 and this host's name are always in)")
    p.add_argument("--days", type=int, default=tlsfiles.CERT_DAYS,
                   help="validity of the controller's certificate (default: %(default)s)")
    p = action("issue", "a certificate for an agent or a user")
    p.add_argument("--agent", metavar="HOST", help="for HOST's agent")
    p.add_argument("--user", metavar="NAME", help="for a user of sdnctl")
    p.add_argument("--role", choices=tlsfiles.ROLES, help="--user: what the user may do")
    p.add_argument("--days", type=int, default=tlsfiles.CERT_DAYS,
                   help="validity (default: %(default)s)")
    p = action("revoke", "revoke certificates; the controller reloads the CRL")
    p.add_argument("what", help="a serial (0x... or decimal) or a name (all its certificates)")
    p = action("ls", "what was issued, revoked, expired")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdnctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    base.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    add_pki_parser(sub)

    p = sub.add_parser("up", help="build and start a topology")
    p.add_argument("file")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for containers (default %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (+ create, ~ update, = unchanged, ! refused) and change "
                   "nothing")
    p.add_argument("--image", action="append", metavar="FILE",
                   help="an image archive to load first, as the file's `images:` (repeatable)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="remove a topology")
    p.add_argument("file")
    p.set_defaults(func=cmd_down)

    # Verbs that live in their own modules (each adds its sub-parsers and handlers); the
    # everyday ones are also reachable through the light entry, `everyday`.
    for module in (*everyday.MODULES, check, graph, policycli, trace):
        module.register(sub)

    sub.add_parser("controller", help="run the controller: controller [serve] --store ...; "
                   "copy a store: controller migrate --from STORE --to STORE",
                   add_help=False)
    sub.add_parser("agent", help="run an agent (see sdnctl agent --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every client verb (``sdnctl.main`` runs the daemons' ``controller`` and ``agent``)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return base.run(args)
    except topology.TopologyError as e:
        print(f"sdnctl: {e}", file=sys.stderr)
        return 2
    except deploy.DeployError as e:
        print(f"sdnctl: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
