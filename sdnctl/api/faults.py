"""Fault injection for reliability tests: fail, or die, at a named step. Off in production.

``SDNCTL_FAULT=step:action[,step:action...]`` is read ONCE, when this module is first imported
(at process start), by the agent and the controller alike; unset, :func:`point` does nothing
but one dictionary lookup. Steps, in the order a bridged container is set up:

    ipam       the controller's transaction that records a container and its address (before it
               is committed)
    namespace  the agent has pinned the container's sandbox namespaces
    veth       the veth pair exists (its peer in the container's namespace), nothing configured
    address    the container side has its address, not yet its default route
    route      the default route is set
    nftables   the agent is about to apply its nftables tables
    runtime    the OCI runtime has started the container's process; the agent has not noted it
    watch      the controller's Watch stream is about to wait for the store's next change
    stop       the controller has stopped serving; it has not yet closed its store nor let go of
               its socket

Actions: ``fail`` raises :class:`InjectedFault` (an ordinary error: the caller's rollback must
undo what the step's predecessors made), ``kill`` sends SIGKILL to this process (no cleanup of
any kind runs: a restarted process must adopt or repair what is left), ``stall`` holds the
thread for STALL[step] seconds (a thread starved on a busy machine) and carries on: at ``watch``
longer than a stop's grace period, at ``stop`` longer than `down` once gave a controller (5 s).

Shared by the agent and the controller, so it lives beside the shared model and imports nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time

ENV = "SDNCTL_FAULT"
STEPS = ("ipam", "namespace", "veth", "address", "route", "nftables", "runtime", "watch",
         "stop")
ACTIONS = ("fail", "kill", "stall")
STALL = {"watch": 2.0, "stop": 10.0}

log = logging.getLogger("sdnctl.api.faults")


class InjectedFault(Exception):
    """Raised by a ``fail`` fault point."""


def parse(spec: str) -> dict[str, str]:
    """``"veth:fail,runtime:kill"`` -> ``{"veth": "fail", "runtime": "kill"}``."""
    armed: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        step, _, action = item.partition(":")
        if step not in STEPS or action not in ACTIONS:
            raise ValueError(f"{ENV}: {item!r} is not STEP:ACTION with STEP one of "
                             f"{', '.join(STEPS)} and ACTION one of {', '.join(ACTIONS)}")
        armed[step] = action
    return armed


_armed: dict[str, str] = parse(os.environ.get(ENV, ""))


def configure(spec: str) -> None:
    """Arm the faults of ``spec`` instead of the environment's (for in-process tests)."""
    global _armed
    _armed = parse(spec)


def armed() -> dict[str, str]:
    return dict(_armed)


def point(step: str) -> None:
    """A place where the fault for ``step``, if armed, strikes."""
    action = _armed.get(step)
    if action is None:
        return
    log.warning("fault injection: %s at step %r", action, step)
    if action == "kill":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "stall":
        time.sleep(STALL.get(step, 2.0))
        return
    raise InjectedFault(f"injected fault at step {step!r}")
