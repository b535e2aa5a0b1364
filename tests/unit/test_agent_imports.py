"""What an agent process loads (issue 21: memory per agent): not the PKI's ``cryptography``
(~9 MB), which only issuing and checking certificates needs (the agent reads its TLS files
through ``sdnctl.api.tlsfiles``); not pyroute2 (~10 MB with its asyncio sockets: the agent's
netlink is ``agent/kernel/rtnl.py``), nor prometheus_client (its metrics are
``sdnctl/api/metrics.py``), nor netaddr (2.3 MB with what it imports: the agent checks names,
ports and volumes with ``sdnctl.api.fields``; CIDRs and addresses are ``addrfields``'), nor
grpcio (its core, ~9 MB: the agent speaks gRPC through ``sdnctl.api.wire``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

NOT_LOADED = ("cryptography", "pyroute2", "prometheus_client", "netaddr", "grpc")


@pytest.mark.parametrize("package", NOT_LOADED)
def test_the_agent_does_not_load(package: str) -> None:
    probe = ("import sys, agent.main, agent.forkserver; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] == {package!r}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_probe_sees_what_a_module_loads() -> None:
    control = subprocess.run([sys.executable, "-c", "import sys, sdnctl.api.pki, "
                              "pyroute2, prometheus_client, sdnctl.api.validate, grpc; "
                              f"print(all(p in sys.modules for p in {NOT_LOADED!r}))"],
                             capture_output=True, text=True, check=True)
    assert control.stdout.strip() == "True"


def test_an_agent_forked_from_the_server_imports_nothing_to_open_its_channel() -> None:
    """The fork server imports what an agent would only import once it runs (its helpers'
    thread pool, the IDNA codec): 100 children importing them again cost 0.6 s of CPU in a
    lab's start. Opening the agent's channel and calling on it loads nothing more."""
    probe = ("import sys, agent.forkserver; from sdnctl.api import wire; "
             "import concurrent.futures; before = set(sys.modules); "
             "channel = wire.open_channel('unix:/nonexistent', None); "
             "stub = wire.Stub(channel, agent.main.HOSTSYNC)\n"
             "try:\n stub.Register(agent.main.pb.RegisterRequest(), timeout=1)\n"
             "except wire.RpcError as e:\n assert e.code() is wire.StatusCode.UNAVAILABLE\n"
             "channel.close(); concurrent.futures.ThreadPoolExecutor(1).shutdown(); "
             "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
    control = subprocess.run([sys.executable, "-c", probe.replace(
        "import sys, agent.forkserver;", "import sys, agent.main;")],
        capture_output=True, text=True, check=True)
    assert "concurrent.futures.thread" in control.stdout  # the probe sees what is loaded
