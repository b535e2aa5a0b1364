"""nft commands through libnftables, in this process.

The ``nft`` program is a thin shell around libnftables. Calling the library through ctypes
does the same work without a fork and exec per command: 0.3 ms against 4 ms for a small
script on a quiet 2-core machine, and the process start is what grows when the machine is
busy (an agent runs one per container start and removal, and every agent one when a host
joins an overlay). A context's netlink socket belongs to the network namespace of the thread
that runs the command: callers that act on another namespace run ``run`` in a thread that
entered it (``netns.run_in_netns``). Without the library (it ships with nft, so this should
not happen) the ``nft`` program is run instead, in the calling thread's namespace too.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import subprocess
import threading
from dataclasses import dataclass

from agent.kernel.errors import KernelError

#: Output flags (``enum nft_output_flags`` in libnftables.h) and the matching nft options.
OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4
OUTPUT_ECHO = 1 << 5
_OPTIONS = ((OUTPUT_HANDLE, "--handle"), (OUTPUT_JSON, "--json"), (OUTPUT_ECHO, "--echo"))
LIBRARY = "libnftables.so.1"
TIMEOUT = 10.0  # for the nft program only: a library call cannot be given one


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    return lib


#: libnftables does not promise that two contexts may work at once in one process: it sets
#: GMP's allocator for the whole process and prints protocols through ``getprotobynumber``
#: (a static buffer), and the agent calls it from several threads (the full pass's listing,
#: the firewall, the policy table): one call at a time. (The ``mpz_get_be32`` abort first
#: blamed on two threads was ``--echo`` reading a stale cache in one thread: see
#: ``agent/kernel/firewall.py``.)
_LIBRARY_LOCK = threading.Lock()
#: The ids of this process's threads that ran a command through the library, the latest
#: WRITERS_KEPT: the kernel names the thread that committed each nftables transaction, and
#: the agent's drift filter (agent/kernel/kevents.py) tells its own commits by that name,
#: also when it reads the announcement after the thread ended (a cleanup's timer thread).
_WRITERS: collections.OrderedDict[int, None] = collections.OrderedDict()
WRITERS_KEPT = 256


def run(script: str, flags: int = 0) -> Result:
    """Run an nft script (one transaction, as ``nft -f``) in the calling thread's network
    namespace; ``flags`` are OUTPUT_* flags."""
    lib = _library()
    if lib is None:
        return _run_program(script, flags)
    with _LIBRARY_LOCK:
        _WRITERS[threading.get_native_id()] = None
        _WRITERS.move_to_end(threading.get_native_id())
        while len(_WRITERS) > WRITERS_KEPT:
            _WRITERS.popitem(last=False)
        return _run_library(lib, script, flags)


def ran_here(thread_id: int) -> bool:
    """``thread_id`` is one of this process's threads that ran an nft command (lately). (No
    lock: a dict's membership test is atomic, and a command may hold the lock for long.)"""
    return thread_id in _WRITERS


def _run_library(lib: ctypes.CDLL, script: str, flags: int) -> Result:
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise KernelError("could not make an nftables context")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        lib.nft_ctx_output_set_flags(ctx, flags)
        code = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = lib.nft_ctx_get_output_buffer(ctx) or b""
        err = lib.nft_ctx_get_error_buffer(ctx) or b""
        return Result(0 if code == 0 else 1, out.decode(), err.decode())
    finally:
        lib.nft_ctx_free(ctx)


def _run_program(script: str, flags: int = 0) -> Result:
    options = [option for flag, option in _OPTIONS if flags & flag]
    # ``nft --json -f`` reads JSON, not commands: a JSON listing takes its command as words.
    argv, stdin = (script.split(), None) if flags & OUTPUT_JSON else (["-f", "-"], script)
    try:
        done = subprocess.run(["nft", *options, *argv], input=stdin, capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelError("could not run nft") from e
    return Result(done.returncode, done.stdout, done.stderr)
