"""The container side of a pass (agent/containers.py) against the kernel seams' fakes, without
root: a container set up, observed, reported, stopped and removed, and a start that fails half
way rolled back. The same lifecycle against the real kernel is tests/netns/test_faults.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_plan import DB, FRONT, WEB, desired

from agent import plan as p
from agent.containers import Containers
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
from agent.reconcile import Reconciler
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
