"""`sdnctl up --dry-run` checks the whole file against the controller's rules (ValidateTopology)
and fails naming the file and line of the object refused: with no controller (the rules run in
the CLI, nothing is started or written), and with a running one that holds other objects (it is
asked, and its store is left as it was). `up` itself, which builds lab hosts, is tested the same
way in tests/netns/test_up_check_lab.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from apitest import Api, StartServer, connect, keyspace
from imagehelp import file, save_archive, tar_bytes

from sdnctl.api import paths
from sdnctl.api.client import Client
from sdnctl.api.model import Container, Host, Network, PolicyPeer, PolicyRule
from sdnctl.cli import cli
from sdnctl.controller.state import State
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore
from sdnctl.topology import deploy
from sdnctl.topology.topology import Topology, TopologyError, load

TOPOLOGY = """\
name: chk
hosts:
  - {name: h1, lab: true}
networks:
  - {name: front, subnet: 10.61.0.0/16}
  - {name: tiny, subnet: 10.62.0.0/24, host_prefix: 30}
containers:
  - {name: c1, host: h1, network: front, ports: ["8080:80"]}
  - {name: c2, host: h1, network: front, ports: ["8081:80"]}
  - {name: c3, host: h1, network: tiny}
"""

#: (id, text replaced, by, line, the path the error names)
CASES = [
    ("port-clash", '"8081:80"', '"8080:80"', 9, "containers[1].ports[0]"),
    ("fixed-ip-is-the-gateway", "network: tiny}", "network: tiny, ip: 10.62.0.1}", 10,
     "containers[2].ip"),
    ("more-than-a-slash-30-holds", "  - {name: c3, host: h1, network: tiny}\n",
     "  - {name: c3, host: h1, network: tiny}\n  - {name: c4, host: h1, network: tiny}\n", 11,
     "containers[3]"),
    ("subnet-holds-an-underlay-address", "10.61.0.0/16", "192.0.2.0/24", 5, "networks[0].subnet"),
    ("outside-world", "10.62.0.0/24", "203.0.113.0/24", 6, "networks[1].subnet"),
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run and state directories of this test's own; no controller answers there."""
    monkeypatch.setenv("SDNCTL_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("SDNCTL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("SDNCTL_CONTROLLER", raising=False)
    return tmp_path


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chk.yaml"
    path.write_text(text)
    return str(path)


def dry_run(path: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["up", "--dry-run", path])
    return code, capsys.readouterr().err


def nothing_made(tmp_path: Path) -> None:
    assert not (tmp_path / "run").exists(), "a dry run started or wrote something"
    assert not (tmp_path / "state").exists(), "a dry run made a controller database"


@pytest.mark.parametrize(("old", "new", "line", "path"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_dry_run_fails_naming_file_and_line(env: Path, capsys: pytest.CaptureFixture[str],
                                              old: str, new: str, line: int, path: str) -> None:
    good = write(env, TOPOLOGY)
    assert dry_run(good, capsys) == (0, "")  # control: the file as it is passes
    assert TOPOLOGY.count(old) == 1
    bad = write(env, TOPOLOGY.replace(old, new))
    code, err = dry_run(bad, capsys)
    assert code == 2, err
    assert f"{bad}:{line}: {path}: " in err, err
    nothing_made(env)


@pytest.fixture
def controller(env: Path, start_server: StartServer,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """A running controller (memory store) that `sdnctl` dials."""
    store = MemoryStore()
    server = start_server(store, default_bridge="172.17.0.0/16")
    monkeypatch.setenv("SDNCTL_CONTROLLER", server.address)
    with connect(server, store) as api:
        yield api


def test_a_dry_run_asks_the_running_controller_about_ports(
        env: Path, controller: Api, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(env, TOPOLOGY)
    controller.host("h1", underlay_ip="192.0.2.10", lab=True)
    controller.network("front", subnet="10.61.0.0/16")
    assert dry_run(path, capsys)[0] == 0  # control
    controller.container("c0", network="front", ports=["8080:80"])  # not in the file
    before = keyspace(controller.store)
    code, err = dry_run(path, capsys)
    assert code == 2, err
    assert f"{path}:8: containers[0].ports[0]: " in err and "'c0'" in err, err
    assert keyspace(controller.store) == before


def test_a_dry_run_asks_the_running_controller_about_underlay_addresses(
        env: Path, controller: Api, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(env, TOPOLOGY)
    controller.host("real", underlay_ip="10.60.0.5")
    assert dry_run(path, capsys)[0] == 0  # control: outside front
    controller.delete("Host", "real")
    controller.host("real", underlay_ip="10.61.0.5")
    before = keyspace(controller.store)
    code, err = dry_run(path, capsys)
    assert code == 2, err
    assert f"{path}:5: networks[0].subnet: " in err and "10.61.0.5" in err, err
    assert keyspace(controller.store) == before


def test_a_dry_run_takes_the_files_image_archives_as_loaded(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A container may name an image of the file's `images:` archives (read from the archive's
    manifest); an image nobody loads is refused at its line."""
    save_archive(env / "img.tar", [tar_bytes([file("hello", b"hi")])], tags=["chk-img:1"])
    text = TOPOLOGY.replace("network: tiny}", "network: tiny, image: 'chk-img:1'}")
    code, err = dry_run(write(env, text), capsys)
    assert code == 2 and "chk.yaml:10: containers[2].image: " in err, err
    assert dry_run(write(env, text + "images: [img.tar]\n"), capsys) == (0, "")
    nothing_made(env)


def test_without_a_controller_the_state_it_would_start_with_counts(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped controller's SQLite file is what the controller `up` starts serves: a dry run
    with none running reads it (and leaves it as it was)."""
    path = write(env, TOPOLOGY)
    store = SqliteStore(paths.controller_db())
    state = State(store)
    state.create_host(Host("h1", "192.0.2.10", lab=True))
    state.create_network(Network("front", "10.61.0.0/16"))
    assert dry_run(path, capsys)[0] == 0  # control
    state.create_container(Container("c0", "h1", "front", ports=("8080:80",)))
    before = keyspace(store)
    store.close()
    code, err = dry_run(path, capsys)
    assert code == 2, err
    assert f"{path}:8: containers[0].ports[0]: " in err and "'c0'" in err, err
    store = SqliteStore(paths.controller_db())
    assert keyspace(store) == before
    store.close()
    assert not (env / "run").exists()


POLICIES = """\
policies:
  - name: db-in
    network: front
    select: {app: db}
    ingress:
      - from:
          - cidr: 10.0.0.0/8
            except: [10.9.0.0/16]
        ports: [5432/tcp]
"""


def stricter(topology: Topology, **fields: object) -> Topology:
    """The file's topology with its policy changed as a client with laxer rules than its
    controller's would send it (the file's lines stay): only the controller can refuse it."""
    (p,) = topology.policies
    return dataclasses.replace(topology, policies=(dataclasses.replace(p, **fields),))


@pytest.mark.parametrize("served", [False, True], ids=["no-controller", "controller"])
def test_a_policy_the_controller_refuses_is_shown_at_its_line(
        env: Path, capsys: pytest.CaptureFixture[str], start_server: StartServer,
        monkeypatch: pytest.MonkeyPatch, served: bool) -> None:
    """ValidateTopology applies CreatePolicy's rules to `policies:`; the refusal names the file,
    the line and the policy's field (as the file calls it: from/to, except), nothing changes."""
    path = write(env, TOPOLOGY + POLICIES)
    topology = load(path)
    store = MemoryStore()
    client = None
    if served:
        server = start_server(store, default_bridge="172.17.0.0/16")
        client = Client(server.address)
    try:
        deploy.check(topology, client)  # control: the file as it is passes
        bad_except = PolicyPeer(cidr="10.0.0.0/8", excepts=("11.0.0.0/16",))
        cases = [
            (dict(ingress=(PolicyRule((bad_except,), ("5432/tcp",)),)), 18,
             "policies[0].ingress[0].from[0].except[0]", "not inside"),
            (dict(network="nowhere"), 13, "policies[0].network", "'nowhere'"),
            (dict(ingress=(PolicyRule((), ("5432/icmp",)),)), 19,
             "policies[0].ingress[0].ports[0]", "protocol"),
            (dict(select=("=x",)), 14, "policies[0].select", ""),
        ]
        before = keyspace(store)
        for fields, line, field, words in cases:
            with pytest.raises(TopologyError) as refused:
                deploy.check(stricter(topology, **fields), client)
            assert str(refused.value).startswith(f"{path}:{line}: {field}"), str(refused.value)
            assert words in str(refused.value)
        assert keyspace(store) == before
    finally:
        if client is not None:
            client.close()
    assert dry_run(path, capsys) == (0, "")  # and the CLI's dry run of the file passes
