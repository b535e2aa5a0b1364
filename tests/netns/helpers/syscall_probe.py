"""Try the system calls a container must be refused, and print what each returned as JSON:
``{"unshare-net": 0, "mount": 1, ...}``, 0 for success, else the errno.

Design note. Standalone on purpose: the tests run this file's text with ``python3 -c`` inside
containers (the host's python3, or in an image container the host's /usr bound in and run
through its dynamic loader), and on the host as the positive control that proves each attempt
can succeed where it is allowed. It imports nothing of ours. Each attempt that could change the
probing process (a namespace, a tracee) works on a child or a copy: ``clone`` and ``clone3``
are called raw with no stack (so the child is a fork that exits at once), ``ptrace`` attaches
to a sleeping child. Raw syscall numbers, as libc has no wrappers for clone3 or add_key.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import signal
import sys
import threading
import time

NUMBERS = {  # (unshare, mount, keyctl, add_key, ptrace, clone, clone3)
    "x86_64": (272, 165, 250, 248, 101, 56, 435),
    "aarch64": (97, 40, 219, 217, 117, 220, 435),
}
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING = 0, -2
PTRACE_ATTACH = 16

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
UNSHARE, MOUNT, KEYCTL, ADD_KEY, PTRACE, CLONE, CLONE3 = NUMBERS[platform.machine()]


def syscall(number: int, *args: object) -> tuple[int, int]:
    """(return value, errno) of a raw system call."""
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *args)
    return result, (ctypes.get_errno() if result < 0 else 0)


def reap_child(result: int) -> None:
    """After clone or clone3 without a stack: the child exits at once, the parent reaps it."""
    if result == 0:
        os._exit(0)
    if result > 0:
        os.waitpid(result, 0)


def try_clone(flags: int) -> int:
    result, err = syscall(CLONE, ctypes.c_ulong(flags | signal.SIGCHLD), ctypes.c_void_p(0),
                          ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_ulong(0))
    reap_child(result)
    return err


def try_clone3(flags: int) -> int:
    args = (ctypes.c_uint64 * 11)(flags, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, 0)
    result, err = syscall(CLONE3, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    reap_child(result)
    return err


def try_unshare(flags: int) -> int:
    """In a forked child, so that a success changes nothing here."""
    child = os.fork()
    if child == 0:
        os._exit(syscall(UNSHARE, ctypes.c_int(flags))[1])
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


def try_mount(target: str) -> int:
    return syscall(MOUNT, b"sdnctl-probe", target.encode(), b"tmpfs", ctypes.c_ulong(0),
                   ctypes.c_void_p(0))[1]


def try_keyctl() -> int:
    return syscall(KEYCTL, ctypes.c_int(KEYCTL_GET_KEYRING_ID),
                   ctypes.c_int(KEY_SPEC_PROCESS_KEYRING), ctypes.c_int(1))[1]


def try_add_key() -> int:
    return syscall(ADD_KEY, b"user", b"sdnctl-probe", b"x", ctypes.c_size_t(1),
                   ctypes.c_int(KEY_SPEC_PROCESS_KEYRING))[1]


def try_ptrace() -> int:
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    try:
        return syscall(PTRACE, ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(child),
                       ctypes.c_void_p(0), ctypes.c_void_p(0))[1]
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def try_thread() -> int:
    """A thread still starts (glibc falls back to clone when clone3 says ENOSYS)."""
    ran: list[bool] = []
    worker = threading.Thread(target=ran.append, args=(True,))
    worker.start()
    worker.join()
    return 0 if ran else -1


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "/dev/shm"
    print(json.dumps({
        "unshare-net": try_unshare(CLONE_NEWNET),
        "unshare-user": try_unshare(CLONE_NEWUSER),
        "mount": try_mount(target),
        "keyctl": try_keyctl(),
        "add_key": try_add_key(),
        "ptrace": try_ptrace(),
        "clone-newnet": try_clone(CLONE_NEWNET),
        "clone-newuser": try_clone(CLONE_NEWUSER),
        "clone-newns": try_clone(CLONE_NEWNS),
        "clone3-newuser": try_clone3(CLONE_NEWUSER),
        "clone3-newnet": try_clone3(CLONE_NEWNET),
        "clone-plain": try_clone(0),
        "thread": try_thread(),
    }))


if __name__ == "__main__":
    main()
