"""The CLI's two entries: everyday verbs start without loading the heavy parts.

``sdnctl.main`` offers a command line to ``sdnctl.cli.everyday`` first; only other verbs load the
full CLI. What an entry imports is read from a fresh interpreter's ``sys.modules`` (no timing:
the list of modules is what makes it slow or fast, and it is exact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from apitest import StartServer, connect

from sdnctl.cli import base, cli, everyday
from sdnctl.controller.store.memory import MemoryStore

#: What loading the everyday entry must never pull in (each costs tens of ms or more; grpcio's
#: 47: the CLI speaks gRPC through sdnctl.api.wire).
HEAVY = ("grpc", "pyroute2", "cryptography", "jsonschema", "yaml", "prometheus_client",
         "sdnctl.topology", "sdnctl.controller", "sdnctl.cli.cli", "sdnctl.cli.graph",
         "sdnctl.api.pki", "agent.reconcile", "agent.kernel.links",
         # (each a few ms to ~15: what only some verbs need is imported inside them)
         "sdnctl.lab.local", "sdnctl.api.registry", "sdnctl.api.imagepull",
         "sdnctl.api.validate", "netaddr", "dnslib")

PROBE = """
import json, sys
from sdnctl.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def modules_after(*argv: str) -> tuple[str, list[str]]:
    """Run ``sdnctl ARGV`` in a fresh interpreter: its stdout and the modules it had loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


def loaded(modules: list[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


@pytest.mark.parametrize("verb", ["ps", "run", "rm", "exec", "network", "image", "inspect"])
def test_an_everyday_verb_loads_nothing_heavy(verb: str) -> None:
    out, modules = modules_after(verb, "--help")
    assert f"usage: sdnctl {verb}" in out  # its help came from the everyday entry
    assert [h for h in HEAVY if loaded(modules, h)] == []


def test_other_verbs_and_the_overview_go_to_the_full_cli() -> None:
    out, modules = modules_after("up", "--help")
    assert "usage: sdnctl up" in out and loaded(modules, "sdnctl.cli.cli")
    # (issue 21: pyroute2's import was 80 ms of every `up`; the lab speaks agent.kernel.rtnl;
    # jsonschema's 34: the topology schema has a validator of its own; cryptography's 20-30:
    # only the lab's registry and the pki verb need it, and import it when they run)
    assert loaded(modules, "sdnctl.lab.lab") and loaded(modules, "sdnctl.topology.schema")
    assert loaded(modules, "sdnctl.lab.registry")
    for heavy in ("pyroute2", "jsonschema", "cryptography", "sdnctl.api.pki"):
        assert not loaded(modules, heavy), heavy
    out, modules = modules_after("--help")
    assert "sdnctl up FILE" in out and loaded(modules, "sdnctl.cli.cli")


def test_the_full_cli_has_every_everyday_verb() -> None:
    full = cli.build_parser()
    choices = next(a.choices for a in full._actions if a.dest == "command")
    for verb in ("ps", "inspect", "ipam", "events", "run", "rm", "network", "image", "host"):
        assert verb in choices, verb
    assert everyday.main(["up", "x.yaml"]) is None  # not everyday's: it changes nothing


@pytest.mark.parametrize(("argv", "verb"), [
    (["ps"], "ps"),
    (["--controller", "unix:/x", "ps", "--json"], "ps"),
    (["--controller=unix:/x", "--tls-ca", "ca.pem", "run", "--name", "a"], "run"),
    (["--help"], ""),
    ([], ""),
])
def test_the_verb_is_the_first_word_that_is_no_global_option(argv: list[str], verb: str) -> None:
    assert base.verb_of(argv) == verb


def test_a_client_verb_leaves_at_once_with_its_output_and_its_status(
        start_server: StartServer) -> None:
    """``sdnctl`` (``sdnctl.main.entry``) ends a client verb's process without the interpreter's
    teardown: what the verb printed still reaches a pipe, whole, and its exit status is kept,
    0 or 1 (the error's line on stderr)."""
    store = MemoryStore()
    server = start_server(store)
    with connect(server, store) as api:
        for i in range(3):  # (a listing short enough to wait in stdout's buffer)
            api.network(f"n{i:02}", subnet=f"10.{i}.0.0/16")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # (buffered)
           "SDNCTL_CONTROLLER": server.address}
    argv = [sys.executable, "-m", "sdnctl.main"]
    done = subprocess.run([*argv, "network", "ls", "--json"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(n["name"] for n in json.loads(done.stdout)) == ["n00", "n01", "n02"]
    done = subprocess.run([*argv, "network", "inspect", "nosuch"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("sdnctl: ") and "nosuch" in done.stderr
