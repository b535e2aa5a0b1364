"""The container side of a pass (agent/containers.py) against the kernel seams' fakes, without
root: a container set up, observed, reported, stopped and removed, and a start that fails half
way rolled back. The same lifecycle against the real kernel is tests/netns/test_faults.py's."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
from pathlib import Path

import pytest
from test_plan import DB, FRONT, WEB, desired

from agent import plan as p
from agent.containers import Containers, _Starts
from agent.desired import DesiredContainer
from agent.kernel.fakes import (
    FakeCgroups,
    FakeConntrack,
    FakeFirewall,
    FakeLinks,
    FakeProcesses,
    FakeRuntime,
    FakeSandboxes,
    FakeSysctls,
)
from agent.names import veth_name
from agent.reconcile import Reconciler, SetupContainers, group_setups
from sdnctl.api.model import STATE_ERROR, STATE_EXITED, STATE_RUNNING


class BrokenRuntime(FakeRuntime):
    def run(self, cid: str, bundle: str, rootfs: object, log: str) -> tuple[int, int]:  # type: ignore[override]
        raise RuntimeError("crun: no such file")


def make(tmp_path: Path, runtime: FakeRuntime | None = None,
         conntrack: FakeConntrack | None = None) -> Containers:
    runtime = runtime or FakeRuntime()
    return Containers(str(tmp_path), FakeLinks(), host_netns="/proc/1/ns/net", runtime=runtime,
                      cgroup_parent="/sdnctl-test", userns_supported=False,
                      sandboxes=FakeSandboxes(), processes=FakeProcesses(runtime),
                      cgroups=FakeCgroups(), conntrack=conntrack or FakeConntrack())


SETUP = p.SetupContainer(WEB, FRONT, netns=True, attach=True, start=True, stop_first=False)


def test_a_container_is_set_up_observed_reported_and_removed(tmp_path: Path) -> None:
    containers = make(tmp_path)
    containers.setup(SETUP)
    sandbox = containers.sandbox("web")
    assert containers.sandboxes.is_netns(sandbox["net"])  # type: ignore[attr-defined]
    links = containers.links
    assert isinstance(links, FakeLinks) and veth_name("web", "eth0") in links.links
    bundle = tmp_path / "bundles" / "web" / "config.json"
    assert '"sleep"' in bundle.read_text()

    want = desired(WEB)
    observed = containers.observe(want)
    assert observed["web"].running and observed["web"].netns
    assert observed["web"].net is not None and observed["web"].net.addresses == ("10.88.0.2/24",)
    [status] = containers.statuses(want, p.Observed(containers=observed), {})
    assert (status.name, status.state, status.netns) == ("web", STATE_RUNNING, sandbox["net"])
    assert status.cgroup == "/sdnctl-test/web"

    containers.remove("web", stop=True)
    assert not containers.sandboxes.is_netns(sandbox["net"])  # type: ignore[attr-defined]
    assert containers.observe(desired()) == {}
    assert "/sdnctl-test/web" in containers.cgroups.removed  # type: ignore[attr-defined]


def test_an_exited_process_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    containers = make(tmp_path)
    containers.setup(SETUP)
    runtime = containers.runtime
    assert isinstance(runtime, FakeRuntime) and isinstance(containers.processes, FakeProcesses)
    pid = runtime.running.pop("web")  # the process ends by itself with code 3
    containers.processes.exited[pid] = 3
    want = desired(WEB)
    observed = containers.observe(want)
    assert not observed["web"].running and observed["web"].exit_code == 3
    # read again after the reap: the code was kept in the .exit file
    assert containers.observe(want)["web"].exit_code == 3
    [status] = containers.statuses(want, p.Observed(containers=observed), {})
    assert (status.state, status.exit_code) == (STATE_EXITED, 3)


def test_a_start_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    containers = make(tmp_path, BrokenRuntime())
    with pytest.raises(RuntimeError, match="crun"):
        containers.setup(SETUP)
    assert not containers.sandboxes.pinned  # type: ignore[attr-defined]
    assert not (tmp_path / "bundles" / "web").exists()
    assert containers.observe(desired(WEB)) == {}
    assert "/sdnctl-test/web" in containers.cgroups.removed  # type: ignore[attr-defined]
    [status] = containers.statuses(desired(WEB), p.Observed(), {"web": "crun: no such file"})
    assert (status.state, status.message) == (STATE_ERROR, "crun: no such file")


def test_a_pass_forgets_the_conntrack_entries_of_all_its_removals_at_once(
        tmp_path: Path) -> None:
    """A flush dumps the kernel's whole conntrack table: the pass that removes two containers
    flushes their addresses together, once, after the removals; a removal outside a pass
    flushes its own at once."""
    links = FakeLinks()
    r = Reconciler(str(tmp_path), links=links, fw=FakeFirewall(), sysctls=FakeSysctls())
    flushes = FakeConntrack()
    r.containers = make(tmp_path, conntrack=flushes)
    r.containers.links = links
    assert r.reconcile(desired(WEB, DB)).errors == {}
    assert flushes.flushed == []
    outcome = r.reconcile(desired())
    assert outcome.errors == {}
    assert sorted(a.name for a in outcome.actions if isinstance(a, p.RemoveContainer)) == [
        "db", "web"]
    assert [sorted(f) for f in flushes.flushed] == [sorted([DB.ip, WEB.ip])]

    r.containers.setup(SETUP)  # and alone, outside a pass
    r.containers.remove("web", stop=True, addresses=(WEB.address_cidr,))
    assert flushes.flushed[-1] == [WEB.ip]


class MeetingRuntime(FakeRuntime):
    """Starts that return only once ``together`` of them run at the same time (a pass that
    started them one after another fails at the barrier), and record who entered when."""

    def __init__(self, together: int, fail: str = "") -> None:
        super().__init__()
        self.barrier = threading.Barrier(together, timeout=10)
        self.fail = fail
        self.entered: list[str] = []
        self.returned: list[str] = []

    def run(self, cid: str, bundle: str, rootfs: object, log: str) -> tuple[int, int]:  # type: ignore[override]
        self.entered.append(cid)
        if cid != "side":
            self.barrier.wait()
        if cid == self.fail:
            raise RuntimeError(f"crun: {cid} would not start")
        found = super().run(cid, bundle, rootfs, log)  # type: ignore[arg-type]
        self.returned.append(cid)
        return found


SIDE = DesiredContainer(name="side", network="container:web", command=("sleep", "infinity"))
CACHE = dataclasses.replace(DB, name="cache", ip="10.88.0.4")


def test_a_pass_starts_its_containers_at_once_and_a_joined_one_after_its_donor(
        tmp_path: Path) -> None:
    """Issue 21: `up` of many containers on one host started them one after another. Three
    starts must meet at once (one after another, the first waits at the barrier until it
    breaks); the container joined to ``web`` starts once ``web``'s start returned (it binds
    its donor's /etc files; see the next test for the order alone)."""
    runtime = MeetingRuntime(together=3)
    r = Reconciler(str(tmp_path), links=FakeLinks(), fw=FakeFirewall(), sysctls=FakeSysctls())
    r.containers = make(tmp_path, runtime)
    outcome = r.reconcile(desired(WEB, DB, CACHE, SIDE))
    assert outcome.errors == {}
    assert sorted(runtime.running) == ["cache", "db", "side", "web"]
    assert runtime.entered.index("side") > runtime.returned.index("web")
    assert all(outcome.observed.containers[n].running for n in ("web", "db", "cache", "side"))


class HeldPool(concurrent.futures.Executor):
    """A pool that runs nothing until the test ends a start's future itself."""

    def __init__(self) -> None:
        self.submitted: dict[str, concurrent.futures.Future[None]] = {}

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.submitted[args[0].name] = future
        return future


def test_a_joined_container_is_started_only_once_its_donors_start_has_ended() -> None:
    pool = HeldPool()
    starts = _Starts(pool, lambda ctr, undo, net: None)
    for ctr in (WEB, DB, SIDE):
        starts.add(p.SetupContainer(ctr, None, netns=False, attach=False, start=True,
                                    stop_first=False), contextlib.ExitStack())
    assert list(pool.submitted) == ["web", "db"]
    pool.submitted["db"].set_result(None)
    assert [(a.container.name, e) for a, e in starts.ended(wait=False)] == [("db", None)]
    assert list(pool.submitted) == ["web", "db"]  # side still waits for web
    pool.submitted["web"].set_exception(RuntimeError("crun: web would not start"))
    [(action, error)] = starts.ended(wait=False)
    assert action.container.name == "web" and str(error) == "crun: web would not start"
    assert list(pool.submitted) == ["web", "db", "side"]  # a failed donor's end counts too


def test_one_failed_start_among_many_is_undone_alone(tmp_path: Path) -> None:
    """The others run; the failed one's sandbox (its veth goes with it), bundle and cgroup are
    gone, undone on the reconciler's thread (whose netlink sockets they are), and its error
    is reported."""
    runtime = MeetingRuntime(together=3, fail="db")
    r = Reconciler(str(tmp_path), links=FakeLinks(), fw=FakeFirewall(), sysctls=FakeSysctls())
    r.containers = make(tmp_path, runtime)
    outcome = r.reconcile(desired(WEB, DB, CACHE))
    assert outcome.errors == {"db": "crun: db would not start"}
    assert sorted(runtime.running) == ["cache", "web"]
    sandboxes = r.containers.sandboxes
    assert isinstance(sandboxes, FakeSandboxes)
    assert not sandboxes.is_netns(r.containers.netns_path("db"))
    assert sandboxes.is_netns(r.containers.netns_path("web"))
    assert not (tmp_path / "bundles" / "db").exists() and (tmp_path / "bundles" / "web").exists()
    assert "/sdnctl-test/db" in r.containers.cgroups.removed  # type: ignore[attr-defined]
    assert "/sdnctl-test/web" not in r.containers.cgroups.removed  # type: ignore[attr-defined]


def test_a_run_of_setups_is_applied_together_and_the_order_of_the_rest_is_kept() -> None:
    setups = [p.SetupContainer(c, FRONT, netns=True, attach=True, start=True,
                               stop_first=False) for c in (WEB, DB)]
    firewall = p.SyncFirewall(p.firewall_spec(desired(WEB, DB), False))
    removal = p.RemoveContainer("old", stop=True)
    assert group_setups([removal, firewall, *setups, p.RemoveLink("x")]) == [
        removal, firewall, SetupContainers(tuple(setups)), p.RemoveLink("x")]
