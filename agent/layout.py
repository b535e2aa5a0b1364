"""The agent's files on disk, under its run directory, and the sweep of what a stopped agent left.

Design note. One agent owns one run directory (``--run-dir``; ``sdnctl up`` gives each lab host
its own). Only this module knows its layout:

    <run dir>/netns/<ctr>, uts/<ctr>, ipc/<ctr>   the sandbox: a container's pinned namespaces
    <run dir>/containers/<ctr>.pid|.log|...       its pidfile (PID + start time), log, spec hash
    <run dir>/bundles/<ctr>/                      its OCI bundle
    cgroup /sdnctl/<run dir name>-<hash>/<ctr>    its cgroup (default_cgroup_parent)

A sandbox outlives its process (a restart keeps the address and the namespace), so a stopped
agent leaves processes, mounts and cgroups behind on purpose: :func:`sweep` removes them, for
``sdnctl down`` and for tests and benchmarks that stop agents.
"""

from __future__ import annotations

import hashlib
import os

from agent.kernel import cgroups, netns, procfs, procs

#: Where a sandbox's pinned namespaces live, under the run directory, by kind.
SANDBOX_DIRS = {"net": "netns", "uts": "uts", "ipc": "ipc"}
CONTAINERS_DIR = "containers"
BUNDLES_DIR = "bundles"


def containers_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CONTAINERS_DIR)


def bundles_dir(run_dir: str) -> str:
    return os.path.join(run_dir, BUNDLES_DIR)


def sandbox_dir(run_dir: str, kind: str) -> str:
    return os.path.join(run_dir, SANDBOX_DIRS[kind])


def container_file(run_dir: str, name: str, suffix: str) -> str:
    """``<run dir>/containers/<name>.<suffix>`` (``pid``, ``log``, ...)."""
    return os.path.join(containers_dir(run_dir), f"{name}.{suffix}")


def default_cgroup_parent(run_dir: str) -> str:
    """``/sdnctl/<run dir's last component>-<hash>``: unique per agent on a machine."""
    digest = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:8]
    return f"/sdnctl/{os.path.basename(run_dir.rstrip('/')) or 'agent'}-{digest}"


def sweep(run_dir: str) -> int:
    """Remove what a stopped agent left in ``run_dir``: container processes still running (by
    pidfile: PID and start time), pinned namespaces, the cgroup tree. Returns how many
    processes and namespaces it removed. The directory itself stays (the caller removes it)."""
    leftovers = 0
    for pidfile in _listdir(containers_dir(run_dir), ".pid"):
        info = procs.read_pidfile(os.path.join(containers_dir(run_dir), pidfile))
        if info is not None and procfs.is_running(info.pid, info.start_time):
            procs.stop(info, grace=0.5)
            leftovers += 1
    for kind in SANDBOX_DIRS:
        for name in _listdir(sandbox_dir(run_dir, kind), ""):
            netns.remove_netns(os.path.join(sandbox_dir(run_dir, kind), name))
            leftovers += 1
    if os.path.isdir(run_dir):
        cgroups.remove_tree(default_cgroup_parent(run_dir))
    return leftovers


def _listdir(path: str, suffix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(path) if n.endswith(suffix) and not n.startswith("."))
    except FileNotFoundError:
        return []
