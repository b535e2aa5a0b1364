"""CNI ADD's fast path without root (issue 17): the reconciler builds one attachment between two
passes (``Reconciler.attach_now``) exactly as a pass would, so the pass after it has nothing to
do; it declines when a pass is needed, and undoes itself when a step fails. The desired state
keeps such an attachment until the Watch stream has caught up with its record."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_plan import FRONT, desired

from agent.desired import DesiredContainer, DesiredState
from agent.kernel.errors import KernelError
from agent.kernel.fakes import (
    FakeFirewall,
    FakeLinks,
    FakeRuntime,
    FakeSandboxes,
    FakeSysctls,
)
from agent.names import container_mac, veth_name
from agent.netpolicy import PolicyInput
from agent.nftrules import fingerprint
from agent.observed import PreparedVeth
from agent.plan import firewall_spec
from agent.reconcile import Reconciler
from sdnctl.api import faults
from sdnctl.v1 import sdnctl_pb2 as pb

NETNS = "/run/netns/cni-test-1"
ATT = DesiredContainer(name="cni-0123456789abcdef", network="front",
                       command=("sleep", "infinity"), interface="eth0", ip="10.88.0.9",
                       prefixlen=24, gateway="10.88.0.1", cni_id="abc123", cni_netns=NETNS)
VETH = veth_name(ATT.name, ATT.interface)


@pytest.fixture
def host(tmp_path: Path) -> tuple[Reconciler, FakeLinks, FakeFirewall]:
    """A reconciler on fakes whose last pass realised network ``front`` (its bridge)."""
    links, fw = FakeLinks(), FakeFirewall()
    reconciler = Reconciler(str(tmp_path), links=links, fw=fw, sysctls=FakeSysctls(),
                            runtime=FakeRuntime())
    reconciler.containers.sandboxes = FakeSandboxes({NETNS})  # the runtime's namespace
    assert reconciler.reconcile(desired()).actions  # bridge, forwarding, firewall
    # forwarding went to the fake, not to the namespace this test runs in
    assert reconciler.sysctls.read_sysctl("net.ipv4.ip_forward") == "1"
    assert reconciler.reconcile(desired()).actions == []
    return reconciler, links, fw


def with_attachment(state: DesiredState, ctr: DesiredContainer = ATT) -> DesiredState:
    state = state.copy()
    assert state.add_provisional(state.revision + 1, ctr)
    return state


def test_a_pass_after_a_fast_add_has_nothing_to_do(
        host: tuple[Reconciler, FakeLinks, FakeFirewall]) -> None:
    reconciler, links, fw = host
    state = with_attachment(desired())
    writes = fw.writes
    assert reconciler.attach_now(state, ATT)
    assert links.links[VETH].master == "sdnb1b78eb3b" and links.links[VETH].up
    assert links.containers[NETNS].addresses == (ATT.address_cidr,)
    assert fw.installed == fingerprint(firewall_spec(state)) and fw.writes == writes + 1
    outcome = reconciler.reconcile(state, full=False)
    assert outcome.actions == []
    assert [(s.name, s.state) for s in reconciler.statuses(state, outcome)] == \
        [(ATT.name, "running")]
    # The positive control: without the fast path, the same pass builds it.
    links.remove_link(VETH)
    links.forget_netns(NETNS)
    assert [type(a).__name__ for a in reconciler.reconcile(state, full=False).actions] == \
        ["SetupContainer"]


def test_a_pair_prepared_while_the_controller_recorded_it_is_finished_not_made_again(
        host: tuple[Reconciler, FakeLinks, FakeFirewall]) -> None:
    """The CNI service makes the pair while ``Attach`` is in flight (links.prepare_veth);
    the fast path then gives it our alias, the container's MAC and addresses: the same
    attachment as one it makes whole, and the pass after has nothing to do."""
    reconciler, links, fw = host
    state = with_attachment(desired())
    prepared = links.prepare(VETH, "sdnb1b78eb3b")
    made = links.add_veth
    links.add_veth = None  # type: ignore[assignment,method-assign]  # must not be called
    assert reconciler.attach_now(state, ATT, prepared)
    links.add_veth = made  # type: ignore[method-assign]
    assert links.prepared == {}
    assert links.links[VETH].master == "sdnb1b78eb3b" and links.links[VETH].up
    assert links.links[VETH].alias == f"sdnctl:ctr/{ATT.name}/eth0"
    assert links.containers[NETNS].addresses == (ATT.address_cidr,)
    assert links.containers[NETNS].mac == container_mac(ATT.ip)
    assert fw.installed == fingerprint(firewall_spec(state))
    assert reconciler.reconcile(state, full=False).actions == []
    # A prepared pair gone meanwhile: the step fails, and nothing is left of it.
    links.remove_link(VETH)
    links.forget_netns(NETNS)
    before = fw.installed
    with pytest.raises(KernelError, match="gone"):
        reconciler.attach_now(with_attachment(desired()), ATT, PreparedVeth(VETH, 2))
    assert VETH not in links.links and fw.installed != before


@pytest.mark.parametrize("why", ["no pass yet", "new lease", "policy", "bandwidth"])
def test_the_fast_path_declines_when_a_pass_is_needed(
        tmp_path: Path, host: tuple[Reconciler, FakeLinks, FakeFirewall], why: str) -> None:
    reconciler, links, fw = host
    state, ctr = with_attachment(desired()), ATT
    if why == "no pass yet":
        reconciler = Reconciler(str(tmp_path / "fresh"), links=links, fw=fw,
                                sysctls=FakeSysctls(), runtime=FakeRuntime())
    elif why == "new lease":  # the controller moved the lease since the last pass
        net = dataclasses.replace(FRONT, subnet="10.88.1.0/24", gateway="10.88.1.1")
        ctr = dataclasses.replace(ATT, ip="10.88.1.9", gateway="10.88.1.1")
        state = with_attachment(DesiredState(revision=7, synced=True, networks={"front": net}),
                                ctr)
    elif why == "policy":
        state.policy = PolicyInput(policies=(object(),))  # type: ignore[arg-type]
    else:
        ctr = dataclasses.replace(ATT, ingress_bps=8_000_000)
        state = with_attachment(desired(), ctr)
    installed, writes = fw.installed, fw.writes
    assert not reconciler.attach_now(state, ctr)
    assert VETH not in links.links and NETNS not in links.containers
    assert (fw.installed, fw.writes) == (installed, writes)


def test_a_fast_add_that_fails_leaves_no_veth_nor_guard(
        host: tuple[Reconciler, FakeLinks, FakeFirewall]) -> None:
    reconciler, links, fw = host
    before = fw.installed
    real = links.ensure_veth

    def half_way(*args: object, **kw: object) -> int:
        real(*args, **kw)  # type: ignore[arg-type]
        faults.configure("veth:fail")
        try:
            faults.point("veth")
        finally:
            faults.configure("")
        return 0

    links.ensure_veth = half_way  # type: ignore[method-assign]
    with pytest.raises(faults.InjectedFault):
        reconciler.attach_now(with_attachment(desired()), ATT)
    assert VETH not in links.links
    assert fw.installed == before  # the guard went again


def test_the_stream_takes_over_from_a_provisional_attachment() -> None:
    state = desired()
    assert state.add_provisional(9, ATT)
    # A snapshot the controller took before recording it must not drop it...
    state.apply(pb.WatchEvent(revision=8, snapshot=True,
                              networks=[pb.HostNetwork(network=pb.Network(name="front"),
                                                       lease=pb.Lease(subnet="10.88.0.0/24",
                                                                      gateway="10.88.0.1"))]))
    assert state.containers == {ATT.name: ATT}
    # ...and once the stream reached its revision, the stream's word stands (a later Detach).
    state.apply(pb.WatchEvent(revision=10, deleted_containers=[ATT.name]))
    assert state.containers == {} and state.provisional == {}
    # A record the stream already delivered and then removed is not taken back.
    assert not state.add_provisional(9, ATT) and ATT.name not in state.containers


def test_passes_and_the_fast_path_write_what_the_firewall_saw_of_br_netfilter(
        host: tuple[Reconciler, FakeLinks, FakeFirewall]) -> None:
    """The firewall's reading of br_netfilter (``bridged_tracked``) goes into every spec the
    reconciler writes: a pass rewrites the tables when it changes, and the fast path's guard
    keeps it (no full rewrite back)."""
    reconciler, _, fw = host
    fw.bridged_tracked = True
    assert [type(a).__name__ for a in reconciler.reconcile(desired()).actions] == \
        ["SyncFirewall"]
    assert fw.installed == fingerprint(firewall_spec(desired(), True))
    state = with_attachment(desired())
    assert reconciler.attach_now(state, ATT)
    assert fw.installed == fingerprint(firewall_spec(state, True))
    assert reconciler.reconcile(state, full=False).actions == []
