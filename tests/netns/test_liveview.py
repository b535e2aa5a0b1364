"""The live view (issue 23) in a real browser: Debian's chromium, headless, driven by Playwright.

The demo's topology is brought up with the CLI; `sdnctl ui` tells the page's URL (nobody
guesses ports). The page must load without console errors and show the lab's hosts, its
containers in their modes and the VXLAN tunnel; a container started with `sdnctl run` must
appear without a reload (server-sent events) and go after `sdnctl rm`; details open from the
keyboard; the search box marks what matches; a ping across the tunnel becomes a flow edge with
a rate, and a spoofed source a drop in red with its reason; so does a ping between two
containers of one bridge (a flow conntrack does not see without br_netfilter), and a network's
isolation drops show in red on its bridge. Agents read traffic every --flows-interval, between
their full passes. Over TCP (mutual TLS), chromium without a client certificate gets no page.
Waits are safety bounds, not timing assertions.
Screenshots go to the test's tmp dir; with SDNCTL_UPDATE_SCREENSHOT=1 the first one also
replaces docs/live-view.png (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import EXAMPLES, REPO, Cli, lab_cli, nsexec

from sdnctl.api import pki
from sdnctl.api.tlsfiles import TlsFiles
from sdnctl.controller.server import create_server
from sdnctl.controller.store.memory import MemoryStore

pytestmark = pytest.mark.netns

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev)")

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright never downloads a browser here
TWO_HOSTS = next(e for e in EXAMPLES if e.endswith("two-hosts.yaml"))
SAFETY = 30_000  # ms: a bound for a broken page, not a timing requirement
TRAFFIC = 30_000  # ms: agents read flows and drop counters every --flows-interval


@pytest.fixture
def cli(run_prefix: str) -> Iterator[Cli]:
    with lab_cli(run_prefix) as c:
        # flows and drop counters are read between full passes; those are pushed out of the
        # test's time, so that only --flows-interval can bring the traffic in
        c.env["SDNCTL_FLOWS_INTERVAL"] = "1"
        c.env["SDNCTL_RESYNC"] = "600"
        yield c


def test_the_live_view_follows_the_network(cli: Cli, tmp_path: Path,
                                           test_image: tuple[str, str]) -> None:
    assert os.path.exists(CHROMIUM), "chromium missing: scripts/setup.sh installs it"
    cli.run("up", TWO_HOSTS, "--image", test_image[0])
    url = cli.run("ui").stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    assert cli.json("status")["controller"]["ui_url"] == url

    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            for name in ("host:h1", "host:h2", "container:web", "container:sidecar",
                         "container:cache", "container:api", "container:vault",
                         "container:probe", "bridge:h1:ov", "vxlan:h2:ov"):
                page.wait_for_selector(f'[data-id="{name}"]', timeout=SAFETY)
            page.wait_for_selector('[data-id="container:web"].running', timeout=SAFETY)
            assert page.locator("#tunnels line").count() == 1  # h1 <-> h2 on ov
            page.locator("#conn.live").wait_for(timeout=SAFETY)
            page.screenshot(path=str(tmp_path / "live-view.png"), full_page=True)

            # a new container appears without a reload, and goes after rm
            cli.run("run", "--name", "late", "--host", "h2", "--network", "ov")
            late = page.locator('[data-id="container:late"]')
            late.wait_for(timeout=SAFETY)
            page.screenshot(path=str(tmp_path / "live-view-late.png"), full_page=True)

            # the keyboard reaches it and opens its details
            late.focus()
            page.keyboard.press("Enter")
            page.wait_for_selector("#details:not([hidden])", timeout=SAFETY)
            assert page.inner_text("#details-title") == "container late"
            assert "h2" in page.inner_text("#details-body")
            page.keyboard.press("Escape")
            page.wait_for_selector("#details", state="hidden", timeout=SAFETY)

            # the search box marks what matches and dims hosts without a match
            page.keyboard.press("/")
            page.keyboard.type("vault")
            assert "match" in (page.get_attribute('[data-id="container:vault"]', "class") or "")
            assert "dim" in (page.get_attribute('[data-host="h1"]', "class") or "")
            page.fill("#search", "")

            cli.run("rm", "late")
            late.wait_for(state="detached", timeout=SAFETY)
            assert page.locator('[data-id="container:web"]').count() == 1

            # a ping across the tunnel shows as a flow edge with a rate; a spoofed source as a
            # drop in red with its reason (agents report both with their passes)
            web, api = cli.container("web"), cli.container("api")
            pinger = subprocess.Popen(["nsenter", f"--net={web['netns']}", "ping", "-q", "-i",
                                       "0.2", "-c", "600", api["ip"]],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                page.wait_for_selector('#tunnels line.flow[data-flow="web>api"]',
                                       timeout=TRAFFIC)
                flow_button = f'[data-id^="flow:"][data-id*=">{api["ip"]}:icmp"]'
                assert page.locator(flow_button).count()

                def flowing() -> bool:
                    flows = json.loads(cli.run("flows", "--json").stdout)["flows"]
                    return any(f["src_container"] == "web" and f["dst_container"] == "api"
                               and f["proto"] == "icmp" and f["rate_bps"] > 0 for f in flows)

                deadline = time.monotonic() + TRAFFIC / 1000
                while not flowing():
                    assert time.monotonic() < deadline, "no rate for the ping web -> api"
                    time.sleep(1)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#tunnels text')]"
                    ".some(t => t.textContent !== '0 B/s')", timeout=TRAFFIC)
                cache = cli.container("cache")["netns"]
                spoof = nsexec(cache, "ip", "addr", "add", "10.70.99.99/32", "dev", "eth0")
                assert spoof.returncode == 0, spoof.stderr
                nsexec(cache, "ping", "-c", "3", "-W", "1", "-I", "10.70.99.99", api["ip"])
                drop = page.locator('[data-id^="drop:h1:cache:spoof"]').first
                drop.wait_for(timeout=TRAFFIC)
                cache_class = page.get_attribute('[data-id="container:cache"]', "class")
                assert "dropping" in (cache_class or "")
                nsexec(cache, "ip", "addr", "del", "10.70.99.99/32", "dev", "eth0")

                # two containers of one bridge (h1's): their flow never crosses the host's
                # routing, and shows all the same
                web_ip = web["ip"]
                done = nsexec(cache, "ping", "-c", "3", "-i", "0.2", web_ip)
                assert done.returncode == 0, done.stdout
                page.wait_for_selector('#tunnels line.flow[data-flow="cache>web"]',
                                       timeout=TRAFFIC)

                # a network's isolation drops show in red on its bridge, with the reason
                cli.run("network", "create", "iso", "--subnet", "10.71.0.0/16")
                cli.run("run", "--name", "intruder", "--host", "h1", "--network", "iso")
                intruder = cli.container("intruder")
                probe = nsexec(intruder["netns"], "ping", "-c", "2", "-W", "1", web_ip)
                assert probe.returncode != 0  # isolated: the packets are dropped
                page.wait_for_selector('[data-id="drop:h1:net/iso:isolation"]',
                                       timeout=TRAFFIC)
                bridge_class = page.get_attribute('[data-id="bridge:h1:iso"]', "class")
                assert "dropping" in (bridge_class or "")
                assert "isolation" in page.inner_text('[data-id="bridge:h1:iso"]')
                page.screenshot(path=str(tmp_path / "live-view-traffic.png"), full_page=True)
                if os.environ.get("SDNCTL_UPDATE_SCREENSHOT"):
                    shutil.copy(tmp_path / "live-view-traffic.png",
                                REPO / "docs" / "live-view.png")
                cli.run("rm", "intruder")
                cli.run("network", "rm", "iso")
            finally:
                pinger.kill()
                pinger.wait()
        finally:
            browser.close()
    assert errors == []


def test_over_tcp_a_browser_without_a_certificate_is_refused(tmp_path: Path) -> None:
    """The live view on TCP takes the API's mutual TLS: chromium with a viewer's certificate
    sees the page (the positive control), with an agent's gets 403, without one no page."""
    d = tmp_path / "pki"
    pki.init(d)
    viewer = pki.issue(d, "user", "vera", role="viewer")
    agent = pki.issue(d, "agent", "h1")
    running = create_server([f"unix:{tmp_path / 'c.sock'}"], MemoryStore(), sweep_interval=0,
                            tls=TlsFiles.from_dir(d, "controller"), http_address="127.0.0.1:0")
    try:
        assert running.endpoints is not None
        url = running.endpoints.ui_url
        assert url.startswith("https://")
        origin = url.rstrip("/")
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                def visit(cert: tuple[Path, Path] | None) -> Any:
                    certs = [{"origin": origin, "certPath": str(cert[0]),
                              "keyPath": str(cert[1])}] if cert is not None else []
                    context = browser.new_context(ignore_https_errors=True,
                                                  client_certificates=certs)
                    return context.new_page()

                page = visit(viewer)
                reply = page.goto(url)
                assert reply is not None and reply.status == 200
                page.locator("#conn.live").wait_for(timeout=SAFETY)
                page.screenshot(path=str(tmp_path / "tls-viewer.png"))

                page = visit(agent)
                reply = page.goto(url)
                assert reply is not None and reply.status == 403

                page = visit(None)
                with pytest.raises(playwright.Error) as refused:
                    page.goto(url)
                assert "net::ERR_" in str(refused.value)  # no page at all: the handshake failed
            finally:
                browser.close()
    finally:
        running.stop()
