"""DNS service discovery end to end (issue 19): two lab hosts, an overlay with a domain, a
bridge network beside it, real clients inside containers (glibc's `getent hosts` and `dig` from
the host's root filesystem, busybox `nslookup` from the test image), and an upstream DNS server
running in the lab's outside world.

One topology is brought up once for the module through the real CLI. Every negative comes
after a positive control that proves the probe works.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import Cli, lab_cli, nsexec
from helpers.hoststate import stop_agent

from sdnctl.lab import lab

pytestmark = pytest.mark.netns

PY = sys.executable
UPSTREAM = str(Path(__file__).parent / "helpers" / "dns_upstream.py")

TOPOLOGY = f"""\
name: dns
hosts:
  - {{name: h1, lab: true}}
  - {{name: h2, lab: true}}
networks:
  - {{name: ov, driver: overlay, subnet: 10.71.0.0/16, dns_domain: svc.lab,
     dns: [{lab.EXTERNAL_IP}]}}
  - {{name: back, subnet: 10.72.0.0/16}}
containers:
  - {{name: web, host: h1, network: ov, aliases: [www]}}
  - {{name: bb, host: h1, network: ov, image: sdnctl-test, command: [sleep, "3600000"],
     cap_add: [NET_RAW]}}  # busybox ping opens a raw socket
  - {{name: api, host: h2, network: ov, aliases: [backend]}}
  - {{name: secret, host: h1, network: back, dns: [{lab.EXTERNAL_IP}]}}  # its own upstream
  - {{name: closed, host: h2, network: none}}
  - {{name: side, host: h1, network: "container:web"}}
expect:
  - {{from: web, to: backend}}
  - {{from: bb, to: api.svc.lab}}
  - {{from: api, to: www.svc.lab}}
"""


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, test_image: tuple[str, str]) -> Iterator[Cli]:
    prefix = "d" + secrets.token_hex(3)[:5]
    path = tmp_path_factory.mktemp("dns") / "dns.yaml"
    path.write_text(TOPOLOGY)
    with lab_cli(prefix) as c:
        c.run("up", str(path), "--image", test_image[0], "--timeout", "90")
        yield c


@pytest.fixture(scope="module")
def upstream(cli: Cli) -> Iterator[subprocess.Popen[str]]:
    """The upstream resolver, in the lab's outside world (203.0.113.1:53)."""
    ext = cli.host("h1")["netns"].rsplit("h1", 1)[0] + "ext"
    server = subprocess.Popen(["nsenter", f"--net={ext}", PY, UPSTREAM, lab.EXTERNAL_IP, "53"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield server
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=10)


def ex(cli: Cli, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return cli.run("exec", name, "--", *cmd, check=check)


def getent(cli: Cli, name: str, host: str) -> str:
    """The address `getent hosts` finds inside container ``name``, or "" (not found)."""
    done = ex(cli, name, "getent", "hosts", host, check=False)
    return done.stdout.split()[0] if done.returncode == 0 and done.stdout else ""


def dig(cli: Cli, name: str, *args: str) -> str:
    return str(ex(cli, name, "dig", "+time=3", "+tries=1", *args).stdout)


def test_names_and_aliases_resolve_across_hosts(cli: Cli) -> None:
    web, api = cli.container("web"), cli.container("api")
    assert web["host"] != api["host"]
    for asked in ("api", "backend", "api.svc.lab", "API.svc.lab"):
        assert getent(cli, "web", asked) == api["ip"], asked
    for asked in ("web", "www", "web.svc.lab"):
        assert getent(cli, "api", asked) == web["ip"], asked
    # busybox's resolver, from the test image
    out = ex(cli, "bb", "nslookup", "api.svc.lab").stdout
    assert api["ip"] in out, out
    # a joined container shares its donor's resolver
    assert getent(cli, "side", "api") == api["ip"]
    # and names are what people type: ping across hosts (the demo's `ping <name>`)
    assert ex(cli, "bb", "busybox", "ping", "-c", "1", "-W", "3", "api").returncode == 0
    assert ex(cli, "bb", "busybox", "ping", "-c", "1", "-W", "3", "backend.svc.lab"
              ).returncode == 0


def test_check_probes_names_and_reports_one_that_does_not_resolve(cli: Cli,
                                                                  tmp_path: Path) -> None:
    good = Path(cli.files["dns"])
    done = cli.run("check", str(good), "--no-implied", "--json", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "dns.yaml"
    bad.write_text(good.read_text() + "  - {from: web, to: gone.svc.lab}\n")
    done = cli.run("check", str(bad), "--no-implied", check=False)
    assert done.returncode != 0
    assert "gone.svc.lab does not resolve (NXDOMAIN" in done.stdout + done.stderr, done.stdout


def test_files_inside_containers(cli: Cli) -> None:
    web, secret = cli.container("web"), cli.container("secret")
    resolv = ex(cli, "web", "cat", "/etc/resolv.conf").stdout
    assert resolv.split("\n")[:2] == [f"nameserver {web['gateway']}", "search svc.lab"]
    assert "nameserver" in ex(cli, "secret", "cat", "/etc/resolv.conf").stdout  # control
    assert secret["gateway"] in ex(cli, "secret", "cat", "/etc/resolv.conf").stdout
    assert "nameserver" not in ex(cli, "closed", "cat", "/etc/resolv.conf").stdout
    hosts = ex(cli, "web", "cat", "/etc/hosts").stdout
    assert f"{web['ip']}\tweb www" in hosts
    assert ex(cli, "side", "cat", "/etc/resolv.conf").stdout == resolv
    # read-only
    assert ex(cli, "web", "sh", "-c", "echo x >> /etc/resolv.conf", check=False).returncode != 0


def test_networks_do_not_see_each_others_names(cli: Cli) -> None:
    secret, api = cli.container("secret"), cli.container("api")
    assert getent(cli, "secret", "secret") == secret["ip"]  # control: back's resolver works
    assert getent(cli, "secret", "api") == ""
    assert getent(cli, "web", "api") == api["ip"]  # control: ov's resolver works
    assert getent(cli, "web", "secret") == ""
    # asking ov's resolver directly from back: refused
    ov_gateway = cli.container("web")["gateway"]
    out = dig(cli, "secret", f"@{ov_gateway}", "api")
    assert "status: REFUSED" in out, out


def test_ptr_aaaa_nodata_and_nxdomain(cli: Cli) -> None:
    api = cli.container("api")
    assert dig(cli, "web", "+short", "-x", api["ip"]).split() == ["api.svc.lab."]
    a = dig(cli, "web", "A", "api.svc.lab")
    assert "status: NOERROR" in a and "ANSWER: 1" in a, a  # control
    aaaa = dig(cli, "web", "AAAA", "api.svc.lab")
    assert "status: NOERROR" in aaaa and "ANSWER: 0" in aaaa, aaaa
    missing = dig(cli, "web", "nosuch.svc.lab")
    assert "status: NXDOMAIN" in missing, missing


def test_forwarding_and_tcp_fallback(cli: Cli, upstream: subprocess.Popen[str]) -> None:
    assert dig(cli, "web", "+short", "www.example").split() == ["203.0.113.80"]
    assert getent(cli, "api", "www.example") == "203.0.113.80"  # from the other host
    assert getent(cli, "secret", "www.example") == "203.0.113.80"  # a container's own dns:
    big = dig(cli, "web", "+noedns", "big.example")  # 80 records: over 512 bytes
    assert "Truncated, retrying in TCP mode" in big, big
    assert "ANSWER: 80" in big, big
    assert "status: NXDOMAIN" in dig(cli, "web", "nosuch.example")


def test_dead_upstream_does_not_stall_local_names(cli: Cli,
                                                  upstream: subprocess.Popen[str]) -> None:
    api = cli.container("api")
    assert dig(cli, "web", "+short", "www.example").split() == ["203.0.113.80"]  # control
    upstream.terminate()
    upstream.wait(timeout=10)
    slow = subprocess.Popen([sys.executable, "-m", "sdnctl.main", "exec", "web", "--", "dig",
                             "+time=5", "+tries=1", "uncached.example"], env=cli.env,
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # (no readiness signal from inside dig: the query may still be coming)
        out = dig(cli, "web", "api")
        assert "status: NOERROR" in out and api["ip"] in out, out
        query_ms = int(out.split("Query time: ")[1].split()[0])
        assert query_ms < 500, out  # a safety bound, far above a local answer's time
        rest, _ = slow.communicate(timeout=30)
        assert "status: SERVFAIL" in rest, rest
        # cached answers outlive the upstream
        assert dig(cli, "web", "+short", "www.example").split() == ["203.0.113.80"]
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()


def test_garbage_flood_does_not_stop_the_resolver(cli: Cli) -> None:
    web = cli.container("web")
    api = cli.container("api")
    assert getent(cli, "web", "api") == api["ip"]  # control
    code = ("import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for i in range(5000):\n"
            f"    s.sendto(os.urandom(i % 600), ({web['gateway']!r}, 53))\n"
            f"t = socket.create_connection(({web['gateway']!r}, 53), timeout=3)\n"
            "t.sendall(b'\\x00\\x10' + os.urandom(16)); t.close()\n")
    done = nsexec(web["netns"], PY, "-c", code)
    assert done.returncode == 0, done.stderr
    assert getent(cli, "web", "api") == api["ip"]
    assert "ANSWER: 1" in dig(cli, "web", "+tcp", "api")


def test_a_removed_container_stops_resolving_and_a_new_one_resolves(cli: Cli) -> None:
    cli.run("run", "--name", "late", "--host", "h2", "--network", "ov", "--alias", "tardy")
    try:
        late = cli.container("late")
        assert wait_until(lambda: getent(cli, "web", "tardy") == late["ip"])
    finally:
        cli.run("rm", "-f", "late")
    assert wait_until(lambda: getent(cli, "web", "late") == "")
    assert getent(cli, "web", "api") == cli.container("api")["ip"]  # still answering


def test_trace_takes_a_name_the_source_resolves(cli: Cli) -> None:
    api = cli.container("api")
    done = cli.run("trace", "web", "backend.svc.lab", "--json")
    assert api["ip"] in done.stdout, done.stdout
    missing = cli.run("trace", "web", "gone.svc.lab", check=False)
    assert missing.returncode != 0
    assert "gone.svc.lab does not resolve (NXDOMAIN" in missing.stderr + missing.stdout


def test_names_answer_again_after_an_agent_restart(cli: Cli) -> None:
    api = cli.container("api")
    assert getent(cli, "web", "api") == api["ip"]  # control
    stop_agent(cli, "h1")
    cli.run("up", cli.files["dns"], "--timeout", "90")  # starts h1's agent again
    assert wait_until(lambda: getent(cli, "web", "api") == api["ip"])
    assert getent(cli, "api", "web") == cli.container("web")["ip"]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` (a safety timeout, not a measure: latency is bench/'s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
