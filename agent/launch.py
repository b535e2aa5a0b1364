"""Container launcher: run a command in prepared namespaces and a new PID namespace.

    python -m agent.launch [--netns PATH] [--uts PATH | --hostname NAME] [--ipc PATH]
                           --pidfile FILE [--log FILE] -- CMD ARGS...

It enters the network namespace at PATH (without --netns it keeps the caller's: the host's), the
UTS namespace at --uts (else a new one named --hostname) and the IPC namespace at --ipc (else a
new one), unshares a PID namespace and forks. The child is PID 1 of the new PID namespace: it
starts a session, points stdin at /dev/null and stdout/stderr at the log, and execs CMD. The
parent writes "PID STARTTIME" (host PID; start time = field 22 of /proc/PID/stat, which guards
against PID reuse) to the pidfile atomically, prints the PID and exits 0 at once: the child is
reparented, no shim stays behind.

This process must be single-threaded when it calls setns/unshare (a fresh interpreter is), which
is why it is a separate process and not a function of the threaded agent.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys

from agent.kernel import procfs

CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
EXEC_FAILED = 127
MAX_FD = 1 << 20  # closerange uses close_range(2): cheap whatever the bound

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


class LaunchError(Exception):
    pass


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise LaunchError(f"{what}: {os.strerror(ctypes.get_errno())}")


def write_pidfile(path: str, pid: int, start_time: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{pid} {start_time}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agent.launch")
    parser.add_argument("--netns", help="network namespace to join (default: the caller's)")
    parser.add_argument("--uts", help="UTS namespace to join (default: a new one)")
    parser.add_argument("--ipc", help="IPC namespace to join (default: a new one)")
    parser.add_argument("--hostname", help="hostname of a new UTS namespace")
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given after --")
    if not args.uts and not args.hostname:
        parser.error("give --uts or --hostname")
    return args


def _join(path: str, nstype: int, kind: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LaunchError(f"cannot open {kind} namespace {path!r}: {e.strerror}") from e
    try:
        _check(_libc.setns(fd, nstype), f"setns {path!r}")
    finally:
        os.close(fd)


def _enter_namespaces(args: argparse.Namespace) -> None:
    if args.netns:
        _join(args.netns, CLONE_NEWNET, "network")
    if args.ipc:
        _join(args.ipc, CLONE_NEWIPC, "IPC")
    if args.uts:
        _join(args.uts, CLONE_NEWUTS, "UTS")
    new = CLONE_NEWPID | (0 if args.uts else CLONE_NEWUTS) | (0 if args.ipc else CLONE_NEWIPC)
    _check(_libc.unshare(new), "unshare")
    if not args.uts:
        name = args.hostname.encode()
        _check(_libc.sethostname(name, len(name)), f"sethostname {args.hostname!r}")


def _exec_child(executable: str, command: list[str], log: str) -> None:
    """In the child (PID 1 of its namespace): never returns."""
    try:
        os.setsid()
        stdin = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(stdin, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.closerange(3, MAX_FD)
        os.execv(executable, command)
    except BaseException as e:  # exec failed: leave a trace in the log and die without cleanup
        try:
            os.write(2, f"agent.launch: cannot exec {command[0]!r}: {e}\n".encode())
        finally:
            os._exit(EXEC_FAILED)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    executable = shutil.which(args.command[0])
    if executable is None:
        print(f"agent.launch: command not found: {args.command[0]!r}", file=sys.stderr)
        return 2
    try:
        _enter_namespaces(args)
    except LaunchError as e:
        print(f"agent.launch: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _exec_child(executable, args.command, args.log)
    start_time = procfs.start_time(pid)
    if start_time is None:  # the child died already (it cannot be reaped by us before this)
        print(f"agent.launch: child {pid} vanished", file=sys.stderr)
        return 1
    try:
        write_pidfile(args.pidfile, pid, start_time)
    except OSError as e:
        os.kill(pid, 9)
        print(f"agent.launch: cannot write pidfile {args.pidfile!r}: {e}", file=sys.stderr)
        return 1
    print(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
