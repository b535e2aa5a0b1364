"""`sdnctl up` and `sdnctl down`: realise a topology on lab hosts, and remove it again.

``up`` is idempotent: every step first looks at what exists (controller answering, lab namespace
built, host/network/container recorded, agent alive) and only does what is missing, so running it
twice changes nothing except to restart a lab agent that died. An object that exists with a
different spec is an error (``down`` first), never silently replaced.

Before it applies anything, ``up`` prints a plan (:func:`plan`, pure: the topology against what
the controller holds): ``+`` create, ``~`` update in place, ``=`` unchanged, ``!`` cannot change
in place. A plan with ``!`` stops ``up`` before anything is built; ``up --dry-run`` prints the
plan only.

Then both have the whole file checked against the controller's own rules (:func:`check`: the
API's ``ValidateTopology``, a dry run on a throwaway copy of its store): IPAM capacity, host
ports, fixed addresses, subnets against hosts' underlay addresses... A refusal names the file and
line of the object, before any lab host is built. With no controller answering, the same code
(:mod:`sdnctl.controller.dryrun`) runs here first, on what the controller ``up`` would start
holds (its SQLite file, if any, and the default bridge network), so that a file it would refuse
starts no controller either.

``down`` deletes the containers through the API and waits until each agent reports it has caught
up (so agents remove what they made), then deletes networks and hosts, stops the agents, sweeps
anything a dead agent could not remove, and tears the lab down. It stops the controller too when
``up`` started it and nothing else is left in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from agent import layout
from sdnctl.api import convert, imagefmt, imagepull, paths, registry, wire
from sdnctl.api.client import (
    CREATE_BATCH,
    DELETE_BATCH,
    POLL_FIRST,
    POLL_GROWTH,
    POLL_MAX,
    TLS_ENV,
    Client,
    poll_delays,
    split_addresses,
    start_controller,
    started_controller_pid,
    stop_controller,
)
from sdnctl.api.model import (
    DEFAULT_BRIDGE_SUBNET,
    STATE_ERROR,
    STATE_EXITED,
    STATE_RUNNING,
    Container,
    Host,
    Invalid,
    Network,
    Policy,
)
from sdnctl.controller import dryrun
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.lab import lab
from sdnctl.lab import registry as labregistry
from sdnctl.lab.dockerd import LabDocker, start_lab_dockerd, stop_lab_dockerd
from sdnctl.topology.topology import Topology, TopologyError
from sdnctl.v1 import sdnctl_pb2 as pb


class DeployError(RuntimeError):
    pass


T = TypeVar("T")

#: Seconds between two looks at an agent `up` waits for to connect (a host joining waits for
#: this before its lease exists: at 50 ms, 25 ms of its join on average).
AGENT_POLL = 0.02


class Progress:
    """One line per step on stderr; a waiting step rewrites its line on a terminal."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = ""

    def step(self, text: str) -> None:
        self._end_line()
        self.out.write(f"• {text}\n")
        self.out.flush()

    def waiting(self, text: str) -> None:
        if text == self._last:
            return
        self._last = text
        if self.tty:
            self.out.write(f"\r  {text}\033[K")
        else:
            self.out.write(f"  {text}\n")
        self.out.flush()

    def _end_line(self) -> None:
        if self.tty and self._last:
            self.out.write("\n")
        self._last = ""

    def done(self, text: str) -> None:
        self._end_line()
        self.out.write(f"✔ {text}\n")
        self.out.flush()


def lab_prefix(topology: Topology) -> str:
    return os.environ.get("SDNCTL_LAB_PREFIX") or lab.default_prefix(topology.name)


def lab_state_path(topology: Topology) -> str:
    return os.path.join(paths.run_dir(), "lab", f"{topology.name}.json")


def agent_run_dir(prefix: str, host: str) -> str:
    return os.path.join(paths.run_dir(), "lab", prefix + host)


def _load_lab_state(topology: Topology) -> dict[str, Any]:
    try:
        with open(lab_state_path(topology)) as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError):
        return {"prefix": lab_prefix(topology), "agents": {}}


def _save_lab_state(topology: Topology, state: dict[str, Any]) -> None:
    paths.write_atomic(lab_state_path(topology), json.dumps(state, indent=2) + "\n", 0o600)


def _code(e: wire.RpcError) -> wire.StatusCode:
    return e.code()


def _details(e: wire.RpcError) -> str:
    return e.details()


def _existing(get: Callable[[], T], refusal: wire.RpcError, what: str) -> T:
    """The object whose create was refused as ALREADY_EXISTS. When there is none, the refusal
    was about a value the new object takes (a host port, a fixed address): it is shown as the
    controller gave it."""
    try:
        return get()
    except wire.RpcError as e:
        if _code(e) == wire.StatusCode.NOT_FOUND:
            raise DeployError(f"could not create {what}: {_details(refusal)}") from refusal
        raise


def _create_or_compare(create: Callable[[], Any], get: Callable[[], Any],
                       same: Callable[[Any], bool], what: str) -> bool:
    """Create; when it exists already, demand it matches. Returns True when it created."""
    try:
        create()
        return True
    except wire.RpcError as e:
        if _code(e) != wire.StatusCode.ALREADY_EXISTS:
            raise DeployError(f"could not create {what}: {_details(e)}") from e
        refusal = e
    if not same(_existing(get, refusal, what)):
        raise DeployError(f"{what} exists with a different spec; run `sdnctl down` first "
                          "(changing a running object is not supported yet)")
    return False


# -- the plan: what `up` will do, from (topology, what the controller has) -------------------

ADD, CHANGE, SAME, REFUSE = "+", "~", "=", "!"


@dataclass(frozen=True)
class Change:
    """One line of a plan: ``+`` create, ``~`` update in place, ``=`` unchanged, ``!`` cannot be
    changed in place (``down`` first)."""

    sign: str
    kind: str  # host | network | container
    name: str
    detail: str = ""

    def __str__(self) -> str:
        sep = ": " if self.sign in (CHANGE, REFUSE) else " "
        return f"{self.sign} {self.kind} {self.name}{sep + self.detail if self.detail else ''}"


@dataclass(frozen=True)
class Observed:
    """What the controller holds (empty when none answers: then everything is new)."""

    hosts: dict[str, Host] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)


def observe(client: Client, hosts_too: bool = True) -> Observed:
    """Read hosts (unless not ``hosts_too``), networks and containers from the controller (no
    writes)."""
    hosts = client.api.ListHosts(pb.ListRequest(), timeout=10).hosts if hosts_too else []
    networks = client.api.ListNetworks(pb.ListRequest(), timeout=10).networks
    containers = client.api.ListContainers(pb.ListRequest(), timeout=10).containers
    return Observed({h.name: convert.host_from_pb(h) for h in hosts},
                    {n.name: convert.network_from_pb(n) for n in networks},
                    {c.name: convert.container_from_pb(c) for c in containers})


def plan(topology: Topology, observed: Observed) -> list[Change]:
    """Pure: what `up` of ``topology`` creates, updates, leaves and refuses, given what exists.
    It mirrors :func:`apply_objects` (networks, then containers) and adds the hosts."""
    changes = [_host_change(h, observed.hosts.get(h.name)) for h in topology.hosts]
    changes += [_network_change(n, observed.networks.get(n.name)) for n in topology.networks]
    changes += [_container_change(c, observed.containers.get(c.name))
                for c in topology.containers]
    return changes


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return repr(value) if value == "" else str(value)


def _changed(have: Any, want: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(want)
            if getattr(have, f.name) != getattr(want, f.name)]


def _differences(have: Any, want: Any, fields: list[str]) -> str:
    """``allow [] -> [back]; masquerade True -> False`` (a container's fixed_ip is its ``ip``)."""
    return "; ".join(f"{'ip' if f == 'fixed_ip' else f} {_show(getattr(have, f))} -> "
                     f"{_show(getattr(want, f))}" for f in fields)


def _host_change(host: Host, have: Host | None) -> Change:
    if have is None:
        return Change(ADD, "host", host.name, "(lab)" if host.lab else host.underlay_ip)
    # a lab host's agent registers its own underlay address: whatever is recorded is current
    if host.lab or not host.underlay_ip or have.underlay_ip == host.underlay_ip:
        return Change(SAME, "host", host.name)
    return Change(REFUSE, "host", host.name, f"underlay_ip {have.underlay_ip} -> "
                  f"{host.underlay_ip} cannot change in place; run `sdnctl down` first")


def _network_change(net: Network, have: Network | None) -> Change:
    if have is None:
        return Change(ADD, "network", net.name, f"{net.driver} {net.subnet}")
    have = dataclasses.replace(have, builtin=False)
    # What the topology leaves to the controller (0: allocate or default) matches any value.
    net = dataclasses.replace(net, **{f: getattr(have, f) for f in CONTROLLER_CHOSEN
                                      if not getattr(net, f)})
    if have == net:
        return Change(SAME, "network", net.name)
    changed = _changed(have, net)
    immutable = [f for f in changed if f not in Network.MUTABLE]
    if immutable:
        return Change(REFUSE, "network", net.name, f"{_differences(have, net, immutable)} "
                      "cannot change in place; run `sdnctl down` first")
    return Change(CHANGE, "network", net.name, _differences(have, net, changed))


def _container_change(ctr: Container, have: Container | None) -> Change:
    if have is None:
        return Change(ADD, "container", ctr.name, f"on {ctr.host}, network {ctr.network}")
    if have == ctr:
        return Change(SAME, "container", ctr.name)
    if have.host != ctr.host:
        return Change(REFUSE, "container", ctr.name, f"host {have.host} -> {ctr.host} cannot "
                      "change in place; run `sdnctl down` first")
    return Change(CHANGE, "container", ctr.name, _differences(have, ctr, _changed(have, ctr)))


def format_plan(changes: list[Change]) -> list[str]:
    """The lines `up` prints: every change, then one line counting what stays as it is."""
    lines = [str(c) for c in changes if c.sign != SAME]
    same = sum(c.sign == SAME for c in changes)
    if same or not lines:
        lines.append(f"{SAME} {same} unchanged")
    return lines


def print_plan(topology: Topology, changes: list[Change], source: str,
               out: TextIO = sys.stdout) -> None:
    out.write(f"plan for {topology.name} ({source}):\n")
    for line in format_plan(changes):
        out.write(f"  {line}\n")
    out.flush()


def dry_run(topology: Topology, out: TextIO = sys.stdout) -> list[Change]:
    """The plan of `up`, printed, then the whole file checked against the controller's rules
    (:func:`check`), with nothing started or changed (a controller that answers is only read)."""
    client = Client()
    try:
        healthy = client.healthy()
        if healthy:
            observed, source = observe(client), f"controller at {client.address}"
        else:
            observed, source = Observed(), f"no controller answers at {client.address}"
        changes = plan(topology, observed)
        print_plan(topology, changes, source, out)
        check(topology, client if healthy else None)
    finally:
        client.close()
    return changes


# -- the check: the controller's rules on the whole file, before anything is built -------------

def validation_request(topology: Topology) -> pb.ValidateTopologyRequest:
    """The topology's objects as `up` will create them: a lab host with the underlay address
    the lab gives it, the images of its archives as loaded."""
    hosts = []
    lab_index = {h.name: i for i, h in enumerate(topology.lab_hosts)}
    for host in topology.hosts:
        address = lab.host_ip6 if topology.lab.underlay6 else lab.host_ip
        underlay = address(lab_index[host.name], topology.lab.routed) if host.lab else \
            host.underlay_ip
        hosts.append(convert.host_to_pb(Host(host.name, underlay, host.lab)))
    images = []
    for archive in topology.images:
        try:
            images += imagefmt.archive_references(archive)
        except imagefmt.ImageFormatError as e:
            raise DeployError(f"could not read image archive {archive}: {e}") from e
    images += registry_images(topology)  # pulled before the containers are created
    return pb.ValidateTopologyRequest(
        hosts=hosts, networks=[convert.network_to_pb(n) for n in topology.networks],
        containers=[convert.container_to_pb(c) for c in topology.containers], images=images,
        policies=[convert.policy_to_pb(p) for p in topology.policies])


def check(topology: Topology, client: Client | None) -> None:
    """The controller's rules on the whole topology, nothing written: asked of ``client``'s
    controller (it knows what else it holds), else run here on what a controller that `up`
    starts would hold. TopologyError naming the file and line of the object refused."""
    request = validation_request(topology)
    if client is not None:
        try:
            client.api.ValidateTopology(request, timeout=60)
        except wire.RpcError as e:
            if _code(e) == wire.StatusCode.INVALID_ARGUMENT:
                raise refusal(topology, _details(e)) from None
            if _code(e) == wire.StatusCode.UNIMPLEMENTED:  # an older controller: say so, go on
                sys.stderr.write(f"sdnctl: the controller at {client.address} cannot check a "
                                 "topology before it is built (an older version)\n")
                return
            raise DeployError(f"could not check the topology: {_details(e)}") from e
        return
    store = new_controller_store()
    try:
        dryrun.validate_request(store, request, default_bridge=DEFAULT_BRIDGE_SUBNET)
    except Invalid as e:
        raise refusal(topology, str(e)) from None
    finally:
        store.close()


def new_controller_store() -> Store:
    """What the controller `up` starts will serve (only read here): its SQLite file if one was
    left by an earlier controller, else nothing yet."""
    db = paths.controller_db()
    return SqliteStore(db) if os.path.isfile(db) else MemoryStore()


#: ValidateTopology names the object by its place in the request; the file calls some fields
#: otherwise (a container's ``fixed_ip`` is its ``ip``, its limits are under ``resources``).
TOPOLOGY_FIELDS = {".fixed_ip": ".ip", ".memory": ".resources.memory",
                   ".cpus": ".resources.cpus", ".cpu_shares": ".resources.cpu_shares",
                   ".pids_limit": ".resources.pids", ".excepts": ".except"}
_PLACE = re.compile(
    r"^((?:hosts|networks|containers|policies)\[\d+\](?:\.[A-Za-z_]+|\[\d+\])*): (.*)$", re.DOTALL)


def refusal(topology: Topology, details: str) -> TopologyError | DeployError:
    """The controller's refusal (``containers[1].ports[0]: ...``) at its line of the file."""
    match = _PLACE.match(details)
    if match is None:
        return DeployError(f"the controller refuses the topology: {details}")
    path = match[1]
    for api_name, file_name in TOPOLOGY_FIELDS.items():
        path = re.sub(re.escape(api_name) + r"\b", file_name, path)
    return topology.error(path, match[2])


def refused(changes: list[Change]) -> None:
    bad = [c for c in changes if c.sign == REFUSE]
    if bad:
        raise DeployError("the topology changes what cannot change in place: "
                          + "; ".join(f"{c.kind} {c.name}: {c.detail}" for c in bad))


# -- up --------------------------------------------------------------------------------------

def up(topology: Topology, timeout: float = 120.0, progress: Progress | None = None,
       out: TextIO = sys.stdout) -> None:
    progress = progress or Progress()
    started = time.monotonic()
    check_unless_served(topology)  # before starting a controller for a file it would refuse
    client = ensure_controller(progress)
    try:
        changes = plan(topology, observe(client))
        print_plan(topology, changes, f"controller at {client.address}", out)
        refused(changes)  # before anything is built
        check(topology, client)  # likewise
        lab_hosts = build_lab(topology, progress)
        ensure_lab_registry(topology, progress)
        register_hosts(client, topology, lab_hosts, progress)
        ensure_agents(client, topology, lab_hosts, progress)
        revision = apply_objects(client, topology, progress)
        wait_running(client, topology, revision, timeout, progress)
    finally:
        client.close()
    progress.done(f"{topology.name}: {len(topology.containers)} container(s) running "
                  f"({time.monotonic() - started:.1f}s)")


def check_unless_served(topology: Topology) -> None:
    """:func:`check` here when no controller answers (`up` is about to start one)."""
    client = Client()
    try:
        if client.healthy():
            return
    finally:
        client.close()
    check(topology, None)


def ensure_controller(progress: Progress) -> Client:
    client = Client()
    if client.healthy():
        progress.step(f"controller answering at {client.address}")
        return client
    client.close()  # its channel failed to connect: it would wait out a reconnection backoff
    pid = start_controller(client.address)
    progress.step(f"controller started (pid {pid}) at {client.address}")
    return Client(client.address)


def build_lab(topology: Topology, progress: Progress) -> dict[str, lab.LabHost]:
    if not topology.lab_hosts:
        return {}
    the_lab = lab.Lab(lab_prefix(topology), mtu=topology.lab.underlay_mtu,
                      routed=topology.lab.routed)
    the_lab.ensure_underlay()
    the_lab.ensure_external()
    built = {}
    # The lab's hosts read once, then kept current as each is ensured (a host renumbered
    # earlier in the loop frees its old address for a later one).
    known = {h.name: h for h in the_lab.hosts()}
    for index, host in enumerate(topology.lab_hosts):
        known[host.name] = the_lab.ensure_host(host.name, index, list(known.values()),
                                               underlay_ready=True)
        built[host.name] = known[host.name]
        if topology.lab.underlay6:  # its agent's VXLAN endpoint is its IPv6 address (issue 20)
            built[host.name] = dataclasses.replace(
                known[host.name], underlay_ip=lab.host_ip6(index, topology.lab.routed))
    underlay = "192.0.2.0/24 + 198.51.100.0/24, routed" if topology.lab.routed else \
        "192.0.2.0/24"
    if topology.lab.underlay6:
        underlay += ", VXLAN over IPv6 (2001:db8::/32)"
    progress.step(f"lab: {len(built)} host(s) on underlay {underlay} (MTU "
                  f"{topology.lab.underlay_mtu}), external {lab.EXTERNAL_IP} "
                  f"(namespaces {the_lab.prefix}*)")
    return built


def ensure_lab_registry(topology: Topology, progress: Progress) -> None:
    """``lab: {registry: true}``: the lab's registry runs (in its outside world)."""
    if not (topology.lab.registry and topology.lab_hosts):
        return
    found = labregistry.ensure(lab.Lab(lab_prefix(topology), mtu=topology.lab.underlay_mtu,
                                       routed=topology.lab.routed))
    progress.step(f"lab registry at {found.url} (pid {found.pid}, TLS, user {found.username})")


def registry_images(topology: Topology) -> list[str]:
    """The containers' images that name a registry (``host:port/repo:tag``), in file order."""
    found: list[str] = []
    for ctr in topology.containers:
        if ctr.image and registry.names_registry(ctr.image) and ctr.image not in found:
            found.append(ctr.image)
    return found


def pull_image(client: Client, ref: str, progress: Progress) -> None:
    try:
        image = imagepull.pull(client.api, ref)
    except (ValueError, registry.RegistryError) as e:
        raise DeployError(f"could not pull image {ref}: {e}") from e
    except wire.RpcError as e:
        raise DeployError(f"could not record image {ref}: {_details(e)}") from e
    progress.step(f"image {ref} recorded ({image.id[:19]}, from its registry)")


def register_hosts(client: Client, topology: Topology, lab_hosts: dict[str, lab.LabHost],
                   progress: Progress) -> None:
    def same(got: pb.Host, spec: Host) -> bool:
        # a lab host's agent registers its address: whatever the record says, it is current
        return got.lab or got.underlay_ip == spec.underlay_ip

    # Hosts there already as wanted are left alone on one listing (each was a create refused,
    # then a get: 200 calls to add one host to a 100-host lab).
    listed = {got.name: got for got in client.api.ListHosts(pb.ListRequest(), timeout=10).hosts}
    for host in topology.hosts:
        underlay = lab_hosts[host.name].underlay_ip if host.name in lab_hosts else \
            host.underlay_ip
        spec = Host(name=host.name, underlay_ip=underlay, lab=host.lab)
        if host.name in listed and same(listed[host.name], spec):
            continue
        _create_or_compare(
            lambda spec=spec: client.api.CreateHost(  # type: ignore[misc]
                pb.CreateHostRequest(host=convert.host_to_pb(spec)), timeout=10),
            lambda spec=spec: client.api.GetHost(  # type: ignore[misc]
                pb.GetRequest(name=spec.name), timeout=10),
            lambda got, spec=spec: same(got, spec),  # type: ignore[misc]
            f"host {host.name!r}")
    progress.step(f"hosts: {', '.join(h.name for h in topology.hosts)}")


def lab_docker(prefix: str, host: str) -> LabDocker:
    """A lab host's dockerd (``docker: true``): on the disk, not in /run (its image store)."""
    return LabDocker(os.path.join(paths.state_dir(), "lab", prefix + host, "docker"))


def agent_connection(address: str) -> dict[str, Any]:
    """What a lab agent talks to: the controller addresses and the TLS files (of the
    environment it inherits). An agent started with others is restarted."""
    return {"controller": address, "tls": [os.environ.get(name, "") for name in TLS_ENV]}


def rotated(address: str, index: int) -> str:
    """The controller addresses with the ``index``-th first (modulo their number): an agent
    watches the first replica that answers, so lab host ``index`` gets them rotated by its
    position and the agents spread over the replicas instead of all loading the first."""
    addresses = split_addresses(address)
    shift = index % len(addresses)
    return ",".join(addresses[shift:] + addresses[:shift])


def ensure_agents(client: Client, topology: Topology, lab_hosts: dict[str, lab.LabHost],
                  progress: Progress) -> None:
    state = _load_lab_state(topology)
    state["prefix"] = lab_prefix(topology)
    agents: dict[str, dict[str, Any]] = state.setdefault("agents", {})
    # One fork server imports the agent's modules once for all the agents started here.
    label = os.path.join(paths.run_dir(), "lab", state["prefix"])
    with lab.AgentSpawner(label, os.path.join(paths.run_dir(), "lab",
                                              f"{topology.name}.forkserver.log")) as spawner:
        _start_agents(client, topology, lab_hosts, state, spawner, progress)
    _save_lab_state(topology, state)
    ensure_dockerds(topology, state, lab_hosts, progress)
    # 30 s, and more for many hosts: on two cores, 100 agents register in tens of seconds.
    deadline = time.monotonic() + 30 + 0.5 * len(lab_hosts)

    def connected(got: pb.Host) -> bool:
        return got.agent_connected and got.agent_pid == agents[got.name]["pid"]

    # One listing for the hosts whose agents are there already (adding a host to a 100-host
    # lab asked for each of them in turn, while the new one's peers waited), then the rest.
    listed = client.api.ListHosts(pb.ListRequest(), timeout=10).hosts
    ready = {got.name for got in listed if got.name in lab_hosts and connected(got)}
    for name in (name for name in lab_hosts if name not in ready):
        while True:
            if connected(client.api.GetHost(pb.GetRequest(name=name), timeout=10)):
                break
            if time.monotonic() > deadline:
                log = os.path.join(agent_run_dir(state["prefix"], name), "agent.log")
                raise DeployError(f"the agent of host {name!r} did not connect; see {log}")
            progress.waiting(f"waiting for the agent of {name} to connect")
            time.sleep(AGENT_POLL)
    if lab_hosts:
        progress.step(f"agents: {len(lab_hosts)} connected")


def _start_agents(client: Client, topology: Topology, lab_hosts: dict[str, lab.LabHost],
                  state: dict[str, Any], spawner: lab.AgentSpawner, progress: Progress) -> None:
    """Start the agent of each lab host that has none alive (or one talking to other
    controllers), recording each in the lab state as it starts."""
    agents: dict[str, dict[str, Any]] = state["agents"]
    docker_hosts = {h.name for h in topology.lab_hosts if h.docker}
    position = {h.name: i for i, h in enumerate(topology.lab_hosts)}
    for name, host in lab_hosts.items():
        address = rotated(client.address, position[name])
        connection = agent_connection(address)
        known = agents.get(name)
        if known and lab.process_alive(known["pid"], known.get("start_time")):
            if known.get("connection") == connection:
                continue
            # It talks to other controllers (or with other TLS files), perhaps to dead ones.
            lab.stop_process(known["pid"], start_time=known.get("start_time"))
            was = (known.get("connection") or {}).get("controller", "unknown controllers")
            progress.step(f"agent for {name} stopped (pid {known['pid']}): it talked to {was}")
        run_dir = agent_run_dir(state["prefix"], name)
        os.makedirs(run_dir, mode=0o755, exist_ok=True)
        argv = ["--host", name, "--controller", address, "--underlay-ip", host.underlay_ip,
                "--underlay-dev", host.underlay_dev,
                "--netns", host.netns, "--run-dir", run_dir,
                "--store-dir", os.path.join(run_dir, "store"),
                "--parallel-starts", str(lab_parallel_starts(len(lab_hosts)))]
        if name in docker_hosts:
            docker = lab_docker(state["prefix"], name)
            argv += ["--docker-socket", docker.plugin_socket, "--docker-spec",
                     docker.plugin_spec, "--docker-host", docker.docker_host]
        pid = spawner.spawn(host.netns, argv, os.path.join(run_dir, "agent.log"))
        agents[name] = {"pid": pid, "start_time": lab.process_start_time(pid) or 0,
                        "connection": connection}
        _save_lab_state(topology, state)
        progress.step(f"agent for {name} started (pid {pid})")


#: Container starts at once per core of this machine, shared by the lab's agents
#: (``lab_parallel_starts``), and at most an agent's default, ``agent.containers.
#: PARALLEL_STARTS`` (not imported: that module is 30 ms of every `up`; test_cli_flags checks
#: the two agree).
LAB_STARTS_PER_CORE, LAB_STARTS_MAX = 2, 4


def lab_parallel_starts(hosts: int, cores: int | None = None) -> int:
    """How many container starts each of ``hosts`` lab agents runs at once. An agent on a
    host of its own runs up to four (``LAB_STARTS_MAX``); the lab's agents
    share this machine's cores, so together they run about two per core (`up` of 100 x 10 on
    two cores read 21.1 and 21.4 s with four each and 19.5 s with one; one lab host starting
    50 gained a third with four)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(LAB_STARTS_MAX, LAB_STARTS_PER_CORE * cores // max(1, hosts)))


def ensure_dockerds(topology: Topology, state: dict[str, Any],
                    lab_hosts: dict[str, lab.LabHost], progress: Progress) -> None:
    """A private dockerd in each ``docker: true`` lab host, its plugin that host's agent."""
    dockerds: dict[str, dict[str, int]] = state.setdefault("dockerd", {})
    for host in topology.lab_hosts:
        if not host.docker:
            continue
        known = dockerds.get(host.name)
        if known and lab.process_alive(known["pid"], known.get("start_time")):
            continue
        docker = lab_docker(state["prefix"], host.name)
        dockerds[host.name] = start_lab_dockerd(docker, lab_hosts[host.name].netns)
        _save_lab_state(topology, state)
        progress.step(f"dockerd for {host.name} started (pid {dockerds[host.name]['pid']}): "
                      f"DOCKER_HOST={docker.docker_host}")


def stop_dockerds(state: dict[str, Any], progress: Progress) -> None:
    prefix = state.get("prefix") or ""
    for name, known in sorted(state.get("dockerd", {}).items()):
        stop_lab_dockerd(lab_docker(prefix, name), known)
        progress.step(f"dockerd for {name} stopped (pid {known['pid']})")


def apply_objects(client: Client, topology: Topology, progress: Progress) -> int:
    """Create what is missing; update what differs where the API allows it (a network's
    mutable fields, a container's spec on the same host); refuse the rest. Returns the store
    revision of the last write (0 when nothing was written)."""
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    revision = 0
    for archive in topology.images:
        load_image(client, archive, progress)
    for ref in registry_images(topology):
        pull_image(client, ref, progress)
    # What is there already as the topology says is left alone on the strength of two List
    # calls: create-then-compare costs two RPCs per object (400 to add one host to a
    # 100-host lab). The rest goes through create-or-compare, which is safe against races.
    # (The hosts are not listed: `up` registered them and waited for their agents just
    # before, and a host joining a 100-host lab waits for this before its lease exists.)
    observed = observe(client, hosts_too=False)
    networks = [n for n in topology.networks
                if _network_change(n, observed.networks.get(n.name)).sign != SAME]
    containers = [c for c in topology.containers
                  if _container_change(c, observed.containers.get(c.name)).sign != SAME]
    counts["unchanged"] = len(topology.networks) - len(networks) + \
        len(topology.containers) - len(containers)
    # Networks first without `allow` (it may name networks created later), then their allows.
    for net in networks:
        what, rev = _apply_network(client, dataclasses.replace(net, allow=()), net)
        counts[what] += 1
        revision = max(revision, rev)
    for net in networks:
        if net.allow:
            revision = max(revision, _apply_network(client, net, net)[1])
    # Policies before containers, so that a container is covered from its first packet.
    for policy in topology.policies:
        revision = max(revision, _apply_policy(client, policy))
    # Donors before the containers joined to them. The new ones go in CreateContainers requests
    # of CREATE_BATCH (each one store transaction); from one that found one of them there
    # (written meanwhile: that request wrote nothing) on, one by one as before.
    ordered = sorted(containers, key=lambda c: (c.donor is not None, c.name))
    new = [c for c in ordered if c.name not in observed.containers]
    ordered = [c for c in ordered if c.name in observed.containers]
    start = 0
    while len(new) - start > 1:
        batch = new[start:start + CREATE_BATCH]
        batched = _create_containers(client, batch)
        if batched is None:
            break
        counts["created"] += len(batch)
        revision = max(revision, batched)
        start += len(batch)
        if start < len(new):
            progress.step(f"containers recorded: {start}/{len(new)}")
    ordered += new[start:]
    for ctr in ordered:
        what, rev = _apply_container(client, ctr)
        counts[what] += 1
        revision = max(revision, rev)
    progress.step("desired state: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return revision


def _apply_policy(client: Client, policy: Policy) -> int:
    """Create or replace a policy (CreatePolicy replaces one of the same name)."""
    try:
        return int(client.api.CreatePolicy(
            pb.CreatePolicyRequest(policy=convert.policy_to_pb(policy)), timeout=10).revision)
    except wire.RpcError as e:
        raise DeployError(f"policy {policy.name!r}: {_details(e)}") from e


def load_image(client: Client, archive: str, progress: Progress) -> None:
    try:
        reply = client.api.LoadImage(convert.file_chunks(archive), timeout=600)
    except wire.RpcError as e:
        raise DeployError(f"could not load image archive {archive}: {_details(e)}") from e
    tags = ", ".join(t for image in reply.images for t in image.repo_tags)
    progress.step(f"image {tags or archive} loaded")


#: Network fields a topology may leave at 0 for the controller to choose (a VNI, a UDP port).
CONTROLLER_CHOSEN = dryrun.CONTROLLER_CHOSEN


def _apply_network(client: Client, net: Network, final: Network) -> tuple[str, int]:
    """("created" | "updated" | "unchanged", revision of the write or 0)."""
    try:
        got = client.api.CreateNetwork(
            pb.CreateNetworkRequest(network=convert.network_to_pb(net)), timeout=10)
        return "created", got.revision
    except wire.RpcError as e:
        if _code(e) != wire.StatusCode.ALREADY_EXISTS:
            raise DeployError(f"could not create network {net.name!r}: {_details(e)}") from e
        refusal = e
    have = convert.network_from_pb(_existing(
        lambda: client.api.GetNetwork(pb.GetRequest(name=net.name), timeout=10), refusal,
        f"network {net.name!r}"))
    have_cmp = dataclasses.replace(have, builtin=False)
    # What the topology leaves to the controller (0: allocate or default) matches any value.
    chosen = {f: getattr(have, f) for f in CONTROLLER_CHOSEN if not getattr(net, f)}
    net, final = dataclasses.replace(net, **chosen), dataclasses.replace(final, **chosen)
    if have_cmp in (final, net):
        return "unchanged", 0
    immutable = [f for f in Network.__dataclass_fields__
                 if f not in Network.MUTABLE and getattr(have_cmp, f) != getattr(net, f)]
    if immutable:
        raise DeployError(f"network {net.name!r} exists with another {immutable[0]} "
                          f"({getattr(have, immutable[0])!r}); run `sdnctl down` first")
    try:
        got = client.api.UpdateNetwork(
            pb.UpdateNetworkRequest(network=convert.network_to_pb(net)), timeout=10)
    except wire.RpcError as e:
        raise DeployError(f"could not update network {net.name!r}: {_details(e)}") from e
    return "updated", got.revision


def _create_containers(client: Client, containers: list[Container]) -> int | None:
    """Create ``containers`` in one request; their revision, or None when one exists already
    (nothing was written: the caller goes one by one)."""
    request = pb.CreateContainersRequest(
        containers=[convert.container_to_pb(c) for c in containers])
    try:
        return int(client.api.CreateContainers(request, timeout=60).revision)
    except wire.RpcError as e:
        if _code(e) == wire.StatusCode.ALREADY_EXISTS:
            return None
        raise DeployError(f"could not create containers: {_details(e)}") from e


def _apply_container(client: Client, ctr: Container) -> tuple[str, int]:
    msg = convert.container_to_pb(ctr)
    try:
        got = client.api.CreateContainer(pb.CreateContainerRequest(container=msg), timeout=10)
        return "created", got.revision
    except wire.RpcError as e:
        if _code(e) != wire.StatusCode.ALREADY_EXISTS:
            raise DeployError(f"could not create container {ctr.name!r}: {_details(e)}") from e
        refusal = e  # a container of that name, or a value it takes (a host port): see Get
    have = convert.container_from_pb(_existing(
        lambda: client.api.GetContainer(pb.GetRequest(name=ctr.name), timeout=10), refusal,
        f"container {ctr.name!r}"))
    # What the controller resolves (the image ID) or sdnctl stop/start changes is not the file's.
    have = dataclasses.replace(have, image_id="", stopped=False, generation=0)
    if have == ctr:
        return "unchanged", 0
    if have.host != ctr.host:
        raise DeployError(f"container {ctr.name!r} runs on host {have.host!r}, the topology "
                          f"says {ctr.host!r}; run `sdnctl down` first")
    try:
        got = client.api.UpdateContainer(pb.UpdateContainerRequest(container=msg), timeout=10)
    except wire.RpcError as e:
        raise DeployError(f"could not update container {ctr.name!r}: {_details(e)}") from e
    return "updated", got.revision


def wait_running(client: Client, topology: Topology, revision: int, timeout: float,
                 progress: Progress) -> None:
    """Until every container runs, as reported by its host's *current* agent (a restarted agent
    has finished its first pass), and every agent has realised ``revision`` (what this `up`
    wrote, e.g. a changed `allow`, is in the kernel).

    Polled per host: one ListHosts (cheap) says which hosts' agents are synced, have reported
    all of their containers and realised ``revision``; each such host's containers are then
    listed once (``ListContainers(host)``) and, when all run, the host is done. Listing every
    container at each poll (as before) cost the controller ~0.1 ms per container and `up`'s
    own process the decoding, on the CPUs the agents starting them needed: at 100 hosts x 10
    that was a listing of 1,000 twice a second for the whole start, and during a host's join
    it took CPU from the fan-out being measured.

    Between two polls, while a connected agent has yet to realise ``revision``, the pause is a
    WaitHost on that host (every host must realise it before `up` is done, so no wait is
    wasted): the controller answers the moment the agent's report is written, where a sleep
    noticed the end of a pass of 50 starts 38 ms late on average (the pause grows to 100 ms)."""
    want: dict[str, set[str]] = {h.name: set() for h in topology.hosts}
    for ctr in topology.containers:
        want.setdefault(ctr.host, set()).add(ctr.name)
    total = len(topology.containers)
    running: dict[str, int] = {}  # host -> its containers, all running (the host is done)
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST / POLL_GROWTH
    while True:
        try:
            listed = {h.name: h for h in client.api.ListHosts(pb.ListRequest(),
                                                              timeout=10).hosts}
            for name in sorted(set(want) - set(running)):
                got = listed.get(name)
                if got is not None and not got.agent_connected and not want[name]:
                    running[name] = 0  # no agent, nothing of ours there: nothing to wait for
                    continue
                if not _host_synced(got, want[name], revision):
                    continue
                states = _states(client, name, want[name])
                _refuse_failed(states.values())
                if all(c.status.state == STATE_RUNNING for c in states.values()):
                    running[name] = len(want[name])
        except wire.RpcError as e:
            # A controller busy with 100 agents' first passes can miss one poll's deadline
            # (issue 21: `up` of 100 x 10 failed so): the wait's own deadline decides.
            if _code(e) != wire.StatusCode.DEADLINE_EXCEEDED or time.monotonic() > deadline:
                raise
            continue
        progress.waiting(f"containers running: {sum(running.values())}/{total}")
        if len(running) == len(want):
            return
        if time.monotonic() > deadline:
            late = [c for name in sorted(set(want) - set(running))
                    for c in _states(client, name, want[name]).values()
                    if c.status.state != STATE_RUNNING]
            _refuse_failed(late)
            if late:
                raise DeployError("not every container runs: " +
                                  "; ".join(_state_text(c) for c in late))
            raise DeployError("not every host's agent realised what `up` wrote (revision "
                              f"{revision}): {', '.join(sorted(set(want) - set(running)))}")
        delay = min(delay * POLL_GROWTH, POLL_MAX)
        unrealised = [name for name in sorted(set(want) - set(running))
                      if (got := listed.get(name)) is not None and got.agent_connected
                      and not (got.agent_synced and got.observed_revision >= revision)]
        if not (unrealised and _wait_host(client, unrealised[0], revision, delay)):
            time.sleep(delay)


def _wait_host(client: Client, host: str, revision: int, wait: float) -> bool:
    """At most ``wait`` seconds until ``host``'s agent has realised ``revision`` (WaitHost:
    the controller answers when the agent's report is written). False when no wait took
    place: a controller without WaitHost, or a host it does not know; the caller sleeps."""
    try:
        client.api.WaitHost(pb.WaitHostRequest(name=host, revision=revision,
                                               timeout_ms=max(1, int(wait * 1000))),
                            timeout=wait + 10)
    except wire.RpcError as e:
        if _code(e) in (wire.StatusCode.UNIMPLEMENTED, wire.StatusCode.NOT_FOUND):
            return False
        if _code(e) != wire.StatusCode.DEADLINE_EXCEEDED:
            raise
    return True


def _host_synced(got: pb.Host | None, want: set[str], revision: int) -> bool:
    """``got``'s current agent is synced, has reported all of ``want`` and realised
    ``revision``."""
    return got is not None and got.agent_connected and got.agent_synced and \
        want <= set(got.reported_containers) and got.observed_revision >= revision


def _states(client: Client, host: str, names: set[str]) -> dict[str, pb.Container]:
    """``names`` as the controller has them on ``host`` (one listing of that host)."""
    if not names:
        return {}
    listed = client.api.ListContainers(pb.ListRequest(host=host), timeout=10).containers
    return {c.name: c for c in listed if c.name in names}


def _refuse_failed(containers: Iterable[pb.Container]) -> None:
    failed = [c for c in containers if c.status.state in (STATE_ERROR, STATE_EXITED)]
    if failed:
        raise DeployError("not every container runs: " +
                          "; ".join(_state_text(c) for c in failed))


def _state_text(c: pb.Container) -> str:
    return f"{c.name}: {c.status.state or 'pending'}" + \
        (f" ({c.status.message})" if c.status.message else "")


# -- down ------------------------------------------------------------------------------------

def down(topology: Topology, progress: Progress | None = None) -> None:
    progress = progress or Progress()
    state = _load_lab_state(topology)
    stop_dockerds(state, progress)  # while the agents serve its plugin calls
    client = Client()
    try:
        if client.healthy():
            delete_objects(client, topology, progress)
        else:
            progress.step("no controller answers: removing the lab only")
    finally:
        # What runs on this machine goes even when the controller refused a deletion: a lab
        # left behind (agents, sandboxes mounted in the run directory, namespaces) would be
        # out of reach of the next `down`, which the same refusal would stop again.
        client.close()
        stop_agents(state, progress)
        sweep(topology, state, progress)
        if labregistry.stop(state.get("prefix") or lab_prefix(topology)):
            progress.step("lab registry stopped, its storage removed")
        if topology.lab_hosts:
            lab.Lab(state.get("prefix") or lab_prefix(topology)).teardown()
            progress.step("lab namespaces removed")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lab_state_path(topology))
    stop_controller_if_idle(progress)
    progress.done(f"{topology.name}: removed")


def _ignore_missing(call: Callable[[], Any]) -> None:
    try:
        call()
    except wire.RpcError as e:
        if _code(e) != wire.StatusCode.NOT_FOUND:
            raise DeployError(_details(e)) from e


def delete_objects(client: Client, topology: Topology, progress: Progress) -> None:
    # Containers joined to another first: a donor cannot go while others use its namespace.
    deleted_at: dict[str, int] = {}  # host -> revision of its last deletion
    # Every other container on the topology's hosts goes with them: those made by `sdnctl run`
    # and the CNI attachments (issue 17). A container cannot outlive its host, and a network
    # cannot go while it has containers: one left would stop `down` half-way.
    hosts = {h.name for h in topology.hosts}
    named = {c.name for c in topology.containers}
    others = [Container(name=c.name, host=c.host, network=c.network)
              for c in client.api.ListContainers(pb.ListRequest(), timeout=10).containers
              if c.host in hosts and c.name not in named]
    # One request (one transaction, one event per host; one by one, 1,000 containers made
    # every host of their network hear of each name leaving apart: minutes at 100 x 10).
    ordered = sorted([*topology.containers, *others], key=lambda c: (c.donor is None, c.name))
    host_of = {c.name: c.host for c in ordered}
    for start in range(0, len(ordered), DELETE_BATCH):
        request = pb.DeleteContainersRequest(
            names=[c.name for c in ordered[start:start + DELETE_BATCH]])
        try:
            reply = client.api.DeleteContainers(request, timeout=60)
        except wire.RpcError as e:
            raise DeployError(f"could not delete containers: {_details(e)}") from e
        for name in reply.deleted:
            deleted_at[host_of[name]] = max(deleted_at.get(host_of[name], 0), reply.revision)
    wait_agents_caught_up(client, deleted_at, progress)
    for policy in topology.policies:
        _ignore_missing(lambda policy=policy: client.api.DeletePolicy(  # type: ignore[misc]
            pb.DeleteRequest(name=policy.name), timeout=10))
    for net in topology.networks:
        _ignore_missing(lambda net=net: client.api.DeleteNetwork(  # type: ignore[misc]
            pb.DeleteRequest(name=net.name), timeout=10))
    for host in topology.hosts:
        _ignore_missing(lambda host=host: client.api.DeleteHost(  # type: ignore[misc]
            pb.DeleteRequest(name=host.name), timeout=10))
    progress.step(f"deleted {len(topology.containers) + len(others)} container(s), "
                  f"{len(topology.networks)} network(s), {len(topology.hosts)} host(s)")


def wait_agents_caught_up(client: Client, revisions: dict[str, int], progress: Progress,
                          timeout: float = 60.0) -> None:
    """Until each host's agent reports it has realised the given revision (so it removed what
    was deleted by then), or is not connected (then `sweep` removes what it left)."""
    deadline = time.monotonic() + timeout
    pending = set(revisions)
    delays = poll_delays()
    while pending and time.monotonic() < deadline:
        # One ListHosts a round: a GetHost per pending host was 100 calls every 0.1 s at
        # 100 hosts, from the CPUs the agents removing their containers needed.
        try:
            listed = {h.name: h for h in client.api.ListHosts(pb.ListRequest(),
                                                              timeout=10).hosts}
        except wire.RpcError as e:
            if _code(e) != wire.StatusCode.DEADLINE_EXCEEDED:
                # The wait is a courtesy to the agents (sweep removes what they left): as
                # when a GetHost failed for each, `down` goes on.
                progress.step(f"could not list the hosts ({_details(e)}); not waiting")
                return
            continue
        for name in sorted(pending):
            host = listed.get(name)
            if host is None or not host.agent_connected or (
                    host.agent_synced and host.observed_revision >= revisions[name]):
                pending.discard(name)  # gone, no agent (sweep), or caught up
        progress.waiting(f"waiting for {len(pending)} agent(s) to remove their containers")
        time.sleep(next(delays))
    if pending:
        progress.step(f"agents of {', '.join(sorted(pending))} did not catch up; sweeping")


def stop_agents(state: dict[str, Any], progress: Progress) -> None:
    """Stop every lab agent that runs, all at once."""
    alive = {name: known for name, known in sorted(state.get("agents", {}).items())
             if lab.process_alive(known["pid"], known.get("start_time"))}
    lab.stop_processes([(known["pid"], known.get("start_time")) for known in alive.values()])
    for name, known in alive.items():
        progress.step(f"agent for {name} stopped (pid {known['pid']})")


def sweep(topology: Topology, state: dict[str, Any], progress: Progress) -> None:
    """Remove what agents left: container processes and namespace mounts in their run dirs."""
    prefix = state.get("prefix") or lab_prefix(topology)
    for host in topology.lab_hosts:
        run_dir = agent_run_dir(prefix, host.name)
        leftovers = layout.sweep(run_dir)
        if leftovers:
            progress.step(f"{host.name}: swept {leftovers} leftover(s) of a stopped agent")
        shutil.rmtree(run_dir, ignore_errors=True)



def stop_controller_if_idle(progress: Progress) -> None:
    pid = started_controller_pid()
    if pid is None:
        return
    client = Client()
    try:
        if client.healthy():
            hosts = client.api.ListHosts(pb.ListRequest(), timeout=10).hosts
            networks = [n for n in client.api.ListNetworks(pb.ListRequest(), timeout=10).networks
                        if not n.builtin]
            if hosts or networks:
                return
    finally:
        client.close()
    # Returns once it has exited: a controller started next (`up`) finds the socket free.
    if not stop_controller(pid):
        raise DeployError(f"the controller (pid {pid}) did not exit, even after SIGKILL")
    progress.step(f"controller stopped (pid {pid}); its state stays in {paths.controller_db()}")
