"""Observe the kernel and the process table, plan, apply: one reconciliation pass.

The planner (agent.plan) is pure; this module is the thin part that reads state for it and
carries out its actions through agent.kernel. A container's setup runs in an ExitStack: if a
later step fails, what this pass created for it is undone, and the next pass starts clean.
Teardown keeps going past failures and reports them all.

Files in the agent's run directory (``/run/sdnctl/<host>`` by default):
    netns/<container>            the container's network namespace (a bind mount)
    containers/<container>.pid   PID and start time of its process (written by agent.launch)
    containers/<container>.spec  the spec hash it was started with
    containers/<container>.log   its stdout and stderr
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent import plan as p
from agent.desired import DesiredContainer, DesiredState
from agent.kernel import firewall, netns, procs, sysctl
from agent.kernel.links import Links
from agent.kernel.names import bridge_alias, bridge_name, veth_alias, veth_name
from sdnctl.model import (
    STATE_CREATED,
    STATE_ERROR,
    STATE_EXITED,
    STATE_PENDING,
    STATE_RUNNING,
    ContainerStatus,
)

log = logging.getLogger("sdnctl.agent")


@dataclass
class Outcome:
    actions: list[p.Action]
    observed: p.Observed  # after the actions (the same read as before them when there were none)
    errors: dict[str, str] = field(default_factory=dict)  # container (or "") -> message


class Reconciler:
    """Owns the kernel façade; use it from one thread only (pyroute2 sockets are per thread)."""

    def __init__(self, run_dir: str, links: Links, fw: firewall.Firewall,
                 stop_grace: float = 1.0) -> None:
        self.run_dir = run_dir
        self.netns_dir = os.path.join(run_dir, "netns")
        self.ctr_dir = os.path.join(run_dir, "containers")
        self.links = links
        self.firewall = fw
        self.stop_grace = stop_grace
        os.makedirs(self.netns_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.ctr_dir, mode=0o755, exist_ok=True)

    # -- paths --------------------------------------------------------------------------------

    def netns_path(self, name: str) -> str:
        return os.path.join(self.netns_dir, name)

    def _file(self, name: str, suffix: str) -> str:
        return os.path.join(self.ctr_dir, f"{name}.{suffix}")

    # -- observe ------------------------------------------------------------------------------

    def observe(self, desired: DesiredState) -> p.Observed:
        owned = {link.ifname: link for link in self.links.dump_owned()}
        names = set(os.listdir(self.netns_dir))
        names |= {f.rsplit(".", 1)[0] for f in os.listdir(self.ctr_dir) if f.endswith(".pid")}
        containers = {name: self._observe_container(name, desired.containers.get(name))
                      for name in names if not name.startswith(".")}
        return p.Observed(links=owned, containers=containers, firewall=self.firewall.observe(),
                          ip_forward=sysctl.read_sysctl("net.ipv4.ip_forward") == "1")

    def _observe_container(self, name: str, want: DesiredContainer | None) -> p.ContainerState:
        path = self.netns_path(name)
        has_netns = netns.is_netns(path)
        net = None
        if has_netns:
            net = self.links.observe_container(path, want.interface if want else "eth0")
        info = procs.read_pidfile(self._file(name, "pid"))
        running = info is not None and has_netns and procs.is_alive(info, path)
        return p.ContainerState(netns=has_netns, net=net, started=info is not None,
                                running=running, spec=self._read(self._file(name, "spec")),
                                pid=info.pid if running and info is not None else 0)

    @staticmethod
    def _read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    # -- apply --------------------------------------------------------------------------------

    def reconcile(self, desired: DesiredState) -> Outcome:
        observed = self.observe(desired)
        rules = masquerade_rules(desired)
        actions = p.plan(desired, observed, firewall.fingerprint(rules))
        outcome = Outcome(actions, observed)
        for action in actions:
            try:
                self.apply(action)
            except Exception as e:  # one failure must not stop the rest of the pass
                key = getattr(getattr(action, "container", None), "name", "") or \
                    getattr(action, "name", "")
                log.warning("%s failed: %s", type(action).__name__, e, exc_info=True)
                outcome.errors[key] = f"{e}" + (f": {e.__cause__}" if e.__cause__ else "")
        if actions:
            outcome.observed = self.observe(desired)
        return outcome

    def apply(self, action: p.Action) -> None:
        match action:
            case p.EnableForwarding():
                sysctl.ensure_ip_forward(True)
            case p.SyncFirewall(networks):
                if networks:
                    self.firewall.apply(masquerade_rules_for(networks))
                else:
                    self.firewall.remove()
            case p.EnsureBridge(net):
                self.links.ensure_bridge(bridge_name(net.name), bridge_alias(net.name),
                                         net.gateway_cidr, net.mtu)
            case p.RemoveLink(ifname):
                self.links.remove_link(ifname)
            case p.SetupContainer():
                self.setup_container(action)
            case p.RemoveContainer(name, stop):
                self.remove_container(name, stop)

    def setup_container(self, action: p.SetupContainer) -> None:
        ctr, net = action.container, action.network
        path = self.netns_path(ctr.name)
        with contextlib.ExitStack() as undo:
            if action.netns and netns.create_netns(path):
                undo.callback(self._drop_netns, path)
            if action.attach:
                self.links.ensure_veth(
                    veth_name(ctr.name, ctr.interface), veth_alias(ctr.name, ctr.interface),
                    bridge_name(net.name), net.mtu, path, ctr.interface, ctr.address_cidr,
                    ctr.gateway)
            if action.start:
                if action.stop_first:
                    self._stop(ctr.name)
                self._start(ctr)
            undo.pop_all()
        log.info("container %s ready (%s)", ctr.name, ctr.address_cidr)

    def _start(self, ctr: DesiredContainer) -> None:
        procs.start(self.netns_path(ctr.name), ctr.name, ctr.command, self._file(ctr.name, "pid"),
                    self._file(ctr.name, "log"))
        with open(self._file(ctr.name, "spec"), "w") as f:
            f.write(ctr.spec_hash() + "\n")

    def _stop(self, name: str) -> None:
        info = procs.read_pidfile(self._file(name, "pid"))
        if info is not None and procs.is_alive(info, self.netns_path(name)):
            procs.stop(info, self.stop_grace)

    def _drop_netns(self, path: str) -> None:
        self.links.forget_netns(path)
        netns.remove_netns(path)

    def remove_container(self, name: str, stop: bool) -> None:
        """Stop the process, drop the namespace (its veth pair goes with it), forget the files."""
        errors: list[Exception] = []
        steps = [lambda: self._stop(name) if stop else None,
                 lambda: self._drop_netns(self.netns_path(name)),
                 lambda: self._remove_files(name)]
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise ExceptionGroup(f"could not remove container {name!r} completely", errors)
        log.info("container %s removed", name)

    def _remove_files(self, name: str) -> None:
        for suffix in ("pid", "spec", "log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file(name, suffix))

    # -- status -------------------------------------------------------------------------------

    def statuses(self, desired: DesiredState, outcome: Outcome) -> list[ContainerStatus]:
        errors = outcome.errors
        result = []
        for name in sorted(desired.containers):
            state = outcome.observed.containers.get(name)
            if name in errors:
                phase = STATE_ERROR
            elif state is None or not state.netns:
                phase = STATE_PENDING
            elif state.running:
                phase = STATE_RUNNING
            elif state.started:
                phase = STATE_EXITED
            else:
                phase = STATE_CREATED
            result.append(ContainerStatus(
                name=name, state=phase, pid=state.pid if state else 0,
                netns=self.netns_path(name) if state and state.netns else "",
                message=errors.get(name, "")))
        return result


def masquerade_rules(desired: DesiredState) -> list[firewall.MasqueradeRule]:
    return masquerade_rules_for(desired.networks.values())


def masquerade_rules_for(networks: Iterable[p.DesiredNetwork]) -> list[firewall.MasqueradeRule]:
    return [firewall.MasqueradeRule(n.name, n.subnet, bridge_name(n.name))
            for n in sorted(networks, key=lambda n: n.name)
            if n.masquerade and n.driver == "bridge"]
