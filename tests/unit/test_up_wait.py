"""`up`'s wait for its containers (``deploy.wait_running``), against a small fake of the API: it
asks ListHosts each round and lists a host's containers only once that host's agent is synced,
reported them all and realised the revision `up` wrote; it never lists every container (issue
21: at 100 x 10 those listings took the CPU the agents needed), fails at once on a container in
error, and names what it still waits for at its deadline. Between polls it waits on a host whose
agent has yet to realise that revision (WaitHost answers when the agent reports), and sleeps
otherwise."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest

from sdnctl.api import wire
from sdnctl.api.model import STATE_ERROR, STATE_RUNNING
from sdnctl.topology import deploy
from sdnctl.topology.topology import parse
from sdnctl.v1 import sdnctl_pb2 as pb

TOPOLOGY = parse("""\
name: w
hosts:
  - {name: h1, lab: true}
  - {name: h2, lab: true}
  - {name: h3, lab: true}
networks:
  - {name: n, subnet: 10.9.0.0/16}
containers:
  - {name: a, host: h1, network: n, command: [sleep, "9"]}
  - {name: b, host: h1, network: n, command: [sleep, "9"]}
  - {name: c, host: h2, network: n, command: [sleep, "9"]}
""")
REVISION = 40


@dataclass
class FakeApi:
    """Hosts and container states that change as the test says, one poll after another."""

    hosts: dict[str, pb.Host] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)  # container -> state
    calls: list[str] = field(default_factory=list)
    on_poll: list[dict[str, object]] = field(default_factory=list)  # changes per ListHosts
    wait_code: wire.StatusCode | None = None  # what WaitHost answers with, if not a host

    def WaitHost(self, request: pb.WaitHostRequest, timeout: float) -> pb.Host:
        self.calls.append(f"wait:{request.name}")
        assert request.revision == REVISION and 0 < request.timeout_ms <= 100
        if self.wait_code is not None:
            raise wire.RpcError(self.wait_code, "")
        return self.hosts[request.name]

    def ListHosts(self, request: pb.ListRequest, timeout: float) -> pb.ListHostsResponse:
        if self.on_poll:
            for name, value in self.on_poll.pop(0).items():
                if isinstance(value, pb.Host):
                    self.hosts[name] = value
                else:
                    self.states[name] = str(value)
        self.calls.append("hosts")
        return pb.ListHostsResponse(hosts=list(self.hosts.values()))

    def ListContainers(self, request: pb.ListRequest,
                       timeout: float) -> pb.ListContainersResponse:
        self.calls.append(f"containers:{request.host}")
        assert request.host, "a listing of every container"
        return pb.ListContainersResponse(containers=[
            pb.Container(name=c.name, host=c.host, status=pb.ContainerStatus(
                state=self.states.get(c.name, "")))
            for c in TOPOLOGY.containers if c.host == request.host])


@dataclass
class FakeClient:
    api: FakeApi


def synced(name: str, reported: tuple[str, ...], revision: int = REVISION,
           connected: bool = True) -> pb.Host:
    return pb.Host(name=name, agent_connected=connected, agent_synced=connected,
                   reported_containers=list(reported), observed_revision=revision)


def wait(api: FakeApi, timeout: float = 5.0) -> str:
    out = io.StringIO()
    deploy.wait_running(FakeClient(api), TOPOLOGY, REVISION, timeout,  # type: ignore[arg-type]
                        deploy.Progress(out))
    return out.getvalue()


def test_each_host_is_listed_once_it_is_synced_and_never_every_container() -> None:
    api = FakeApi(on_poll=[
        # h1's agent is behind: its containers are not asked for
        {"h1": synced("h1", ("a", "b"), revision=REVISION - 1), "h2": synced("h2", ()),
         "h3": synced("h3", ())},
        # h2 reported c and realised the revision: listed (running)
        {"h2": synced("h2", ("c",)), "c": STATE_RUNNING},
        # h1 caught up, but b is still starting: listed again at the next poll
        {"h1": synced("h1", ("a", "b")), "a": STATE_RUNNING},
        {"b": STATE_RUNNING},
    ])
    out = wait(api)
    assert api.calls == ["hosts",  # h3 (nothing of ours) is done at once
                         "wait:h1",  # the pause: until h1's agent realises the revision
                         "hosts", "containers:h2", "wait:h1",
                         "hosts", "containers:h1",  # (b is starting: a sleep, no wait)
                         "hosts", "containers:h1"]
    assert out.splitlines()[-1].strip() == "containers running: 3/3"


@pytest.mark.parametrize("code", [wire.StatusCode.UNIMPLEMENTED, wire.StatusCode.NOT_FOUND])
def test_without_a_wait_on_the_controller_it_sleeps_between_polls(code: wire.StatusCode) -> None:
    api = FakeApi(wait_code=code, on_poll=[
        {"h1": synced("h1", ("a", "b"), revision=REVISION - 1), "h2": synced("h2", ("c",)),
         "h3": synced("h3", ()), "c": STATE_RUNNING},
        {"h1": synced("h1", ("a", "b")), "a": STATE_RUNNING, "b": STATE_RUNNING}])
    wait(api)
    assert api.calls == ["hosts", "containers:h2", "wait:h1", "hosts", "containers:h1"]


def test_no_wait_on_a_host_without_an_agent_or_one_that_realised_the_revision() -> None:
    """WaitHost answers at once for those: waiting on them would poll without a pause."""
    api = FakeApi(hosts={"h1": synced("h1", ("a", "b")), "h2": synced("h2", (), connected=False),
                         "h3": synced("h3", ())},
                  states={"a": STATE_RUNNING, "b": "created"})
    with pytest.raises(deploy.DeployError):
        wait(api, timeout=0.2)
    assert not [c for c in api.calls if c.startswith("wait:")]
    assert 3 <= api.calls.count("hosts") <= 12  # paused between polls (5 ms growing to 100)


def test_a_container_in_error_fails_at_once_naming_it() -> None:
    api = FakeApi(on_poll=[{"h1": synced("h1", ("a", "b")), "h2": synced("h2", ("c",)),
                            "h3": synced("h3", ()), "a": STATE_RUNNING, "b": STATE_ERROR,
                            "c": STATE_RUNNING}])
    with pytest.raises(deploy.DeployError, match="not every container runs: b: error"):
        wait(api)
    assert len([c for c in api.calls if c == "hosts"]) == 1


def test_at_the_deadline_it_names_what_does_not_run_or_which_agent_is_behind() -> None:
    behind = FakeApi(hosts={"h1": synced("h1", ("a", "b")), "h2": synced("h2", ("c",), 1),
                            "h3": synced("h3", ())},
                     states={"a": STATE_RUNNING, "b": STATE_RUNNING, "c": STATE_RUNNING})
    with pytest.raises(deploy.DeployError, match=r"realised what `up` wrote \(revision 40\): "
                                                 r"h2$"):
        wait(behind, timeout=0.05)
    # a host without an agent: its containers cannot run, and are named
    no_agent = FakeApi(hosts={"h1": synced("h1", ("a", "b")),
                              "h2": synced("h2", (), connected=False),
                              "h3": synced("h3", (), connected=False)},
                       states={"a": STATE_RUNNING, "b": STATE_RUNNING})
    with pytest.raises(deploy.DeployError, match=r"not every container runs: c: pending$"):
        wait(no_agent, timeout=0.05)


def test_down_waits_for_agents_with_one_listing_a_round() -> None:
    """`down`'s wait for the agents to remove what it deleted: one ListHosts a round (a GetHost
    per host was 100 calls every 0.1 s at 100 hosts); a host gone or without an agent is not
    waited for."""
    api = FakeApi(hosts={"h1": synced("h1", (), revision=5), "h2": synced("h2", (), revision=5),
                         "h3": synced("h3", (), connected=False)},
                  on_poll=[{}, {"h1": synced("h1", (), revision=REVISION)}])
    client: Any = FakeClient(api)
    deploy.wait_agents_caught_up(client, {"h1": REVISION, "h3": REVISION, "h9": REVISION},
                                 deploy.Progress(io.StringIO()))
    assert api.calls == ["hosts", "hosts"]
