"""Issue 10 without root: the fault-injection switch, how repairs are named, and a pass that
sets up no container while the firewall (its anti-spoofing guard) could not be applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_plan import DB, FRONT, WEB, desired

from agent import plan as p
from agent.reconcile import Reconciler
from sdnctl import faults


@pytest.fixture
def armed() -> Iterator[None]:
    yield
    faults.configure("")


def test_faults_are_off_unless_armed(armed: None) -> None:
    faults.configure("")
    for step in faults.STEPS:
        faults.point(step)  # nothing happens


def test_a_fail_fault_raises_at_its_step_only(armed: None) -> None:
    faults.configure("veth:fail, route:fail")
    assert faults.armed() == {"veth": "fail", "route": "fail"}
    faults.point("namespace")
    with pytest.raises(faults.InjectedFault, match="'veth'"):
        faults.point("veth")


@pytest.mark.parametrize("spec", ["veth", "veth:explode", "bogus:fail", "veth:fail,:kill"])
def test_a_bad_fault_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="SDNCTL_FAULT"):
        faults.parse(spec)


def test_every_action_is_described_and_restarts_are_not_repairs() -> None:
    actions = p.plan(desired(WEB, DB), p.Observed())
    lines = [p.describe(a) for a in actions]
    assert lines == ["sysctl net.ipv4.ip_forward=1", "bridge sdnb1b78eb3b of network 'front'",
                     "nftables tables sdnctl", "container 'db': sandbox, link, start",
                     "container 'web': sandbox, link, start"]
    assert all(p.is_repair(a) for a in actions)
    restart = p.SetupContainer(WEB, FRONT, netns=False, attach=False, start=True,
                               stop_first=False)
    assert not p.is_repair(restart)
    assert p.describe(p.RemoveContainer("web", stop=True)) == "remove container 'web'"


class FakeRuntime:
    name = "fake"
    root = "/nonexistent"


def test_no_container_is_set_up_while_the_firewall_fails(tmp_path: Path) -> None:
    reconciler = Reconciler(str(tmp_path), links=None, fw=None,  # type: ignore[arg-type]
                            runtime=FakeRuntime(), images=None)  # type: ignore[arg-type]
    applied: list[Any] = []

    def apply(action: Any) -> None:
        applied.append(type(action).__name__)
        if isinstance(action, p.SyncFirewall):
            raise RuntimeError("nft said no")

    reconciler.observe = lambda desired: p.Observed()  # type: ignore[method-assign]
    reconciler.apply = apply  # type: ignore[method-assign]
    outcome = reconciler.reconcile(desired(WEB, DB))
    assert applied == ["EnableForwarding", "EnsureBridge", "SyncFirewall"]
    assert outcome.errors == {"": "nft said no",
                              "db": "waiting for the firewall, which could not be applied",
                              "web": "waiting for the firewall, which could not be applied"}
