"""Netlink event monitors (``ip monitor``, ``bridge monitor fdb``) proved to be listening.

Design note. A test that claims "a second ensure wrote nothing" watches the namespaces' netlink
events and expects none; if a monitor has not subscribed yet when the test acts, it sees nothing
and the claim passes falsely. A fixed sleep guesses. So :func:`quiet_monitors` makes a marker
event in each watched namespace (a link ``tmark0``, down so that no address or route
follows, with an FDB entry for ``bridge monitor fdb``; a bridge, as the dummy module may be
missing), waits until every monitor printed it,
and removes it (again waiting for the events): from then on the monitors provably listen. The
marker is made only once each monitor holds a subscribed netlink socket (/proc/PID/net/netlink):
one made before would never be printed. After
the test's action the same marker is made again, a barrier: what the action caused was printed
before it. The events returned are those between the two markers.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

MARKER = "tmark0"
MARKER_MAC = "02:00:00:00:c0:de"


@dataclass
class Monitor:
    netns: str
    argv: list[str]
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                line = line.rstrip("\n")
                if line[:1].isspace() and self.lines:
                    self.lines[-1] += "\n" + line  # an event's second line (link/ether ...)
                else:
                    self.lines.append(line)
                self.changed.notify_all()

    def _marks(self, line: str, deleted: bool) -> bool:
        # fdb monitors also see the bridge's own entry come and go: count the marker MAC's
        needle = MARKER_MAC if self.argv[0] == "bridge" else MARKER
        return needle in line and line.startswith("Deleted") == deleted

    def wait_count(self, deleted: bool, count: int, timeout: float = 15.0) -> None:
        """Until ``count`` marker events (deletions, or others) were printed."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(self._marks(line, deleted) for line in self.lines) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{self.argv} never showed the marker {MARKER}: {self.lines}"
                self.changed.wait(left)


def _subscribed(pid: int) -> bool:
    """Whether process ``pid`` holds a netlink socket bound to multicast groups (what ``ip
    monitor`` and ``bridge monitor`` do once they listen): its socket inodes against the
    Groups column of /proc/PID/net/netlink, the table of its own namespace."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        with open(f"/proc/{pid}/net/netlink") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return False  # not there yet (nsenter still running) or gone: the caller's deadline
    inodes = {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    return any(len(row) > 9 and row[9] in inodes and int(row[3], 16) != 0 for row in rows)


def _wait_subscribed(m: Monitor, timeout: float = 30.0) -> None:
    """Until ``m`` listens: a marker made before that would never be printed (seen in CI)."""
    deadline = time.monotonic() + timeout
    while not _subscribed(m.proc.pid):
        assert m.proc.poll() is None, f"{m.argv} exited: {m.lines}"
        assert time.monotonic() < deadline, f"{m.argv} never subscribed to its events"
        time.sleep(0.01)


def _nsrun(netns: str, *argv: str) -> None:
    subprocess.run(["nsenter", f"--net={netns}", *argv], check=True, capture_output=True,
                   timeout=30)


class QuietMonitors:
    def __init__(self, monitors: list[Monitor]) -> None:
        self.monitors = monitors
        self.rounds = 0
        self.start = [0] * len(monitors)

    def marker(self) -> None:
        """Add and delete the marker in every namespace; wait until each monitor showed both.
        Deletions are counted exactly (one per monitor and round): the barrier."""
        self.rounds += 1
        namespaces = sorted({m.netns for m in self.monitors})
        fdb = {m.netns for m in self.monitors if m.argv[0] == "bridge"}
        for ns in namespaces:
            _nsrun(ns, "ip", "link", "add", MARKER, "type", "bridge")
            if ns in fdb:
                _nsrun(ns, "bridge", "fdb", "add", MARKER_MAC, "dev", MARKER, "self",
                       "permanent")
        for m in self.monitors:
            m.wait_count(False, self.rounds)
        for ns in namespaces:
            if ns in fdb:
                _nsrun(ns, "bridge", "fdb", "del", MARKER_MAC, "dev", MARKER, "self")
            _nsrun(ns, "ip", "link", "del", MARKER)
        for m in self.monitors:
            m.wait_count(True, self.rounds)

    def events(self) -> list[list[str]]:
        """Per monitor: what it printed since the first marker, markers left out."""
        out = []
        for m, start in zip(self.monitors, self.start, strict=True):
            with m.changed:
                out.append([line for line in m.lines[start:] if MARKER not in line
                            and MARKER_MAC not in line])
        return out


@contextlib.contextmanager
def quiet_monitors(argvs: list[tuple[str, list[str]]]) -> Iterator[QuietMonitors]:
    """Start ``argv`` in namespace ``netns`` for each (netns, argv), prove them listening; on
    the way out, a last marker (a barrier) before ``events()`` is read by the caller."""
    monitors: list[Monitor] = []
    threads = []
    try:
        for netns, argv in argvs:
            proc = subprocess.Popen(["nsenter", f"--net={netns}", *argv],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            monitors.append(Monitor(netns, argv, proc))
            threads.append(threading.Thread(target=monitors[-1].read, daemon=True))
            threads[-1].start()
        for m in monitors:
            _wait_subscribed(m)
        quiet = QuietMonitors(monitors)
        quiet.marker()
        # events start after the first marker's deletion: everything before is the markers'
        quiet.start = [len(m.lines) for m in monitors]
        yield quiet
        quiet.marker()
    finally:
        for m in monitors:
            with contextlib.suppress(ProcessLookupError):
                m.proc.terminate()
            m.proc.wait(timeout=5)
        for t in threads:
            t.join(timeout=5)
        for ns in sorted({m.netns for m in monitors}):
            subprocess.run(["nsenter", f"--net={ns}", "ip", "link", "del", MARKER],
                           capture_output=True, check=False, timeout=30)

