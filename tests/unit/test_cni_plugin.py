"""The CNI plugin's own part (issue 17), without an agent: environment and configuration
checks, VERSION, the error object on stdout, its light imports, and the agent's pure helpers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.cni import attachment_name, port_mappings, requested_ip
from sdnctl.cni import plugin
from sdnctl.cni.plugin import CniError

PLUGIN = Path(plugin.__file__)


def run_plugin(env: dict[str, str], stdin: bytes) -> tuple[int, Any, str]:
    done = subprocess.run([sys.executable, "-S", "-E", str(PLUGIN)], input=stdin, env=env,
                          capture_output=True, timeout=30, check=False)
    return done.returncode, json.loads(done.stdout or b"null"), done.stderr.decode()


def test_version_needs_no_agent_and_imports_nothing_heavy() -> None:
    """As installed (python -S -E on the file): no json, re, enum, socket.py, typing, nor any
    module of ours; the answer still right."""
    done = subprocess.run([sys.executable, "-S", "-E", "-X", "importtime", str(PLUGIN)],
                          input=b'{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, timeout=30, check=False)
    assert json.loads(done.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    heavy = {"json", "re", "enum", "socket", "typing", "grpc", "pyroute2", "sdnctl", "agent"}
    assert "_json" in imported and not imported & heavy, sorted(imported)


@pytest.mark.parametrize(("stdin", "env", "code"), [
    (b"{", {"CNI_COMMAND": "ADD"}, 6),
    (b'"x"', {"CNI_COMMAND": "ADD"}, 6),
    (b'{"cniVersion":"9.9.9","name":"n","type":"sdnctl"}', {"CNI_COMMAND": "ADD"}, 1),
    (b'{"cniVersion":"1.0.0","type":"sdnctl"}', {"CNI_COMMAND": "ADD"}, 7),
    (b'{"cniVersion":"1.0.0","name":"n","type":"sdnctl"}', {"CNI_COMMAND": "ADD"}, 4),
    (b'{"cniVersion":"1.0.0","name":"n","type":"sdnctl"}', {"CNI_COMMAND": "GC"}, 1),
    (b'{"cniVersion":"1.0.0","name":"n","type":"sdnctl"}', {}, 4),
])
def test_errors_are_the_spec_object_on_stdout(stdin: bytes, env: dict[str, str],
                                              code: int) -> None:
    rc, out, err = run_plugin(env, stdin)
    assert rc == 1 and out["code"] == code and out["msg"], out
    assert "Traceback" not in err


def test_missing_variables_are_named() -> None:
    with pytest.raises(CniError) as e:
        plugin.check_env("ADD", {"CNI_IFNAME": "eth0"})
    assert e.value.code == 4
    assert "CNI_CONTAINERID" in e.value.msg and "CNI_NETNS" in e.value.msg
    plugin.check_env("DEL", {"CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0", "CNI_PATH": "/p"})


def test_unreachable_agent_is_try_again_later() -> None:
    with pytest.raises(CniError) as e:
        plugin.call_agent("\0sdnctl-test-nobody-" + str(id(e)), {"command": "ADD"})
    assert e.value.code == 11


def test_agent_answers_pass_through() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address = f"\0sdnctl-test-{id(server)}"
    server.bind(address)
    server.listen(1)

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile("rb").readline())
            conn.sendall(json.dumps({"error": {"code": 7, "msg": request["command"]}}).encode())

    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(CniError) as e:
            plugin.call_agent(address, {"command": "CHECK"})
        assert (e.value.code, e.value.msg) == (7, "CHECK")
    finally:
        t.join()
        server.close()


def test_agent_helpers() -> None:
    assert attachment_name("abc", "eth0") == attachment_name("abc", "eth0")
    assert attachment_name("abc", "eth0") != attachment_name("abc", "eth1")
    assert attachment_name("a" * 64, "eth0").startswith("cni-")
    conf = {"runtimeConfig": {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
        {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        {"hostPort": 8081, "containerPort": 81, "hostIP": "::"}],
        "ips": ["10.1.2.3/24"]}}
    assert port_mappings(conf) == ["8080:80/tcp", "127.0.0.1:53:53/udp", "[::]:8081:81/tcp"]
    assert requested_ip(conf, "") == "10.1.2.3"
    assert requested_ip({}, "IgnoreUnknown=1;IP=10.9.9.9") == "10.9.9.9"
    assert requested_ip({}, "") == ""


@pytest.mark.parametrize("text", [
    '{"cniVersion": "1.0.0", "name": "n", "x": [1, -2.5e3, null, true, false, "\\u00e9\\n"]}',
    ' \n {"a": {}} \t', "[]", '"s"', "0"])
def test_the_light_codec_is_json(text: str) -> None:
    assert plugin.loads(text.encode()) == json.loads(text)
    value = json.loads(text)
    assert json.loads(plugin.dumps(value)) == value


@pytest.mark.parametrize("text", ["{", "{} x", "", "{'a': 1}", "[1,]", "NaNx"])
def test_the_light_codec_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        plugin.loads(text.encode())
