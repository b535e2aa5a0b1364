"""The pure planner (agent.plan) and the folding of Watch events (agent.desired)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from agent.desired import Changed, DesiredContainer, DesiredNetwork, DesiredState
from agent.names import bridge_alias, bridge_name, container_mac, veth_alias, veth_name
from agent.nftrules import fingerprint
from agent.observed import ObservedContainerNet, ObservedLink
from agent.plan import (
    ContainerState,
    EnableForwarding,
    EnsureBridge,
    Observed,
    RemoveContainer,
    RemoveLink,
    SetupContainer,
    SyncFirewall,
    firewall_spec,
    plan,
    restart_pending,
)
from sdnctl.api.fields import parse_port
from sdnctl.v1 import sdnctl_pb2 as pb

FRONT = DesiredNetwork(name="front", driver="bridge", subnet="10.88.0.0/24",
                       gateway="10.88.0.1", prefixlen=24, mtu=1500, masquerade=True)
WEB = DesiredContainer(name="web", network="front", command=("sleep", "infinity"),
                       interface="eth0", ip="10.88.0.2", prefixlen=24, gateway="10.88.0.1")
DB = DesiredContainer(name="db", network="front", command=("sleep", "infinity"),
                      interface="eth0", ip="10.88.0.3", prefixlen=24, gateway="10.88.0.1")


def desired(*containers: DesiredContainer, synced: bool = True) -> DesiredState:
    return DesiredState(revision=7, synced=synced, networks={"front": FRONT},
                        containers={c.name: c for c in containers})


def bridge_link(net: DesiredNetwork = FRONT) -> ObservedLink:
    return ObservedLink(ifname=bridge_name(net.name), index=10, kind="bridge",
                        alias=bridge_alias(net.name), master=None, mtu=net.mtu, up=True,
                        addresses=(net.gateway_cidr,))


def veth_link(ctr: DesiredContainer, index: int) -> ObservedLink:
    return ObservedLink(ifname=veth_name(ctr.name, ctr.interface), index=index, kind="veth",
                        alias=veth_alias(ctr.name, ctr.interface),
                        master=bridge_name(ctr.network), mtu=1500, up=True, addresses=())


def running(ctr: DesiredContainer) -> ContainerState:
    net = ObservedContainerNet(ifname=ctr.interface, index=2, up=True, mtu=1500,
                               addresses=(ctr.address_cidr,), gateway=ctr.gateway,
                               mac=container_mac(ctr.ip))
    return ContainerState(netns=True, net=net, started=True, running=True,
                          spec=ctr.spec_hash())


def matching(*containers: DesiredContainer) -> Observed:
    """What the kernel holds once ``containers`` on FRONT are fully set up and running."""
    links = {bridge_name("front"): bridge_link()}
    for i, ctr in enumerate(containers):
        link = veth_link(ctr, 20 + i)
        links[link.ifname] = link
    return Observed(links=links, containers={c.name: running(c) for c in containers},
                    firewall=fw(desired(*containers)), ip_forward=True)


def fw(state: DesiredState) -> str:
    """The fingerprint of the firewall ``state`` wants."""
    return fingerprint(firewall_spec(state))


def without_link(observed: Observed, ifname: str) -> Observed:
    links = dict(observed.links)
    del links[ifname]
    return dataclasses.replace(observed, links=links)


def with_container(observed: Observed, name: str, state: ContainerState) -> Observed:
    return dataclasses.replace(observed, containers={**observed.containers, name: state})


def with_link(observed: Observed, link: ObservedLink) -> Observed:
    return dataclasses.replace(observed, links={**observed.links, link.ifname: link})


# -- from nothing, and at rest -------------------------------------------------------------------


def test_empty_host_gets_everything_in_order() -> None:
    assert plan(desired(WEB, DB), Observed()) == [
        EnableForwarding(),
        EnsureBridge(FRONT),
        SyncFirewall(firewall_spec(desired(WEB, DB))),
        SetupContainer(DB, FRONT, netns=True, attach=True, start=True, stop_first=False),
        SetupContainer(WEB, FRONT, netns=True, attach=True, start=True, stop_first=False),
    ]


def test_matching_host_needs_nothing() -> None:
    assert plan(desired(WEB, DB), matching(WEB, DB)) == []


def test_nothing_desired_and_nothing_there_needs_nothing() -> None:
    assert plan(DesiredState(synced=True), Observed()) == []


# -- drift: each produces exactly its repair --------------------------------------------------


def test_bridge_that_lost_its_address_is_ensured_again() -> None:
    observed = with_link(matching(WEB, DB), dataclasses.replace(bridge_link(), addresses=()))
    assert plan(desired(WEB, DB), observed) == [EnsureBridge(FRONT)]


@pytest.mark.parametrize("change", [
    {"up": False}, {"mtu": 9000}, {"kind": "dummy"}, {"alias": "sdnctl:net/other"},
    {"addresses": ("10.88.0.1/24", "10.99.0.1/24")},
])
def test_any_bridge_drift_is_repaired(change: dict[str, Any]) -> None:
    observed = with_link(matching(WEB), dataclasses.replace(bridge_link(), **change))
    assert plan(desired(WEB), observed) == [EnsureBridge(FRONT)]


def test_missing_bridge_is_ensured() -> None:
    observed = without_link(matching(WEB), bridge_name("front"))
    assert plan(desired(WEB), observed) == [EnsureBridge(FRONT)]


def test_missing_veth_is_attached_again_without_touching_netns_or_process() -> None:
    observed = without_link(matching(WEB, DB), veth_name("web", "eth0"))
    assert plan(desired(WEB, DB), observed) == [
        SetupContainer(WEB, FRONT, netns=False, attach=True, start=False, stop_first=False),
    ]


def test_container_address_lost_inside_its_namespace_is_attached_again() -> None:
    state = running(WEB)
    assert state.net is not None
    broken = dataclasses.replace(state, net=dataclasses.replace(state.net, addresses=()))
    observed = with_container(matching(WEB), "web", broken)
    assert plan(desired(WEB), observed) == [
        SetupContainer(WEB, FRONT, netns=False, attach=True, start=False, stop_first=False),
    ]


def test_lost_netns_is_rebuilt_whole() -> None:
    gone = ContainerState(netns=False, net=None, started=True, running=False,
                          spec=WEB.spec_hash())
    observed = with_container(matching(WEB), "web", gone)
    assert plan(desired(WEB), observed) == [
        SetupContainer(WEB, FRONT, netns=True, attach=True, start=False, stop_first=False),
    ]


def test_exited_process_stays_exited() -> None:
    exited = dataclasses.replace(running(WEB), running=False)
    observed = with_container(matching(WEB, DB), "web", exited)
    assert plan(desired(WEB, DB), observed) == []


def test_never_started_process_is_started() -> None:
    created = dataclasses.replace(running(WEB), started=False, running=False, spec="")
    observed = with_container(matching(WEB), "web", created)
    assert plan(desired(WEB), observed) == [
        SetupContainer(WEB, FRONT, netns=False, attach=False, start=True, stop_first=False),
    ]


def test_spec_changed_while_running_restarts() -> None:
    outdated = dataclasses.replace(running(WEB), spec="0123456789abcdef")
    observed = with_container(matching(WEB, DB), "web", outdated)
    assert plan(desired(WEB, DB), observed) == [
        SetupContainer(WEB, FRONT, netns=False, attach=False, start=True, stop_first=True),
    ]


def test_spec_changed_after_exit_starts_without_stopping() -> None:
    outdated = dataclasses.replace(running(WEB), spec="0123456789abcdef", running=False)
    observed = with_container(matching(WEB), "web", outdated)
    assert plan(desired(WEB), observed) == [
        SetupContainer(WEB, FRONT, netns=False, attach=False, start=True, stop_first=False),
    ]


def test_command_change_changes_the_spec_hash() -> None:
    assert dataclasses.replace(WEB, command=("sleep", "1")).spec_hash() != WEB.spec_hash()
    assert dataclasses.replace(WEB, ip="10.88.0.9").spec_hash() == WEB.spec_hash()


def test_container_no_longer_desired_is_removed_with_its_veth() -> None:
    # RemoveContainer drops the namespace and the veth pair goes with it: no RemoveLink.
    assert plan(desired(WEB), matching(WEB, DB)) == [
        RemoveContainer("db", stop=True, addresses=(DB.address_cidr,)),
        SyncFirewall(firewall_spec(desired(WEB))),  # db's anti-spoofing rules go
    ]


def test_veth_of_a_container_without_namespace_is_removed() -> None:
    # The namespace is gone but the host end of its veth is still there: remove the link.
    observed = matching(WEB, DB)
    no_netns = dataclasses.replace(observed.containers["db"], netns=False, net=None)
    observed = with_container(observed, "db", no_netns)
    assert plan(desired(WEB), observed) == [
        RemoveContainer("db", stop=True),
        SyncFirewall(firewall_spec(desired(WEB))),
        RemoveLink(veth_name("db", "eth0")),
    ]


def test_exited_container_no_longer_desired_is_removed_without_stop() -> None:
    exited = dataclasses.replace(running(DB), running=False)
    observed = with_container(matching(WEB), "db", exited)  # its veth is gone already
    assert plan(desired(WEB), observed) == [
        RemoveContainer("db", stop=False, addresses=(DB.address_cidr,))]


def test_owned_link_nobody_wants_is_removed() -> None:
    stray = ObservedLink(ifname="sdnb00000000", index=99, kind="bridge",
                         alias="sdnctl:net/old", master=None, mtu=1500, up=True, addresses=())
    observed = with_link(matching(WEB), stray)
    assert plan(desired(WEB), observed) == [RemoveLink("sdnb00000000")]


@pytest.mark.parametrize("alias", [None, "", "docker0", "sdnctl"])
def test_link_without_our_alias_is_never_removed(alias: str | None) -> None:
    foreign = ObservedLink(ifname="sdnb11111111", index=98, kind="bridge", alias=alias,
                           master=None, mtu=1500, up=True, addresses=())
    observed = with_link(matching(WEB), foreign)
    assert plan(desired(WEB), observed) == []


def test_before_the_first_snapshot_nothing_is_removed() -> None:
    stray = ObservedLink(ifname="sdnb00000000", index=99, kind="bridge",
                         alias="sdnctl:net/old", master=None, mtu=1500, up=True, addresses=())
    observed = with_link(matching(WEB, DB), stray)
    observed = dataclasses.replace(observed, firewall="stale")
    assert plan(DesiredState(synced=False), observed) == []
    # Once synced, the same inputs do remove (so the line above is not vacuous).
    assert plan(DesiredState(synced=True), observed) == [
        RemoveContainer("db", stop=True, addresses=(DB.address_cidr,)),
        RemoveContainer("web", stop=True, addresses=(WEB.address_cidr,)),
        SyncFirewall(firewall_spec(DesiredState(synced=True))),
        *(RemoveLink(name) for name in sorted(["sdnb00000000", bridge_name("front")])),
    ]


def test_unsynced_desired_state_still_builds_what_it_knows() -> None:
    assert plan(desired(WEB, synced=False), Observed()) == [
        EnableForwarding(),
        EnsureBridge(FRONT),
        SetupContainer(WEB, FRONT, netns=True, attach=True, start=True, stop_first=False),
    ]


def test_stale_firewall_is_synced() -> None:
    observed = dataclasses.replace(matching(WEB), firewall="fw-0")
    assert plan(desired(WEB), observed) == [SyncFirewall(firewall_spec(desired(WEB)))]


def test_firewall_follows_whether_conntrack_sees_bridged_frames() -> None:
    """br_netfilter turned on (or off) under a running host: the tables are written again,
    without (or with) the bridge table's own flow counting."""
    tracked = dataclasses.replace(matching(WEB), bridged_tracked=True)
    assert plan(desired(WEB), tracked) == [SyncFirewall(firewall_spec(desired(WEB), True))]
    assert firewall_spec(desired(WEB), True).bridged_tracked
    installed = dataclasses.replace(tracked, firewall=fingerprint(firewall_spec(desired(WEB),
                                                                                True)))
    assert plan(desired(WEB), installed) == []


def test_container_without_address_or_network_waits() -> None:
    no_ip = dataclasses.replace(WEB, ip="")
    elsewhere = dataclasses.replace(DB, network="back")
    assert plan(desired(no_ip, elsewhere), matching()) == []


# -- DesiredState.apply ------------------------------------------------------------------------


def host_network_pb(name: str, subnet: str, gateway: str, mtu: int = 1500) -> pb.HostNetwork:
    return pb.HostNetwork(
        network=pb.Network(name=name, driver="bridge", subnet="10.0.0.0/8", mtu=mtu,
                           masquerade=False),
        lease=pb.Lease(network=name, host="h1", subnet=subnet, gateway=gateway))


def container_pb(name: str, ip: str, network: str = "front") -> pb.Container:
    return pb.Container(name=name, host="h1", network=network, command=["sleep", "infinity"],
                        interface="eth0", ip=ip, prefixlen=24, gateway="10.88.0.1")


def test_snapshot_replaces_everything() -> None:
    state = DesiredState(revision=3, networks={"old": FRONT}, containers={"old": WEB})
    changed = state.apply(pb.WatchEvent(
        revision=5, snapshot=True, networks=[host_network_pb("front", "10.88.0.0/24", "10.88.0.1")],
        containers=[container_pb("web", "10.88.0.2")]))
    assert changed == Changed.HOST
    assert state.synced is True
    assert state.revision == 5
    assert state.networks == {"front": DesiredNetwork(
        name="front", driver="bridge", subnet="10.88.0.0/24", gateway="10.88.0.1", prefixlen=24,
        mtu=1500, masquerade=False, cidr="10.0.0.0/8")}
    assert state.containers == {"web": WEB}


def test_snapshot_identical_to_what_is_known_changes_nothing_once_synced() -> None:
    event = pb.WatchEvent(revision=5, snapshot=True,
                          containers=[container_pb("web", "10.88.0.2")])
    state = DesiredState()
    assert state.apply(event) == Changed.HOST
    assert not state.apply(event)


def test_first_empty_snapshot_is_a_change() -> None:
    state = DesiredState()
    assert state.apply(pb.WatchEvent(revision=1, snapshot=True)) == Changed.HOST
    assert state.synced is True


def test_delta_adds_changes_and_deletes() -> None:
    state = DesiredState(revision=5, synced=True, networks={"front": FRONT},
                         containers={"web": WEB, "db": DB})
    changed = state.apply(pb.WatchEvent(
        revision=8, containers=[container_pb("web", "10.88.0.9"), container_pb("app", "10.88.0.4")],
        deleted_containers=["db"]))
    assert changed == Changed.HOST
    assert state.revision == 8
    assert sorted(state.containers) == ["app", "web"]
    assert state.containers["web"].ip == "10.88.0.9"
    assert state.networks == {"front": FRONT}
    assert state.synced is True

    assert state.apply(pb.WatchEvent(revision=9, deleted_networks=["front"])) == Changed.HOST
    assert state.networks == {}
    assert state.revision == 9


def test_delta_deleting_what_is_unknown_is_no_change() -> None:
    state = DesiredState(revision=5, synced=True, containers={"web": WEB})
    assert not state.apply(pb.WatchEvent(revision=6, deleted_containers=["ghost"]))
    assert state.containers == {"web": WEB}
    assert state.revision == 6


def test_delta_repeating_known_values_is_no_change() -> None:
    state = DesiredState(revision=5, synced=True, containers={"web": WEB})
    assert not state.apply(pb.WatchEvent(revision=6,
                                         containers=[container_pb("web", "10.88.0.2")]))


def test_progress_notice_moves_the_revision_only() -> None:
    state = DesiredState(revision=5, synced=True, containers={"web": WEB})
    assert not state.apply(pb.WatchEvent(revision=12))
    assert state.revision == 12
    assert state.containers == {"web": WEB}


def test_delta_never_moves_the_revision_back_but_a_snapshot_does() -> None:
    state = DesiredState(revision=10, synced=True)
    state.apply(pb.WatchEvent(revision=4, containers=[container_pb("web", "10.88.0.2")]))
    assert state.revision == 10
    state.apply(pb.WatchEvent(revision=4, snapshot=True))
    assert state.revision == 4
    assert state.containers == {}


def test_delta_before_any_snapshot_does_not_mark_synced() -> None:
    state = DesiredState()
    assert state.apply(pb.WatchEvent(revision=2, containers=[container_pb("web", "10.88.0.2")]))
    assert state.synced is False


def test_copy_is_independent() -> None:
    state = DesiredState(revision=5, synced=True, containers={"web": WEB})
    copy = state.copy()
    state.apply(pb.WatchEvent(revision=6, deleted_containers=["web"]))
    assert copy.containers == {"web": WEB}
    assert copy.revision == 5


# -- network modes ---------------------------------------------------------------------------------

VAULT = DesiredContainer(name="vault", network="none", command=("sleep", "infinity"))
PROBE = DesiredContainer(name="probe", network="host", command=("sleep", "infinity"))
AAA_SIDE = DesiredContainer(name="aaa-side", network="container:web",
                            command=("sleep", "infinity"), share=("uts",))


def test_closed_gets_a_sandbox_and_no_link() -> None:
    # a closed container adds no firewall rule: the table stays as it is
    assert plan(desired(VAULT), matching()) == [
        SetupContainer(VAULT, None, netns=True, attach=False, start=True, stop_first=False),
    ]


def test_open_gets_no_sandbox() -> None:
    actions = plan(desired(PROBE), matching())
    assert actions == [SetupContainer(PROBE, None, netns=False, attach=False, start=True,
                                      stop_first=False)]


def test_joined_waits_for_its_donor_then_comes_after_it() -> None:
    assert plan(desired(AAA_SIDE), matching()) == []  # no donor on this host (yet)
    actions = plan(desired(WEB, AAA_SIDE), Observed(ip_forward=True))
    setups = [a for a in actions if isinstance(a, SetupContainer)]
    assert [a.container.name for a in setups] == ["web", "aaa-side"]  # donor first
    assert setups[1] == SetupContainer(AAA_SIDE, None, netns=False, attach=False, start=True,
                                       stop_first=False)


def test_mode_change_to_host_drops_the_sandbox_and_restarts() -> None:
    moved = dataclasses.replace(WEB, network="host", ip="", prefixlen=0, gateway="")
    actions = plan(desired(moved), matching(WEB))
    assert SetupContainer(moved, None, netns=False, attach=False, start=True, stop_first=True,
                          drop_sandbox=True) in actions
    assert RemoveLink(veth_name("web", "eth0")) in actions  # its veth is no longer wanted


def test_restart_policy_waits_then_restarts() -> None:
    always = dataclasses.replace(WEB, restart="always")
    exited = dataclasses.replace(running(always), running=False, started_at=100.0)
    observed = with_container(matching(always), "web", exited)
    assert plan(desired(always), observed, now=100.5) == []  # too soon
    assert restart_pending(desired(always), observed)
    assert plan(desired(always), observed, now=101.5) == [
        SetupContainer(always, FRONT, netns=False, attach=False, start=True, stop_first=False)]
    # "no": an exited process stays exited, however long ago
    assert plan(desired(WEB), with_container(matching(WEB), "web", dataclasses.replace(
        exited, spec=WEB.spec_hash())), now=1e9) == []


def test_on_failure_restarts_only_a_failed_or_unseen_exit() -> None:
    policy = dataclasses.replace(WEB, restart="on-failure")
    base = dataclasses.replace(running(policy), running=False, started_at=100.0)
    for code, restarts in ((0, False), (3, True), (137, True), (None, True)):
        observed = with_container(matching(policy), "web",
                                  dataclasses.replace(base, exit_code=code))
        assert restart_pending(desired(policy), observed) is restarts
        assert bool(plan(desired(policy), observed, now=200.0)) is restarts


def test_stop_stops_and_keeps_the_sandbox_start_runs_it_again() -> None:
    stopped = dataclasses.replace(WEB, stopped=True, restart="always")
    assert plan(desired(stopped), matching(stopped)) == [
        SetupContainer(stopped, FRONT, netns=False, attach=False, start=False, stop_first=True)]
    exited = dataclasses.replace(running(stopped), running=False, started_at=1.0)
    observed = with_container(matching(stopped), "web", exited)
    assert plan(desired(stopped), observed, now=1e9) == []  # no restart policy while stopped
    assert not restart_pending(desired(stopped), observed)
    again = dataclasses.replace(WEB, generation=1)  # `sdnctl start`: a new generation
    assert plan(desired(again), with_container(matching(WEB), "web", dataclasses.replace(
        exited, spec=WEB.spec_hash())), now=2.0) == [
        SetupContainer(again, FRONT, netns=False, attach=False, start=True, stop_first=False)]


def test_spec_hash_covers_what_the_runtime_is_given() -> None:
    hashes = {dataclasses.replace(WEB, **{k: v}).spec_hash() for k, v in (
        ("image_id", "sha256:" + "1" * 64), ("memory", 1 << 26), ("cpus", 0.5),
        ("volumes", ("a:/a",)), ("cap_add", ("NET_RAW",)), ("user_ns", "private"),
        ("env", ("A=1",)), ("workdir", "/srv"), ("pids_limit", 9))}
    assert len(hashes | {WEB.spec_hash()}) == 10
    assert dataclasses.replace(WEB, stopped=True).spec_hash() == WEB.spec_hash()


def test_firewall_spec_guards_bridged_containers_and_allows_known_pairs() -> None:
    back = DesiredNetwork(name="back", driver="bridge", subnet="10.89.0.0/24",
                          gateway="10.89.0.1", prefixlen=24, mtu=1500, masquerade=True,
                          allow=("front", "elsewhere"))
    web = dataclasses.replace(WEB, ports=(parse_port("8080:80", "p"),))
    state = DesiredState(revision=1, synced=True, networks={"front": FRONT, "back": back},
                         containers={c.name: c for c in (web, VAULT, PROBE)})
    spec = firewall_spec(state)
    assert spec.allowed == (("back", "front"),)  # "elsewhere" is not on this host
    assert [g.container for g in spec.guards] == ["web"]
    assert spec.guards[0].mac == container_mac(WEB.ip)
    assert [(p.container, p.host_port, p.container_port) for p in spec.ports] == [
        ("web", 8080, 80)]


# -- CNI attachments (issue 17) ------------------------------------------------------------------

ATT = dataclasses.replace(WEB, name="cni-0123456789abcdef", cni_id="abc",
                          cni_netns="/run/netns/cni-x")


def attached(state: ContainerState) -> ContainerState:
    """An attachment as observed: its namespace is the runtime's, no process of ours."""
    return dataclasses.replace(state, started=False, running=False, spec="", pid=0)


def test_attachment_gets_only_its_veth() -> None:
    observed = dataclasses.replace(matching(), firewall=fw(desired(ATT)))
    observed = with_container(observed, ATT.name, attached(dataclasses.replace(
        running(ATT), net=None)))
    (action,) = [a for a in plan(desired(ATT), observed) if isinstance(a, SetupContainer)]
    assert (action.netns, action.attach, action.start, action.stop_first,
            action.drop_sandbox) == (False, True, False, False, False)


def test_attached_attachment_needs_nothing_and_is_repaired_on_drift() -> None:
    observed = dataclasses.replace(matching(ATT), containers={ATT.name: attached(running(ATT))})
    assert plan(desired(ATT), observed) == []
    drifted = with_container(observed, ATT.name, attached(dataclasses.replace(
        running(ATT), net=dataclasses.replace(running(ATT).net, addresses=()))))
    (action,) = plan(desired(ATT), drifted)
    assert isinstance(action, SetupContainer) and action.attach and not action.start


def test_attachment_whose_namespace_is_gone_is_left_to_the_cni_service() -> None:
    observed = dataclasses.replace(matching(ATT), containers={ATT.name: ContainerState(
        netns=False, net=None, started=False, running=False, spec="")})
    observed = without_link(observed, veth_name(ATT.name, "eth0"))
    assert plan(desired(ATT), observed) == []


# -- Docker endpoints (issue 18) -------------------------------------------------------------------

DOCKER_EP = DesiredContainer(name="dk-1", network="front", command=(), interface="eth0",
                             ip="10.88.0.9", prefixlen=24, gateway="10.88.0.1", cni_id="dk-1",
                             cni_netns="/run/docker/sdnctl-endpoint", cni_docker=True)


def docker_observed() -> Observed:
    """A joined endpoint: its host side in the bridge; its sandbox is out of our sight."""
    observed = matching()
    observed = with_link(observed, veth_link(DOCKER_EP, 30))
    return dataclasses.replace(observed, firewall=fw(desired(DOCKER_EP)))


def test_a_joined_docker_endpoint_needs_nothing() -> None:
    assert plan(desired(DOCKER_EP), docker_observed()) == []


def test_a_docker_endpoint_before_join_is_left_to_the_plugin() -> None:
    observed = without_link(docker_observed(), veth_name("dk-1", "eth0"))
    assert plan(desired(DOCKER_EP), observed) == []  # no veth of the reconciler's making


@pytest.mark.parametrize("change", [{"master": None}, {"up": False}, {"mtu": 1400}])
def test_docker_endpoint_host_side_drift_is_repaired(change: dict[str, Any]) -> None:
    drifted = dataclasses.replace(veth_link(DOCKER_EP, 30), **change)
    actions = plan(desired(DOCKER_EP), with_link(docker_observed(), drifted))
    assert actions == [SetupContainer(DOCKER_EP, FRONT, netns=False, attach=True, start=False,
                                      stop_first=False)]
