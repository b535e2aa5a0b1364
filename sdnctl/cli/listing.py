"""The read-only verbs: ``ps``, ``inspect``, ``ipam`` (and ``ipam check|gc``), ``events``.

Design note. These are the verbs people run in loops and scripts, so this module imports only
the client, the protobuf vocabulary and the output helpers (see ``everyday``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from sdnctl.api.client import connect
from sdnctl.cli.output import container_json, host_json, network_json, print_table, state_text
from sdnctl.v1 import sdnctl_pb2 as pb


def cmd_ps(args: argparse.Namespace) -> int:
    client = connect()
    reply = client.api.ListContainers(pb.ListRequest(host=args.host or ""), timeout=10)
    items = [container_json(c) for c in reply.containers]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print_table([[c["name"], c["host"], c["network"],
                  c["owner"][:16] if c["cni_netns"] else c["image"] or "-",
                  c["ip"] or c["ip6"],  # an IPv6-only network's containers have ip6 only
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
        from sdnctl.lab import local  # (here, not at the top: sdnctl.cli.everyday's note)

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


def register(sub: Any) -> None:
    p = sub.add_parser("events", help="the audit log: every change and refusal, with who")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming new records")
    p.add_argument("--since", type=int, default=0, metavar="SEQ",
                   help="only records after this sequence number")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

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
