"""The OCI runtime spec (config.json) of a container. Pure: data in, a dict out.

Isolation, as Docker's defaults, tightened:
  - namespaces: PID (the command is PID 1), mount, and the network, UTS and IPC namespaces the
    network mode names (a path to join, or a new one); a user namespace when asked, with root
    mapped onto an unprivileged range;
  - capabilities: Docker's default set without NET_RAW (ping works through ping_group_range),
    plus what ``cap_add`` names; no-new-privileges; a seccomp profile that refuses the system
    calls Docker's default profile refuses (mount, ptrace, kexec, modules, bpf, keyrings...),
    and, as Docker does, ``clone`` with a namespace flag (EPERM) and ``clone3`` altogether
    (ENOSYS: its flags sit behind a pointer seccomp cannot read; glibc falls back to clone);
  - cgroups: memory (swap included, so the limit is a limit), CPU quota and shares, pids.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdnctl.api.model import DEFAULT_CAPABILITIES, VolumeMount

OCI_VERSION = "1.0.2"
CPU_PERIOD = 100_000  # microseconds
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USERNS_BASE, USERNS_SIZE = 100_000, 65_536

#: System calls refused with EPERM (the ones Docker's default profile leaves out, for a
#: container without CAP_SYS_ADMIN and friends).
SECCOMP_DENY = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
    "delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
    "get_kernel_syms", "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load",
    "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
    "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace", "query_module",
    "quotactl", "reboot", "request_key", "setns", "settimeofday", "stime", "swapoff",
    "swapon", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd",
    "ustat", "vm86", "vm86old",
)

#: clone(2) flags that make a namespace (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
#: NEWNET): unshare(2) and setns(2) are refused above, and without these rules a container would
#: still make a user namespace (no privilege needed), and in it every other kind.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                         0x40000000)
EPERM, ENOSYS = 1, 38

#: The system call tables a process on each machine can reach, as Docker's profile lists them:
#: the native one and the compatibility modes its kernel runs (a 32-bit x86 or x32 binary on
#: x86_64, a 32-bit ARM binary on aarch64). Each table the filter names is one more branch the
#: runtime compiles at every start (the two ARM tables on x86_64 cost crun about 1 ms of
#: 9 a start); a machine not listed gets its native table alone (an empty list).
SECCOMP_ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}
HOST_MACHINE = platform.machine()

MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class Limits:
    memory: int = 0  # bytes
    cpus: float = 0.0
    cpu_shares: int = 0
    pids: int = 0


@dataclass(frozen=True)
class SpecInput:
    args: tuple[str, ...]
    hostname: str
    env: tuple[str, ...] = ()
    cwd: str = "/"
    net: str | None = None  # a namespace path to join; None: the host's (open mode)
    uts: str | None = None  # a path to join; None: a new one named ``hostname``
    ipc: str | None = None
    user_ns: bool = False
    readonly_root: bool = False
    caps: tuple[str, ...] = DEFAULT_CAPABILITIES
    limits: Limits = field(default_factory=Limits)
    cgroups_path: str = ""
    volumes: tuple[tuple[VolumeMount, str], ...] = ()  # (volume, host directory to bind)
    #: (destination, host file) bound read-only: /etc/resolv.conf and /etc/hosts (DNS)
    etc_files: tuple[tuple[str, str], ...] = ()


def build(spec: SpecInput) -> dict[str, Any]:
    caps = sorted({f"CAP_{c.upper().removeprefix('CAP_')}" for c in spec.caps})
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": list(spec.args),
        "env": list(spec.env),
        "cwd": spec.cwd or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    }
    linux: dict[str, Any] = {
        "namespaces": namespaces(spec),
        "resources": resources(spec.limits),
        "seccomp": seccomp(),
        "maskedPaths": list(MASKED),
        "readonlyPaths": list(READONLY),
    }
    if spec.cgroups_path:
        linux["cgroupsPath"] = spec.cgroups_path
    if spec.user_ns:
        linux["uidMappings"] = [{"containerID": 0, "hostID": USERNS_BASE, "size": USERNS_SIZE}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": USERNS_BASE, "size": USERNS_SIZE}]
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": spec.readonly_root},
        "mounts": mounts(spec),
        "linux": linux,
    }
    if spec.uts is None:
        config["hostname"] = spec.hostname
    return config


def namespaces(spec: SpecInput) -> list[dict[str, str]]:
    result = [{"type": "pid"}, {"type": "mount"}, {"type": "cgroup"}]
    for kind, path in (("network", spec.net), ("uts", spec.uts), ("ipc", spec.ipc)):
        if path is not None:
            result.append({"type": kind, "path": path})
        elif kind != "network":  # no network namespace entry: the host's network
            result.append({"type": kind})
    if spec.user_ns:
        result.append({"type": "user"})
    return result


def resources(limits: Limits) -> dict[str, Any]:
    res: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.memory:
        res["memory"] = {"limit": limits.memory, "swap": limits.memory}
    cpu: dict[str, Any] = {}
    if limits.cpus:
        cpu["quota"] = int(limits.cpus * CPU_PERIOD)
        cpu["period"] = CPU_PERIOD
    if limits.cpu_shares:
        cpu["shares"] = limits.cpu_shares
    if cpu:
        res["cpu"] = cpu
    if limits.pids:
        res["pids"] = {"limit": limits.pids}
    return res


def mounts(spec: SpecInput) -> list[dict[str, Any]]:
    sys_options = ["nosuid", "noexec", "nodev", "ro"]
    result: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": [*sys_options, "relatime"]},
    ]
    if not spec.user_ns:
        result.append({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                       "options": ["nosuid", "noexec", "nodev"]})
    if spec.readonly_root:  # the host's root, read-only: its own /run (scratch: /dev/shm)
        result.append({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=755"]})
    for volume, source in spec.volumes:
        options = ["rbind", "nosuid", "nodev", "ro" if volume.readonly else "rw"]
        result.append({"destination": volume.target, "type": "bind", "source": source,
                       "options": options})
    for destination, source in spec.etc_files:
        result.append({"destination": destination, "type": "bind", "source": source,
                       "options": ["bind", "nosuid", "nodev", "noexec", "ro"]})
    return result


def seccomp(deny: Sequence[str] = SECCOMP_DENY, machine: str = HOST_MACHINE) -> dict[str, Any]:
    """The filter for a host whose ``uname -m`` is ``machine``."""
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(SECCOMP_ARCHITECTURES.get(machine, ())),
        "syscalls": [
            {"names": list(deny), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            # one rule per flag (rules are alternatives): (flags & flag) == flag -> EPERM
            *({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
               "args": [{"index": 0, "value": flag, "valueTwo": flag,
                         "op": "SCMP_CMP_MASKED_EQ"}]} for flag in CLONE_NAMESPACE_FLAGS),
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        ],
    }
