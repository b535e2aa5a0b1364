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
import time
from typing import Any

import grpc

from sdnctl.api import paths, pki
from sdnctl.api.client import TLS_ENV, CommandError, ControllerUnavailable, connect
from sdnctl.cli import graph, imagecli, policycli, verbs
from sdnctl.cli.output import container_json, host_json, network_json, print_table, state_text
from sdnctl.lab import local, trace
from sdnctl.topology import check, deploy, topology
from sdnctl.v1 import sdnctl_pb2 as pb


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


def cmd_ps(args: argparse.Namespace) -> int:
    client = connect()
    reply = client.api.ListContainers(pb.ListRequest(host=args.host or ""), timeout=10)
    items = [container_json(c) for c in reply.containers]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print_table([[c["name"], c["host"], c["network"],
                  c["owner"][:16] if c["cni_netns"] else c["image"] or "-", c["ip"],
                  state_text(c), str(c["pid"] or "")]
                 for c in items], ["NAME", "HOST", "NETWORK", "IMAGE", "IP", "STATE", "PID"])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    client = connect()
    request = pb.GetRequest(name=args.name)
    data: dict[str, Any]
    if args.kind == "host":
        data = host_json(client.api.GetHost(request, timeout=10))
    elif args.kind == "network":
        data = network_json(client.api.GetNetwork(request, timeout=10))
    else:
        ctr = client.api.GetContainer(request, timeout=10)
        data = container_json(ctr)
        data["usage"] = local.live_usage(ctr)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key + ':':<18} {value}")
    return 0


def _when(at: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def ipam_json(report: pb.IpamReport) -> dict[str, Any]:
    return {
        "leases": [{"network": x.network, "host": x.host, "subnet": x.subnet,
                    "gateway": x.gateway, "renewed_at": x.renewed_at,
                    "expires_at": x.expires_at} for x in report.leases],
        "allocations": [{"network": a.network, "container": a.container,
                         "interface": a.interface, "address": a.address, "host": a.host}
                        for a in report.allocations],
        "quarantined": [{"network": q.network, "subject": q.subnet, "until": q.until}
                        for q in report.quarantined],
        "history": [{"at": e.at, "kind": e.kind, "network": e.network, "host": e.host,
                     "subnet": e.subnet, "address": e.address, "container": e.container}
                    for e in report.history],
    }


#: How many history events `sdnctl ipam` shows as a table (--json shows all it got).
RECENT_HISTORY = 20


def cmd_ipam(args: argparse.Namespace) -> int:
    client = connect()
    request = pb.GetIpamRequest(network=args.network or "")
    if args.action == "check":
        return _ipam_check(client.api.CheckIpam(request, timeout=10), args.json)
    if args.action == "gc":
        return _ipam_gc(client.api.GcIpam(pb.GcIpamRequest(
            dry_run=args.dry_run, grace_seconds=args.grace), timeout=30), args.json)
    data = ipam_json(client.api.GetIpam(request, timeout=10))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("LEASES")
    print_table([[x["network"], x["host"], x["subnet"], x["gateway"], _when(x["renewed_at"]),
                  _when(x["expires_at"])] for x in data["leases"]],
                ["NETWORK", "OWNER", "SUBNET", "GATEWAY", "RENEWED", "EXPIRES"])
    print("\nALLOCATIONS")
    print_table([[a["network"], a["address"], a["container"], a["interface"], a["host"]]
                 for a in data["allocations"]],
                ["NETWORK", "ADDRESS", "CONTAINER", "INTERFACE", "HOST"])
    print("\nQUARANTINE")
    print_table([[q["network"], q["subject"], _when(q["until"])] for q in data["quarantined"]],
                ["NETWORK", "SUBNET/ADDRESS", "UNTIL"])
    print("\nRECENT HISTORY")
    print_table([[_when(e["at"]), e["kind"], e["network"], e["host"],
                  e["address"] or e["subnet"], e["container"]]
                 for e in data["history"][-RECENT_HISTORY:]],
                ["WHEN", "EVENT", "NETWORK", "HOST", "SUBNET/ADDRESS", "CONTAINER"])
    return 0


def _ipam_gc(report: pb.GcIpamReport, as_json: bool) -> int:
    items: list[dict[str, Any]] = [
        {"kind": i.kind, "network": i.network, "subject": i.subject, "detail": i.detail,
         "action": i.action, "first_seen": i.first_seen, "free_in": i.free_in}
        for i in report.items]
    if as_json:
        print(json.dumps({"at": report.at, "grace": report.grace_seconds,
                          "dry_run": report.dry_run, "items": items}, indent=2))
        return 0
    verbs = {"mark": "first seen unused: marked", "wait": "unused, marked",
             "reset": "changed since marked: marked again",
             "free": "would be freed" if report.dry_run else "freed"}
    print_table([[i["kind"], i["network"], i["subject"], verbs.get(i["action"], i["action"]),
                  f"{i['free_in']} s" if i["action"] != "free" else "-", i["detail"]]
                 for i in items],
                ["KIND", "NETWORK", "SUBJECT", "STATE", "FREE IN", "WHY"])
    freed = sum(1 for i in items if i["action"] == "free")
    print(f"{'dry run: ' if report.dry_run else ''}{len(items)} candidate(s), "
          f"{freed} {'to free now' if report.dry_run else 'freed'} "
          f"(grace {report.grace_seconds} s)", file=sys.stderr)
    return 0


def _ipam_check(report: pb.IpamCheckReport, as_json: bool) -> int:
    problems = [{"kind": p.kind, "network": p.network, "subject": p.subject,
                 "detail": p.detail} for p in report.problems]
    if as_json:
        print(json.dumps({"consistent": not problems, "problems": problems}, indent=2))
    elif problems:
        print_table([[p["kind"], p["network"], p["subject"], p["detail"]] for p in problems],
                    ["PROBLEM", "NETWORK", "SUBJECT", "DETAIL"])
    else:
        print("IPAM is consistent")
    return 1 if problems else 0


def event_json(e: pb.AuditEvent) -> dict[str, Any]:
    return {"seq": e.seq, "at": e.at, "identity": e.identity, "method": e.method,
            "request": e.request, "code": e.code, "message": e.message,
            "revision": e.revision, "peer": e.peer}


def cmd_events(args: argparse.Namespace) -> int:
    client = connect()
    stream = client.api.Events(pb.EventsRequest(follow=args.follow, since=args.since),
                               timeout=None if args.follow else 30)
    try:
        for event in stream:
            if args.json:
                print(json.dumps(event_json(event)), flush=True)
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.at))
            verb = event.method.rsplit("/", 1)[-1]
            if event.method.startswith("agent/"):  # what an agent did: repair, state change
                subject = json.loads(event.request or "{}").get("subject", "")
                print(f"{event.seq:>6} {when} {event.identity:<24} {verb:<16} {subject}: "
                      f"{event.message}", flush=True)
                continue
            outcome = event.code if event.code == "OK" else f"{event.code}: {event.message}"
            print(f"{event.seq:>6} {when} {event.identity:<24} {verb:<16} {outcome} "
                  f"{event.request}", flush=True)
    except KeyboardInterrupt:
        stream.cancel()
    return 0


def default_pki_dir() -> str:
    return os.environ.get("SDNCTL_PKI_DIR", os.path.join(paths.state_dir(), "pki"))


def cmd_pki(args: argparse.Namespace) -> int:
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
    p.add_argument("--days", type=int, default=pki.CERT_DAYS,
                   help="validity of the controller's certificate (default: %(default)s)")
    p = action("issue", "a certificate for an agent or a user")
    p.add_argument("--agent", metavar="HOST", help="for HOST's agent")
    p.add_argument("--user", metavar="NAME", help="for a user of sdnctl")
    p.add_argument("--role", choices=pki.ROLES, help="--user: what the user may do")
    p.add_argument("--days", type=int, default=pki.CERT_DAYS,
                   help="validity (default: %(default)s)")
    p = action("revoke", "revoke certificates; the controller reloads the CRL")
    p.add_argument("what", help="a serial (0x... or decimal) or a name (all its certificates)")
    p = action("ls", "what was issued, revoked, expired")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdnctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controller", metavar="ADDRESS",
                        help="the controller(s) to talk to: unix:/path or host:port; "
                             "replicas comma-separated, tried in order (default: "
                             "$SDNCTL_CONTROLLER, else unix:<run dir>/controller.sock)")
    parser.add_argument("--tls-cert", help="client certificate for a TCP controller "
                        "(`sdnctl pki issue --user`; default: $SDNCTL_TLS_CERT)")
    parser.add_argument("--tls-key", help="its key (default: $SDNCTL_TLS_KEY)")
    parser.add_argument("--tls-ca", help="the CA the controller's certificate must chain to "
                        "(default: $SDNCTL_TLS_CA)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("events", help="the audit log: every change and refusal, with who")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming new records")
    p.add_argument("--since", type=int, default=0, metavar="SEQ",
                   help="only records after this sequence number")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)
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

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("--host", help="only this host's containers")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("inspect", help="show one object")
    p.add_argument("kind", choices=("host", "network", "container"))
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ipam", help="show leases, allocations, quarantine and history; "
                       "`ipam check` checks them")
    p.add_argument("action", nargs="?", choices=("check", "gc"),
                   help="check: report leaked or missing allocations (exit 1 if any); "
                   "gc: free what has been unused for a grace period (seen twice)")
    p.add_argument("--network", help="only this network")
    p.add_argument("--dry-run", action="store_true", help="gc: report, change nothing")
    p.add_argument("--grace", type=int, default=0, metavar="SECONDS",
                   help="gc: seconds between the two sightings (default: the controller's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ipam)

    # Verbs that live in their own modules (each adds its sub-parsers and handlers).
    for module in (check, graph, imagecli, policycli, trace, verbs):
        module.register(sub)

    sub.add_parser("controller", help="run the controller: controller [serve] --store ...; "
                   "copy a store: controller migrate --from STORE --to STORE",
                   add_help=False)
    sub.add_parser("agent", help="run an agent (see sdnctl agent --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The client verbs (``sdnctl.main`` runs the daemons' ``controller`` and ``agent``)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.controller:  # every client below dials paths.controller_address()
        os.environ["SDNCTL_CONTROLLER"] = args.controller
    for env, value in zip(TLS_ENV, (args.tls_cert, args.tls_key, args.tls_ca), strict=True):
        if value:  # and open_channel reads these
            os.environ[env] = value
    try:
        result: int = args.func(args)
        return result
    except topology.TopologyError as e:
        print(f"sdnctl: {e}", file=sys.stderr)
        return 2
    except (CommandError, deploy.DeployError, ControllerUnavailable) as e:
        print(f"sdnctl: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"sdnctl: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
