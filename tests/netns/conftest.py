"""Fixtures for tests that build network namespaces (marker ``netns``).

- Tests marked ``netns`` skip, saying why, unless we are root and ``unshare`` can pin and
  configure a namespace: a probe independent of our code, so a broken ``create_netns`` fails
  the tests instead of skipping them.
- ``run_prefix`` is a short name prefix unique to one test: every namespace, mount and process a
  test makes carries it, so concurrent runs never collide and leaks are attributable.
- An autouse leak check snapshots the machine before each ``netns`` test and compares after:
  namespaces and mounts carrying the prefix, the root namespace's links, nftables tables and
  ip_forward (which nobody may change), child processes and processes naming the prefix. It first
  cleans what carries the prefix (so one leak does not cascade), then fails listing every leak.
  Namespaces and mounts without our prefix are not reported: concurrent runs make those.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# The tree is not installed into the virtualenv: make `agent` and `sdnctl` importable.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from helpers.cli import OPENED_LABS  # noqa: E402
from helpers.pyroute import iproute_in  # noqa: E402

from agent.kernel import cgroups  # noqa: E402
from agent.kernel.netns import NETNS_RUN_DIR, netns_path, remove_netns  # noqa: E402
from sdnctl.lab.lab import Lab, process_start_time, stop_process  # noqa: E402
from sdnctl.lab.testimage import build_test_image  # noqa: E402

TEST_IMAGE_TAG = "sdnctl-test:latest"

SKIP_REASON = "needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN to build network namespaces"
BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@functools.cache
def _netns_unavailable() -> str | None:
    """Why this machine cannot build network namespaces, or None when it can.

    Asked of util-linux and iproute2 only, never of our own code: a bug in ``create_netns``
    must fail the namespace tests, not skip them. The probe does what our tests need: a new
    network namespace pinned by a bind mount under /run/netns (as ``ip netns add`` would, but
    without its side effect of turning /run/netns into a shared mount point, which duplicates
    the namespace mounts of concurrent runs), configured from inside (CAP_NET_ADMIN there).
    """
    if os.geteuid() != 0:
        return "not root"
    for tool in ("unshare", "ip", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    pin = os.path.join(NETNS_RUN_DIR, f"sdnprobe{os.getpid()}-{secrets.token_hex(3)}")
    argv = ["unshare", f"--net={pin}", "ip", "link", "set", "lo", "up"]
    try:
        with open(pin, "x"):
            pass
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            return f"`{' '.join(argv)}` failed: {done.stderr.strip()}"
    finally:
        subprocess.run(["umount", pin], capture_output=True, check=False, timeout=30)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pin)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is not None and (why := _netns_unavailable()):
        pytest.skip(f"{SKIP_REASON} ({why})")


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The busybox test image as a `docker save` archive: (path, image ID)."""
    path = str(tmp_path_factory.mktemp("image") / "sdnctl-test.tar")
    return path, build_test_image(path, TEST_IMAGE_TAG)


@pytest.fixture
def run_prefix() -> str:
    """``t`` + 5 base36 characters, not the start of any existing namespace name."""
    while True:
        prefix = "t" + "".join(secrets.choice(BASE36) for _ in range(5))
        with contextlib.suppress(FileNotFoundError):
            if any(n.startswith(prefix) for n in os.listdir(NETNS_RUN_DIR)):
                continue
        return prefix


@pytest.fixture
def lab(run_prefix: str) -> Iterator[Lab]:
    lab = Lab(run_prefix)
    yield lab
    lab.teardown()


# -- leak check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    mounts: frozenset[tuple[str, str]]  # (mount point, fs type)
    root_links: frozenset[str]
    root_nft_tables: frozenset[str]
    root_ip_forward: str
    children: frozenset[tuple[int, int | None]]  # (pid, start time)
    named: frozenset[tuple[int, int | None]]  # processes whose cmdline holds the prefix
    cgroups: frozenset[str] = frozenset()  # directories under <hierarchy>/sdnctl


def _cgroups() -> frozenset[str]:
    """Every cgroup directory below ``sdnctl`` in every hierarchy (containers' and parents)."""
    found = set()
    for root in cgroups.hierarchies():
        for dirpath, _, _ in os.walk(os.path.join(root, "sdnctl")):
            found.add(dirpath)
    return frozenset(found)


def _netns_names() -> frozenset[str]:
    try:
        return frozenset(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return frozenset()


def _mounts() -> frozenset[tuple[str, str]]:
    with open("/proc/self/mounts") as f:
        # Mount points escape spaces as \040; they are compared, never opened, except below.
        return frozenset((fields[1], fields[2]) for fields in (line.split() for line in f))


# "Root namespace" is the one this pytest process runs in (its main thread's; /proc/1 may be out of
# reach). A socket born in that namespace reads it whatever the calling thread is in.
def _root_netns() -> str:
    return f"/proc/{os.getpid()}/ns/net"


def _root_links() -> frozenset[str]:
    with iproute_in(_root_netns()) as ipr:
        return frozenset(link.get("ifname") for link in ipr.link("dump"))


def _root_nft_tables() -> frozenset[str]:
    nft = shutil.which("nft")
    if nft is None:
        return frozenset()
    out = subprocess.run([nft, "list", "tables"], capture_output=True, text=True,
                         check=False).stdout
    return frozenset(line.strip() for line in out.splitlines() if line.strip())


def _root_ip_forward() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as f:  # the fixture runs in the main thread
        return f.read().strip()


def _processes(prefix: str) -> tuple[frozenset[tuple[int, int | None]],
                                     frozenset[tuple[int, int | None]]]:
    """(children of this process, other processes whose command line holds ``prefix``)."""
    me = os.getpid()
    children, named = set(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        key = (pid, process_start_time(pid))
        if ppid == me:
            children.add(key)
        if prefix.encode() in cmdline:
            named.add(key)
    return frozenset(children), frozenset(named)


def _snapshot(prefix: str) -> Snapshot:
    children, named = _processes(prefix)
    return Snapshot(
        netns=_netns_names(),
        mounts=_mounts(),
        root_links=_root_links(),
        root_nft_tables=_root_nft_tables(),
        root_ip_forward=_root_ip_forward(),
        children=children,
        named=named,
        cgroups=_cgroups(),
    )


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} ({b' '.join(argv).decode(errors='replace').strip() or 'zombie'})"


def _find_leaks(before: Snapshot, after: Snapshot, prefix: str, tmp: str | None) -> list[str]:
    def ours(path: str) -> bool:
        return prefix in path or (tmp is not None and path.startswith(tmp))

    leaks: list[str] = []
    for pid, _ in sorted((after.children - before.children) | (after.named - before.named)):
        if os.path.exists(f"/proc/{pid}"):  # reaped meanwhile (Popen reaps lost children)
            leaks.append(f"process {_describe(pid)}")
    leaks += [f"network namespace {NETNS_RUN_DIR}/{n}"
              for n in sorted(after.netns - before.netns) if n.startswith(prefix)]
    leaks += [f"mount {point} ({fstype})"
              for point, fstype in sorted(after.mounts - before.mounts) if ours(point)]
    leaks += [f"root namespace: new link {n!r}"
              for n in sorted(after.root_links - before.root_links)]
    leaks += [f"root namespace: link {n!r} vanished"
              for n in sorted(before.root_links - after.root_links)]
    leaks += [f"root namespace: new nftables {t!r}"
              for t in sorted(after.root_nft_tables - before.root_nft_tables)]
    leaks += [f"root namespace: nftables {t!r} vanished"
              for t in sorted(before.root_nft_tables - after.root_nft_tables)]
    leaks += [f"cgroup {path}" for path in sorted(after.cgroups - before.cgroups)
              if prefix in path]
    if after.root_ip_forward != before.root_ip_forward:
        leaks.append(f"root namespace: net.ipv4.ip_forward changed from "
                     f"{before.root_ip_forward} to {after.root_ip_forward}")
    return leaks


def _clean(before: Snapshot, after: Snapshot, prefix: str, tmp: str | None) -> list[str]:
    """Remove what carries the prefix (or lives under the test's tmp_path); report failures."""
    failures = []
    for pid, start in (after.children - before.children) | (after.named - before.named):
        try:
            stop_process(pid, grace=1.0, start_time=start)
        except Exception as e:
            failures.append(f"could not stop process {pid}: {e}")
    for path in sorted(after.cgroups - before.cgroups, reverse=True):  # leaves first
        if prefix in path:
            failures += _remove_cgroup(path)
    netns = [netns_path(n) for n in after.netns - before.netns if n.startswith(prefix)]
    mounts = [point for point, _ in after.mounts - before.mounts
              if prefix in point or (tmp is not None and point.startswith(tmp))]
    for path in sorted(set(netns) | set(mounts), reverse=True):  # children before parents
        try:
            if path in netns:
                remove_netns(path)
            else:
                subprocess.run(["umount", "-l", path], check=True, capture_output=True)
        except Exception as e:
            failures.append(f"could not remove {path}: {e}")
    return failures


def _remove_cgroup(path: str) -> list[str]:
    """Kill what still runs in a cgroup of this test's (its name carries the prefix), remove it."""
    with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as f:
        for pid in f.read().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
    for _ in range(50):
        try:
            os.rmdir(path)
            return []
        except FileNotFoundError:
            return []
        except OSError:
            time.sleep(0.05)
    return [f"could not remove cgroup {path}"]


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest, run_prefix: str) -> Iterator[None]:
    if request.node.get_closest_marker("netns") is None:
        yield
        return
    before = _snapshot(run_prefix)
    yield
    after = _snapshot(run_prefix)
    tmp_path = (request.node.funcargs or {}).get("tmp_path")  # None: interrupted
    tmp = str(tmp_path) if tmp_path is not None else None
    leaks = _find_leaks(before, after, run_prefix, tmp)
    if leaks:
        failures = _clean(before, after, run_prefix, tmp)
        pytest.fail("leaked by this test (run prefix "
                    f"{run_prefix!r}):\n  " + "\n  ".join(leaks + failures), pytrace=False)


#: Matches no command line: the module check attributes by prefix after the fact, not by name.
_NO_NAME = "\0no-such-prefix"


@pytest.fixture(autouse=True, scope="module")
def _module_leak_check() -> Iterator[None]:
    """A lab that a module-scoped fixture shares is built before the first test's check and
    taken down after the last one's: what its teardown leaves is checked here, once the
    module is done, by the prefix and run directory of every ``lab_cli`` the module opened."""
    opened = len(OPENED_LABS)
    before = _snapshot(_NO_NAME)
    yield
    labs = OPENED_LABS[opened:]
    if not labs:
        return
    after = _snapshot(_NO_NAME)
    leaks, failures = [], []
    for prefix, run_dir in labs:
        found = _find_leaks(before, after, prefix, str(run_dir))
        if found:
            leaks += found
            failures += _clean(before, after, prefix, str(run_dir))
    if leaks:
        pytest.fail("leaked by this module's labs:\n  " + "\n  ".join(leaks + failures),
                    pytrace=False)
