"""sdnctl policy create | ls | rm | inspect: network policies (issue 22).

    sdnctl policy create -f FILE      one policy, a list, or a `policies:` block (topology form);
                                      a policy of the same name is replaced
    sdnctl policy ls [--json]
    sdnctl policy inspect NAME... [--json]   the policy and the containers it selects
    sdnctl policy rm NAME...
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sdnctl.api import convert, wire
from sdnctl.api.client import CommandError, connect
from sdnctl.api.model import POLICY_ALL_NETWORKS, Policy, PolicyPeer, PolicyRule, labels_dict
from sdnctl.cli.output import print_table
from sdnctl.topology.topology import TopologyError, parse_policies
from sdnctl.v1 import sdnctl_pb2 as pb

TIMEOUT = 30.0


def _fail(what: str, e: wire.RpcError) -> CommandError:
    return CommandError(f"{what}: {e.details()}")


def _peer_json(peer: PolicyPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if peer.labels is not None:
        out["labels"] = labels_dict(peer.labels)
    if peer.network:
        out["network"] = peer.network
    if peer.cidr:
        out["cidr"] = peer.cidr
    if peer.excepts:
        out["except"] = list(peer.excepts)
    return out


def _rules_json(rules: tuple[PolicyRule, ...] | None, side: str) -> list[dict[str, Any]] | None:
    if rules is None:
        return None
    return [{side: [_peer_json(p) for p in r.peers], "ports": list(r.ports)} for r in rules]


def policy_json(msg: pb.Policy) -> dict[str, Any]:
    """A policy in the topology's form, plus its revision and (inspect) what it selects."""
    p = convert.policy_from_pb(msg)
    out: dict[str, Any] = {"name": p.name}
    if p.network == POLICY_ALL_NETWORKS:
        out["networks"] = "all"
    else:
        out["network"] = p.network
    out["select"] = labels_dict(p.select)
    for direction, side in (("ingress", "from"), ("egress", "to")):
        rules = _rules_json(getattr(p, direction), side)
        if rules is not None:
            out[direction] = rules
    out["revision"] = msg.revision
    if msg.selected:
        out["selected"] = list(msg.selected)
    return out


def _summary(p: Policy, direction: str) -> str:
    rules = getattr(p, direction)
    if rules is None:
        return "-"
    return f"{len(rules)} rule(s)" if rules else "deny all"


def cmd_create(args: argparse.Namespace) -> int:
    try:
        with open(args.file) as f:
            policies = parse_policies(f.read(), args.file)
    except OSError as e:
        raise CommandError(f"policy create: {args.file}: {e.strerror}") from None
    except TopologyError as e:
        raise CommandError(str(e)) from None
    client = connect()
    for policy in policies:
        try:
            client.api.CreatePolicy(pb.CreatePolicyRequest(policy=convert.policy_to_pb(policy)),
                                    timeout=TIMEOUT)
        except wire.RpcError as e:
            raise _fail(f"policy create {policy.name}", e) from None
        print(policy.name)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    client = connect()
    found = client.api.ListPolicies(pb.ListRequest(), timeout=TIMEOUT).policies
    if args.json:
        print(json.dumps([policy_json(p) for p in found], indent=2))
        return 0
    rows = []
    for msg in found:
        p = convert.policy_from_pb(msg)
        rows.append([p.name, "all" if p.network == POLICY_ALL_NETWORKS else p.network,
                     ",".join(p.select) or "(all)", _summary(p, "ingress"),
                     _summary(p, "egress")])
    print_table(rows, ["NAME", "NETWORK", "SELECT", "INGRESS", "EGRESS"])
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    client = connect()
    shown = []
    for name in args.names:
        try:
            shown.append(policy_json(client.api.GetPolicy(pb.GetRequest(name=name),
                                                          timeout=TIMEOUT)))
        except wire.RpcError as e:
            raise _fail(f"policy inspect {name}", e) from None
    print(json.dumps(shown, indent=2))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = connect()
    for name in args.names:
        try:
            client.api.DeletePolicy(pb.DeleteRequest(name=name), timeout=TIMEOUT)
        except wire.RpcError as e:
            raise _fail(f"policy rm {name}", e) from None
        print(name)
    return 0


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="network policies: create, list, inspect, remove")
    verbs = policy.add_subparsers(dest="policy_command", required=True)
    p = verbs.add_parser("create", help="create or replace policies from a file")
    p.add_argument("-f", "--file", required=True, metavar="FILE")
    p.set_defaults(func=cmd_create)
    p = verbs.add_parser("ls", help="list policies")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = verbs.add_parser("inspect", help="a policy and the containers it selects (JSON)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--json", action="store_true", help="(the output is always JSON)")
    p.set_defaults(func=cmd_inspect)
    p = verbs.add_parser("rm", help="remove policies")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_rm)
