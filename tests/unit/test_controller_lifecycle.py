"""The controller process's life: one controller per socket, a socket that is not its own is
left alone, and a stop with agents' Watch streams open is clean (issue 15).

Each test runs ``sdnctl-controller`` as a real process on a SQLite file of its own, acts on it as
``sdnctl up``/``down`` and agents do (health checks, the API, SIGTERM) and asserts through the
file system, the process table and the controller's log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from apitest import TIMEOUT, Api, watch

from sdnctl.api.client import answers, start_controller, started_controller_pid, stop_controller
from sdnctl.controller.store.memory import MemoryStore

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # a generous safety timeout: the machine is shared and may be busy
SYS_TGKILL = 234  # x86_64: a signal to one thread of a process


class Controller:
    def __init__(self, base: Path, name: str, sock: Path, pidfile: Path | None = None,
                 fault: str = "") -> None:
        self.sock, self.log = sock, base / f"{name}.log"
        argv = [sys.executable, "-m", "sdnctl.controller.server", "--listen", f"unix:{sock}",
                "--db", str(base / f"{name}.db"), "--default-bridge", "", "--sweep-interval",
                "0.2"]
        if pidfile is not None:
            argv += ["--pidfile", str(pidfile)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env={**os.environ, "PYTHONPATH": str(ROOT),
                                              "SDNCTL_FAULT": fault})

    def wait_serving(self) -> None:
        for delay in _delays():
            if answers(f"unix:{self.sock}"):
                return
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.text()}"
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(delay)
        pytest.fail(f"the controller did not serve within {WAIT}s: {self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)


def _delays() -> Iterator[float]:
    waited = 0.0
    while waited < WAIT:
        yield 0.05
        waited += 0.05


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[list[Controller]]:
    made: list[Controller] = []
    yield made
    for controller in made:
        controller.kill()


def inode(path: Path) -> int:
    return os.stat(path).st_ino


def test_a_second_controller_on_the_same_socket_refuses(tmp_path: Path,
                                                        controllers: list[Controller]) -> None:
    sock = tmp_path / "c.sock"
    first = Controller(tmp_path, "first", sock, tmp_path / "first.pid")
    controllers.append(first)
    first.wait_serving()
    bound = inode(sock)

    second = Controller(tmp_path, "second", sock, tmp_path / "second.pid")
    controllers.append(second)
    assert second.proc.wait(WAIT) == 1
    assert f"another controller (pid {first.proc.pid}) already serves unix:{sock}" \
        in second.text()
    assert inode(sock) == bound, "the second controller replaced the first one's socket"
    assert answers(f"unix:{sock}") and first.proc.poll() is None
    assert (tmp_path / "first.pid").read_text().split() == [str(first.proc.pid)]
    assert not (tmp_path / "second.db").exists(), "it opened its store before refusing"

    assert first.stop() == 0  # and once the first is gone, a controller may start there
    assert not sock.exists() and not (tmp_path / "first.pid").exists()
    third = Controller(tmp_path, "third", sock)
    controllers.append(third)
    third.wait_serving()


def test_a_controller_started_while_the_last_one_stops_waits_for_it_to_exit(
        tmp_path: Path, controllers: list[Controller], monkeypatch: pytest.MonkeyPatch) -> None:
    """What `up` does right after a `down` whose controller is slow to exit (on a busy
    machine): it no longer answers but still holds its socket."""
    run = tmp_path / "run"
    monkeypatch.setenv("SDNCTL_RUN_DIR", str(run))
    monkeypatch.setenv("SDNCTL_STATE_DIR", str(tmp_path / "state"))
    sock = run / "controller.sock"
    run.mkdir()
    old = Controller(tmp_path, "old", sock, fault="stop:stall")  # stalls once it stopped serving
    controllers.append(old)
    old.wait_serving()
    old.proc.send_signal(signal.SIGTERM)
    for delay in _delays():
        if not answers(f"unix:{sock}"):
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.proc.wait(delay)
    assert old.proc.poll() is None, "the old controller should be stalling, not gone"
    started = 0
    try:
        started = start_controller(f"unix:{sock}")
        assert old.proc.poll() == 0, "a controller was started while the last one still ran"
        assert started != old.proc.pid and answers(f"unix:{sock}")
        assert started_controller_pid() == started
    finally:
        pid = started or started_controller_pid()
        if pid:
            stop_controller(pid)
    assert "Traceback" not in (run / "controller.log").read_text()


def test_a_socket_that_is_not_the_controllers_any_more_is_left_alone(
        tmp_path: Path, controllers: list[Controller]) -> None:
    sock = tmp_path / "c.sock"
    controller = Controller(tmp_path, "c", sock, tmp_path / "c.pid")
    controllers.append(controller)
    controller.wait_serving()
    os.unlink(sock)  # someone else's socket takes the name (as a second controller's did)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(sock))
        foreign = inode(sock)
        assert controller.stop() == 0
        assert sock.exists() and inode(sock) == foreign
    assert "stopped" in controller.text()


def test_a_sigterm_the_kernel_gives_to_another_thread_stops_the_controller(
        tmp_path: Path, controllers: list[Controller]) -> None:
    """The kernel hands a process's signal to any of its threads; Python runs the handler in
    the main thread only, which must wake for it (it slept for ever when gRPC's thread got it:
    a test's controller did not stop in 60 s). Here the SIGTERM goes to a thread that is not
    the main one, on purpose (tgkill)."""
    sock = tmp_path / "c.sock"
    controller = Controller(tmp_path, "c", sock)
    controllers.append(controller)
    controller.wait_serving()
    pid = controller.proc.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "the controller has threads besides its main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(SYS_TGKILL, pid, others[0], signal.SIGTERM) == 0, ctypes.get_errno()
    assert controller.proc.wait(WAIT) == 0
    assert "stopped" in controller.text()


def test_a_stop_with_watch_streams_open_logs_no_traceback(tmp_path: Path,
                                                 controllers: list[Controller]) -> None:
    sock = tmp_path / "c.sock"
    # Each stream's thread stalls before it waits on the store (as a starved thread does on a
    # busy machine): longer than the stop's grace period, so the stop must wait for it.
    controller = Controller(tmp_path, "c", sock, tmp_path / "c.pid", fault="watch:stall")
    controllers.append(controller)
    controller.wait_serving()
    channel = grpc.insecure_channel(f"unix:{sock}")
    api = Api(channel, MemoryStore())  # the store is only for tests that read it: unused
    hosts = [f"h{i}" for i in range(4)]
    try:
        with contextlib.ExitStack() as streams:
            opened = []
            for host in hosts:
                api.host(host)
                api.register(host, underlay_ip=f"192.0.2.{hosts.index(host) + 1}")
                opened.append(streams.enter_context(watch(api, host)))
            for stream in opened:
                assert stream.next(TIMEOUT).snapshot  # every stream is open and served
            assert all(api.get_host(h).agent_connected for h in hosts)
            # What `sdnctl down` does: it returns once the controller has exited.
            assert stop_controller(controller.proc.pid, timeout=WAIT)
            assert controller.proc.poll() is not None or controller.proc.wait(WAIT) is not None
    finally:
        channel.close()
    assert controller.proc.returncode == 0
    log = controller.text()
    assert "stopping" in log and "fault injection: stall at step 'watch'" in log, log
    assert "Traceback" not in log and "Error" not in log, log
