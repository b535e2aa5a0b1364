"""Everyday verbs in Docker's spirit: networks, containers, hosts.

    sdnctl network create NAME --subnet CIDR [--subnet6 CIDR6] [--driver bridge|overlay] [...]
    sdnctl network ls [--json] | inspect NAME [--json] | rm NAME...
    sdnctl network connect NETWORK CONTAINER | disconnect NETWORK CONTAINER
    sdnctl run --name NAME --host HOST [--network N] [-p HOST:CTR] [--restart P] [--] CMD...
    sdnctl rm [-f] NAME...
    sdnctl exec NAME CMD...        (containers on this machine: lab hosts)
    sdnctl logs [-f] NAME          (containers on this machine: lab hosts)
    sdnctl host ls [--json]

Everything goes through the controller's gRPC API; a verb that changes a container waits until
the container's host has realised the change (its agent reports the revision), so when the verb
returns the kernel is as it says. ``exec`` and ``logs`` act on this machine's kernel and files:
they work for containers on lab hosts (namespaces on this machine) and refuse others.

A container has exactly one interface here, so ``network connect`` moves it to the network (an
UpdateContainer with the new mode; its agent restarts it with a new address) and ``network
disconnect`` moves it to ``none`` (only ``lo``). Neither adds or removes a second interface, as
Docker's would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sdnctl.api import convert, paths, wire
from sdnctl.api.client import DELETE_BATCH, Client, CommandError, connect, poll_delays
from sdnctl.api.model import (
    DRIVER_BRIDGE,
    DRIVERS,
    MODE_BRIDGE,
    MODE_NONE,
    STATE_CREATED,
    STATE_ERROR,
    STATE_EXITED,
    STATE_RESTARTING,
    STATE_RUNNING,
    USERNS_AUTO,
    USERNS_MODES,
    WAIT_HOST_MAX,
    network_mode,
    spans_hosts,
)
from sdnctl.api.units import parse_rate, parse_size
from sdnctl.cli.output import host_json, network_json, print_table
from sdnctl.v1 import sdnctl_pb2 as pb

T = TypeVar("T")

RPC_TIMEOUT = 10.0
#: How long a verb that changes a container waits for its host to realise the change.
WAIT_TIMEOUT = 60.0
RESTART_POLICIES = ("no", "always", "on-failure")


def _rpc(what: str, call: Callable[[], T]) -> T:
    """``call()``, with a gRPC error turned into a CommandError naming what we tried."""
    try:
        return call()
    except wire.RpcError as e:
        details = e.details() or e.code().name
        raise CommandError(f"could not {what}: {details}") from e


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# -- network ---------------------------------------------------------------------------------


def network_from_args(args: argparse.Namespace) -> pb.Network:
    """The Network message `network create` sends (pure)."""
    if not args.subnet and not getattr(args, "subnet6", None):
        raise CommandError("network create: give --subnet, --subnet6 or both (--subnet6 alone "
                           "makes an IPv6-only network)")
    net = pb.Network(name=args.name, driver=args.driver, subnet=args.subnet,
                     gateway=args.gateway or "", ip_range=args.ip_range or "",
                     internal=args.internal, allow=list(args.allow or []),
                     mtu=args.mtu or 0, host_prefix=args.host_prefix or 0,
                     vni=args.vni or 0, vxlan_port=args.vxlan_port or 0,
                     dns_domain=getattr(args, "dns_domain", None) or "",
                     dns=list(getattr(args, "dns", None) or []),
                     subnet6=getattr(args, "subnet6", None) or "",
                     host_prefix6=getattr(args, "host_prefix6", None) or 0,
                     masquerade6=bool(getattr(args, "masquerade6", False)))
    net.masquerade = not args.no_masquerade
    return net


def network_flags(n: dict[str, Any]) -> str:
    """The FLAGS column of `network ls` (pure)."""
    flags = []
    if n["builtin"]:
        flags.append("builtin")
    if n["internal"]:
        flags.append("internal")
    elif not n["masquerade"]:
        flags.append("no-masquerade")
    if n.get("masquerade6") and not n["internal"]:
        flags.append("masquerade6")
    if spans_hosts(n["driver"]):
        flags.append(f"vni={n['vni']}")
    return ",".join(flags)


def cmd_network_create(args: argparse.Namespace) -> int:
    client = connect()
    got = _rpc(f"create network {args.name!r}", lambda: client.api.CreateNetwork(
        pb.CreateNetworkRequest(network=network_from_args(args)), timeout=RPC_TIMEOUT))
    print(got.name)
    return 0


def cmd_network_ls(args: argparse.Namespace) -> int:
    client = connect()
    reply = _rpc("list networks", lambda: client.api.ListNetworks(pb.ListRequest(),
                                                                  timeout=RPC_TIMEOUT))
    items = [network_json(n) for n in reply.networks]
    if args.json:
        _print_json(items)
        return 0
    print_table([[n["name"], n["driver"], n["subnet"] or n["subnet6"], n["gateway"] or "-",
                  network_flags(n),
             ",".join(n["allow"]) or "-"] for n in items],
           ["NAME", "DRIVER", "SUBNET", "GATEWAY", "FLAGS", "ALLOW"])
    return 0


def network_details(client: Client, name: str) -> dict[str, Any]:
    """A network as `network inspect` shows it: its spec, its hosts' leases, its containers."""
    data = network_json(_rpc(f"inspect network {name!r}", lambda: client.api.GetNetwork(
        pb.GetRequest(name=name), timeout=RPC_TIMEOUT)))
    ipam = _rpc("read IPAM", lambda: client.api.GetIpam(pb.GetIpamRequest(network=name),
                                                        timeout=RPC_TIMEOUT))
    data["leases"] = [{"host": x.host, "subnet": x.subnet, "gateway": x.gateway,
                       "subnet6": x.subnet6, "gateway6": x.gateway6} for x in ipam.leases]
    listed = _rpc("list containers", lambda: client.api.ListContainers(
        pb.ListRequest(network=name), timeout=RPC_TIMEOUT))
    data["containers"] = [{"name": c.name, "host": c.host, "ip": c.ip, "ip6": c.ip6,
                           "state": c.status.state or "pending"} for c in listed.containers
                          if c.network == name]
    return data


def cmd_network_inspect(args: argparse.Namespace) -> int:
    data = network_details(connect(), args.name)
    if args.json:
        _print_json(data)
        return 0
    for key, value in data.items():
        if key in ("leases", "containers"):
            continue
        print(f"{key + ':':<14} {value}")
    print("leases:")
    for x in data["leases"]:
        for subnet, gateway in ((x["subnet"], x["gateway"]), (x["subnet6"], x["gateway6"])):
            if subnet:  # each family the network has (an IPv6-only one: subnet6 only)
                print(f"  {x['host']:<12} {subnet:<18} gateway {gateway}")
    print("containers:")
    for c in data["containers"]:
        print(f"  {c['name']:<12} {c['host']:<12} {c['ip'] or c['ip6'] or '-':<16} "
              f"{c['state']}")
    return 0


def cmd_network_rm(args: argparse.Namespace) -> int:
    client = connect()
    for name in args.names:
        request = pb.DeleteRequest(name=name)
        _rpc(f"remove network {name!r}",
             lambda: client.api.DeleteNetwork(request, timeout=RPC_TIMEOUT))  # noqa: B023
        print(name)
    return 0


def reattach(container: pb.Container, network: str, ip: str = "") -> pb.Container:
    """The spec of ``container`` moved to ``network`` (pure). A fixed address belonged to the
    old network and goes; published ports exist only in bridge mode and go when leaving it."""
    spec = convert.container_from_pb(container)
    ports = spec.ports if network_mode(network)[0] == MODE_BRIDGE else ()
    return convert.container_to_pb(dataclasses.replace(spec, network=network, fixed_ip=ip,
                                                       fixed_ip6="", ports=ports))


def cmd_network_connect(args: argparse.Namespace) -> int:
    client = connect()
    have = _get_container(client, args.container)
    if have.network == args.network:
        print(f"{args.container} is already on {args.network}", file=sys.stderr)
        return 0
    _rpc(f"inspect network {args.network!r}", lambda: client.api.GetNetwork(
        pb.GetRequest(name=args.network), timeout=RPC_TIMEOUT))
    return _move(client, have, args.network, args.ip or "", args.timeout)


def cmd_network_disconnect(args: argparse.Namespace) -> int:
    client = connect()
    have = _get_container(client, args.container)
    if have.network != args.network:
        raise CommandError(f"container {args.container!r} is not on network {args.network!r} "
                           f"(its network is {have.network or 'the default bridge'!r})")
    return _move(client, have, MODE_NONE, "", args.timeout)


def _move(client: Client, have: pb.Container, network: str, ip: str, timeout: float) -> int:
    spec = reattach(have, network, ip)
    got = _rpc(f"move container {have.name!r} to {network!r}", lambda: client.api.UpdateContainer(
        pb.UpdateContainerRequest(container=spec), timeout=RPC_TIMEOUT))
    now = wait_realised(client, got.host, got.name, got.revision, timeout)
    held = " ".join(f"{a}/{n}" for a, n in ((now.ip, now.prefixlen), (now.ip6, now.prefixlen6))
                    if a)  # each family it has (an IPv6-only network's: IPv6 only)
    address = f" ({held})" if held else ""
    print(f"{now.name}: {network}{address}, {now.status.state}")
    return 0


# -- containers ------------------------------------------------------------------------------


def _get_container(client: Client, name: str) -> pb.Container:
    return _rpc(f"find container {name!r}", lambda: client.api.GetContainer(
        pb.GetRequest(name=name), timeout=RPC_TIMEOUT))


def wait_realised(client: Client, host: str, name: str, revision: int,
                  timeout: float) -> pb.Container:
    """Until ``host``'s agent has realised ``revision`` and ``name`` has left pending: running,
    exited or in error. Returns the container as then reported."""
    deadline = time.monotonic() + timeout
    delays = poll_delays()
    while True:
        got = _wait_host(client, host, revision, deadline)
        ctr = _get_container(client, name)
        settled = ctr.status.state in (STATE_RUNNING, STATE_EXITED, STATE_ERROR,
                                       STATE_CREATED, STATE_RESTARTING)
        if got.agent_synced and got.observed_revision >= revision and settled:
            return ctr
        if time.monotonic() > deadline:
            why = "" if got.agent_connected else f" (no agent of host {host!r} is connected)"
            raise CommandError(f"container {name!r} is recorded but host {host!r} did not "
                               f"realise it within {timeout:.0f}s{why}; state: "
                               f"{ctr.status.state or 'pending'}")
        time.sleep(next(delays))


def _wait_host(client: Client, host: str, revision: int, deadline: float) -> pb.Host:
    """The host once its agent has realised ``revision``, has none connected or ``deadline``
    came (the controller answers when it happens: WaitHost); a controller without WaitHost is
    asked once (GetHost) and the caller polls."""
    wait = max(0.0, min(deadline - time.monotonic(), WAIT_HOST_MAX))
    try:
        return client.api.WaitHost(pb.WaitHostRequest(
            name=host, revision=revision, timeout_ms=max(1, int(wait * 1000))),
            timeout=wait + RPC_TIMEOUT)
    except wire.RpcError as e:
        if e.code() != wire.StatusCode.UNIMPLEMENTED:
            details = e.details() or e.code().name
            raise CommandError(f"could not inspect host {host!r}: {details}") from e
    return _rpc(f"inspect host {host!r}", lambda: client.api.GetHost(
        pb.GetRequest(name=host), timeout=RPC_TIMEOUT))


def container_from_args(args: argparse.Namespace) -> pb.Container:
    """The Container message `run` sends (pure). ``--`` before the command is optional."""
    command = list(args.cmd or [])
    if command[:1] == ["--"]:
        command = command[1:]
    return pb.Container(
        name=args.name, host=args.host, network=args.network or "", command=command,
        ports=list(args.publish or []), restart=args.restart, fixed_ip=args.ip or "",
        fixed_ip6=getattr(args, "ip6", None) or "",
        share=list(args.share or []), image=args.image or "",
        resources=pb.Resources(
            memory_bytes=parse_size(args.memory, "--memory") if args.memory else 0,
            cpus=args.cpus or 0.0, cpu_shares=args.cpu_shares or 0,
            pids_limit=args.pids_limit or 0,
            ingress_bps=parse_rate(args.ingress, "--ingress") if args.ingress else 0,
            egress_bps=parse_rate(args.egress, "--egress") if args.egress else 0,
            burst_bytes=parse_size(args.burst, "--burst") if args.burst else 0),
        volumes=list(args.volume or []), cap_add=list(args.cap_add or []),
        user_ns=convert.USERNS_NUMBER[args.userns], env=list(args.env or []),
        workdir=args.workdir or "",
        aliases=list(getattr(args, "alias", None) or []),
        dns=list(getattr(args, "dns", None) or []),
        labels=_labels(getattr(args, "label", None) or []))


def _labels(items: list[str]) -> dict[str, str]:
    """``--label k=v`` (repeatable) as a map; the controller checks each."""
    labels = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise CommandError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def cmd_run(args: argparse.Namespace) -> int:
    client = connect()
    spec = container_from_args(args)
    got = _rpc(f"create container {args.name!r}", lambda: client.api.CreateContainer(
        pb.CreateContainerRequest(container=spec), timeout=RPC_TIMEOUT))
    now = wait_realised(client, got.host, got.name, got.revision, args.timeout)
    if now.status.state == STATE_ERROR:
        raise CommandError(f"container {args.name!r} did not start: {now.status.message} "
                           f"(it stays recorded: `sdnctl rm {args.name}`)")
    if now.status.state == STATE_EXITED:
        print(f"{args.name} exited at once (see `sdnctl logs {args.name}`)", file=sys.stderr)
    print(now.name)
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    """Change a container's labels and bandwidth limits in place (it keeps running)."""
    client = connect()
    have = _get_container(client, args.name)
    spec = pb.Container()
    spec.CopyFrom(have)
    spec.ClearField("status")
    for flag, field, parse in (("ingress", "ingress_bps", parse_rate),
                               ("egress", "egress_bps", parse_rate),
                               ("burst", "burst_bytes", parse_size)):
        value = getattr(args, flag)
        if value is not None:
            setattr(spec.resources, field, parse(value, f"--{flag}") if value else 0)
    if args.label is not None:
        spec.labels.clear()
        spec.labels.update(_labels(args.label))
    got = _rpc(f"update container {args.name!r}", lambda: client.api.UpdateContainer(
        pb.UpdateContainerRequest(container=spec), timeout=RPC_TIMEOUT))
    wait_realised(client, got.host, got.name, got.revision, args.timeout)
    print(got.name)
    return 0


def _set_stopped(args: argparse.Namespace, stopped: bool) -> int:
    """stop/start: the desired state says whether the container runs; wait for its host."""
    client = connect()
    verb = "stop" if stopped else "start"
    for name in args.names:
        have = _get_container(client, name)
        if have.stopped == stopped and have.status.state in (
                (STATE_EXITED, STATE_CREATED) if stopped else (STATE_RUNNING,)):
            print(name)
            continue
        spec = pb.Container()
        spec.CopyFrom(have)
        spec.stopped = stopped
        if not stopped:
            spec.generation += 1  # runs again even if it exited on its own
        spec.ClearField("status")
        request = pb.UpdateContainerRequest(container=spec)
        got = _rpc(f"{verb} container {name!r}", lambda: client.api.UpdateContainer(
            request, timeout=RPC_TIMEOUT))  # noqa: B023
        now = wait_realised(client, got.host, got.name, got.revision, args.timeout)
        if now.status.state == STATE_ERROR:
            raise CommandError(f"could not {verb} {name!r}: {now.status.message}")
        print(name)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    return _set_stopped(args, True)


def cmd_start(args: argparse.Namespace) -> int:
    return _set_stopped(args, False)


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete containers (a running one is stopped: there is no `stop` verb yet) and wait until
    their hosts have removed them. ``-f``: a container that does not exist is not an error;
    without it, a missing one is named and nothing is deleted. All of them go in one request
    (DeleteContainers: one transaction, so their hosts and peers hear of them at once)."""
    client = connect()
    host_of: dict[str, str] = {}
    for name in dict.fromkeys(args.names):
        try:
            host_of[name] = client.api.GetContainer(pb.GetRequest(name=name),
                                                    timeout=RPC_TIMEOUT).host
        except wire.RpcError as e:
            if args.force and e.code() == wire.StatusCode.NOT_FOUND:
                continue
            raise CommandError(f"could not remove container {name!r}: "
                               f"{e.details()}") from e
    deleted: dict[str, int] = {}
    names = list(host_of)
    for start in range(0, len(names), DELETE_BATCH):
        request = pb.DeleteContainersRequest(names=names[start:start + DELETE_BATCH])
        reply = _rpc("remove containers",
                     lambda: client.api.DeleteContainers(request,  # noqa: B023
                                                         timeout=RPC_TIMEOUT))
        for name in reply.deleted:
            deleted[host_of[name]] = max(deleted.get(host_of[name], 0), reply.revision)
            print(name)
    _wait_hosts(client, deleted, args.timeout)
    return 0


def _wait_hosts(client: Client, revisions: dict[str, int], timeout: float) -> None:
    """Until each host's agent has realised its revision, or has none connected."""
    deadline = time.monotonic() + timeout
    delays = poll_delays()
    for host, revision in sorted(revisions.items()):
        while time.monotonic() < deadline:
            got = _wait_host(client, host, revision, deadline)
            if not got.agent_connected or (got.agent_synced and
                                           got.observed_revision >= revision):
                break
            time.sleep(next(delays))
        else:
            raise CommandError(f"host {host!r} did not remove its containers within "
                               f"{timeout:.0f}s")


def _local_container(client: Client, name: str) -> pb.Container:
    """A running container whose PID and namespace are on THIS machine (a lab host's)."""
    ctr = _get_container(client, name)
    host = _rpc(f"inspect host {ctr.host!r}", lambda: client.api.GetHost(
        pb.GetRequest(name=ctr.host), timeout=RPC_TIMEOUT))
    if not host.lab:
        raise CommandError(f"container {name!r} runs on host {ctr.host!r}, which is not a lab "
                           "host: exec works only for containers on this machine")
    if ctr.status.state != STATE_RUNNING or ctr.status.pid <= 0:
        raise CommandError(f"container {name!r} is not running "
                           f"({ctr.status.state or 'pending'})")
    try:
        same = os.stat(f"/proc/{ctr.status.pid}/ns/net").st_ino == os.stat(ctr.status.netns).st_ino
    except OSError:
        same = False
    if not same:
        raise CommandError(f"container {name!r}: PID {ctr.status.pid} is not in its namespace "
                           f"{ctr.status.netns!r} on this machine (restarting?)")
    return ctr


def cmd_exec(args: argparse.Namespace) -> int:
    """The container's runtime runs CMD in all its namespaces, its cgroup, with its
    capabilities, seccomp profile and no-new-privileges: what `docker exec` does."""
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CommandError("exec: no command given")
    ctr = _local_container(connect(), args.name)
    if not ctr.status.runtime or not ctr.status.runtime_root:
        raise CommandError(f"container {args.name!r}: its agent did not say which runtime "
                           "runs it")
    tty = args.tty and sys.stdin.isatty()
    stdin = None if args.interactive or tty else subprocess.DEVNULL
    from sdnctl.lab import local  # (here, not at the top: sdnctl.cli.everyday's note)

    return local.run_exec(ctr, args.name, command, tty, stdin)



def log_path(client: Client, name: str) -> str:
    from sdnctl.lab import local  # (here, not at the top: sdnctl.cli.everyday's note)

    ctr = _get_container(client, name)
    host = _rpc(f"inspect host {ctr.host!r}", lambda: client.api.GetHost(
        pb.GetRequest(name=ctr.host), timeout=RPC_TIMEOUT))
    run_dir = paths.run_dir()
    candidates = local.log_candidates(run_dir, ctr.host, host.netns, ctr.status.netns,
                                local.lab_states(run_dir))
    for directory in candidates:
        path = local.log_file(directory, name)
        if os.path.exists(path):
            return path
    where = "" if host.lab else f" (host {ctr.host!r} is not a lab host: its files are there)"
    raise CommandError(f"no log of container {name!r} on this machine{where}; looked in "
                       + ", ".join(candidates))


def cmd_logs(args: argparse.Namespace) -> int:
    path = log_path(connect(), args.name)
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        out.write(f.read())
        out.flush()
        if not args.follow:
            return 0
        try:
            while True:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                elif os.path.exists(path) and os.stat(path).st_size < f.tell():
                    f.seek(0)  # truncated: start over
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return 0


# -- hosts -----------------------------------------------------------------------------------


def host_row(h: dict[str, Any], containers: int) -> list[str]:
    """A row of `host ls` (pure)."""
    agent = f"connected (pid {h['agent_pid']})" if h["agent_connected"] else "disconnected"
    subnets = ",".join(f"{s['network']}={s['subnet'] or s.get('subnet6', '')}"
                       for s in h["subnets"]) or "-"
    return [h["name"], h["underlay_ip"] or "-", "lab" if h["lab"] else "real", agent,
            str(containers), subnets]


def cmd_host_ls(args: argparse.Namespace) -> int:
    client = connect()
    hosts = [host_json(h) for h in _rpc("list hosts", lambda: client.api.ListHosts(
        pb.ListRequest(), timeout=RPC_TIMEOUT)).hosts]
    if args.json:
        _print_json(hosts)
        return 0
    listed = _rpc("list containers", lambda: client.api.ListContainers(
        pb.ListRequest(), timeout=RPC_TIMEOUT)).containers
    counts: dict[str, int] = {}
    for c in listed:
        counts[c.host] = counts.get(c.host, 0) + 1
    print_table([host_row(h, counts.get(h["name"], 0)) for h in hosts],
           ["NAME", "UNDERLAY", "KIND", "AGENT", "CONTAINERS", "SUBNETS"])
    return 0


# -- the parser ------------------------------------------------------------------------------


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=WAIT_TIMEOUT,
                   help="seconds to wait for the host to act (default %(default)s)")


def _register_network(sub: Any) -> None:
    net = sub.add_parser("network", help="create, list, inspect, remove, connect networks")
    verbs = net.add_subparsers(dest="network_command", required=True)

    p = verbs.add_parser("create", help="create a network")
    p.add_argument("name")
    p.add_argument("--subnet", default="", help="the network's IPv4 CIDR, e.g. 10.90.0.0/16 "
                   "(leave it out, with --subnet6, for an IPv6-only network)")
    p.add_argument("--subnet6", help="the network's IPv6 CIDR, e.g. fd00:90::/48 (with --subnet: "
                   "dual-stack; alone: IPv6-only)")
    p.add_argument("--masquerade6", action="store_true",
                   help="NAT66: masquerade IPv6 egress (default: routed, no NAT)")
    p.add_argument("--host-prefix6", type=int,
                   help="prefix length of each host's IPv6 lease (64)")
    p.add_argument("--driver", choices=DRIVERS, default=DRIVER_BRIDGE)
    p.add_argument("--gateway", help="the bridge's address (the network becomes one lease)")
    p.add_argument("--ip-range", help="allocate container addresses from this sub-range")
    p.add_argument("--internal", action="store_true", help="no egress, no NAT")
    p.add_argument("--no-masquerade", action="store_true", help="no egress NAT")
    p.add_argument("--mtu", type=int, help="default 1500 (overlay: underlay MTU - 50)")
    p.add_argument("--host-prefix", type=int, help="prefix length of each host's lease (24)")
    p.add_argument("--allow", action="append", metavar="NET",
                   help="a network this one may talk to, routed (repeatable)")
    p.add_argument("--vni", type=int, help="overlay: the VXLAN VNI (default: allocated)")
    p.add_argument("--vxlan-port", type=int, help="overlay: the UDP port (default 4789)")
    p.add_argument("--dns-domain", help="containers also resolve as NAME.DNS_DOMAIN")
    p.add_argument("--dns", action="append", metavar="IP",
                   help="an upstream resolver for other names (repeatable; default: the "
                   "host's resolv.conf)")
    p.set_defaults(func=cmd_network_create)

    p = verbs.add_parser("ls", help="list networks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_network_ls)

    p = verbs.add_parser("inspect", help="a network, its leases and its containers")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_network_inspect)

    p = verbs.add_parser("rm", help="remove networks (they must have no containers)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_network_rm)

    one_interface = ("A container has one interface here: connect MOVES it to NETWORK (its "
                     "agent restarts it with a new address); it does not add a second one.")
    p = verbs.add_parser("connect", help="move a container to a network",
                         description=one_interface)
    p.add_argument("network")
    p.add_argument("container")
    p.add_argument("--ip", help="a fixed address on the network")
    _add_timeout(p)
    p.set_defaults(func=cmd_network_connect)

    p = verbs.add_parser("disconnect", help="move a container off a network, to `none`",
                         description="A container has one interface here: disconnect moves "
                         "it to network mode `none` (only lo; its agent restarts it).")
    p.add_argument("network")
    p.add_argument("container")
    _add_timeout(p)
    p.set_defaults(func=cmd_network_disconnect)


def _register_containers(sub: Any) -> None:
    p = sub.add_parser("run", help="create a container and wait until it runs")
    p.add_argument("--name", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--network", help="none | host | container:NAME | a bridge or overlay "
                   "network (default: the controller's default bridge)")
    p.add_argument("-p", "--publish", action="append", metavar="[IP:]HOST:CTR[/PROTO]",
                   help="publish a port (repeatable); an IPv6 host address in brackets: "
                   "[::1]:8080:80 (this host only), [::]:8080:80 (every IPv6 address)")
    p.add_argument("--restart", choices=RESTART_POLICIES, default="no")
    p.add_argument("--ip", help="a fixed address (bridge mode)")
    p.add_argument("--ip6", help="a fixed IPv6 address (bridge mode, a network with a subnet6)")
    p.add_argument("--share", action="append", choices=("uts", "ipc"),
                   help="joined mode: also share the donor's namespace (repeatable)")
    p.add_argument("--image", help="NAME[:TAG] or image ID (default: the host's root, "
                   "read-only)")
    p.add_argument("-m", "--memory", help="memory limit, e.g. 64m")
    p.add_argument("--cpus", type=float, help="CPU quota, e.g. 0.5")
    p.add_argument("--cpu-shares", type=int, help="relative CPU weight")
    p.add_argument("--pids-limit", type=int, help="at most this many tasks")
    p.add_argument("-v", "--volume", action="append", metavar="NAME|/HOST:/PATH[:ro]",
                   help="a named volume or a bind mount (repeatable)")
    p.add_argument("-l", "--label", action="append", metavar="KEY=VALUE",
                   help="a label that network policies select it by (repeatable)")
    p.add_argument("--ingress", metavar="RATE",
                   help="bandwidth into the container, e.g. 10mbit")
    p.add_argument("--egress", metavar="RATE",
                   help="bandwidth out of the container, e.g. 10mbit")
    p.add_argument("--burst", metavar="SIZE", help="bucket size of the limits, e.g. 32k")
    p.add_argument("--alias", action="append", metavar="NAME",
                   help="another DNS name for the container on its network (repeatable)")
    p.add_argument("--dns", action="append", metavar="IP",
                   help="an upstream resolver for its queries (repeatable; default: its "
                   "network's)")
    p.add_argument("--cap-add", action="append", metavar="CAP",
                   help="a capability on top of the default set, e.g. NET_RAW (repeatable)")
    p.add_argument("--userns", choices=USERNS_MODES, default=USERNS_AUTO,
                   help="a user namespace, where root inside is an unprivileged user outside: "
                   "auto (default: where the host has them, for an image container without "
                   "added capabilities, not in host mode), private (always), host (never)")
    p.add_argument("-e", "--env", action="append", metavar="KEY=VALUE")
    p.add_argument("-w", "--workdir")
    _add_timeout(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD",
                   help="the command (default: the image's; sleep infinity without one)")
    p.set_defaults(func=cmd_run)

    for verb, func, what in (("stop", cmd_stop, "stop containers (they keep their network "
                              "and their files)"), ("start", cmd_start, "start stopped or "
                              "exited containers again")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("names", nargs="+", metavar="NAME")
        _add_timeout(p)
        p.set_defaults(func=func)

    p = sub.add_parser("update", help="change a container's labels and bandwidth limits in "
                       "place")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-l", "--label", action="append", metavar="KEY=VALUE",
                   help="its labels, replacing all (repeatable)")
    p.add_argument("--ingress", metavar="RATE", help='bandwidth into it, e.g. 10mbit ("": none)')
    p.add_argument("--egress", metavar="RATE", help='bandwidth out of it ("": none)')
    p.add_argument("--burst", metavar="SIZE", help='bucket size, e.g. 32k ("": derived)')
    _add_timeout(p)
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("rm", help="remove containers (running ones are stopped)")
    p.add_argument("-f", "--force", action="store_true", help="no error for a missing one")
    p.add_argument("names", nargs="+", metavar="NAME")
    _add_timeout(p)
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("exec", help="run a command in a container (lab hosts: this machine)",
                       description="Runs CMD in all the container's namespaces, its cgroup and "
                       "with its capabilities, through its OCI runtime, on this machine: it "
                       "works for containers on lab hosts. The exit status is CMD's.")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="a terminal (with -i)")
    p.add_argument("name")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("logs", help="a container's output (lab hosts: this machine)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until ^C")
    p.add_argument("name")
    p.set_defaults(func=cmd_logs)


def register(sub: Any) -> None:
    """Add this module's verbs to the sdnctl argument parser's sub-parsers."""
    _register_network(sub)
    _register_containers(sub)
    host = sub.add_parser("host", help="list hosts")
    verbs = host.add_subparsers(dest="host_command", required=True)
    p = verbs.add_parser("ls", help="list hosts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_host_ls)
