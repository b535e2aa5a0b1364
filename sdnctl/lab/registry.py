"""The lab's registry: Debian's ``docker-registry`` (distribution 2.8) in the lab's outside world.

Design note. ``lab: {registry: true}`` runs one registry per lab, inside ``<prefix>ext`` at
``203.0.113.1:5000``, as a site's registry on the Internet would be: lab hosts (their agents,
a Docker daemon on them) reach it through the underlay router, with no route added anywhere.
It serves TLS with a certificate from a CA made for it and asks for a password (htpasswd,
bcrypt); everything it has, storage included, lives in ``<run dir>/lab/<prefix>registry/``,
which ``down`` removes with the process. The controller and the CLI run in the root namespace,
which has no route to 203.0.113.0/24 and gets none: the lab writes the registry's entry in this
machine's registry file (:mod:`sdnctl.api.registryconfig`) with ``netns`` set to the outside
world's namespace, and their connections are made from inside it
(:func:`sdnctl.api.registry.netns_dialer`). Its trust and credentials reach agents with each
image (``FetchImage``), as a real deployment's controller would hand them out.

The process is started with ``spawn_in_netns`` and stopped by PID and start time (recorded in
``state.json`` in its directory), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from sdnctl.api import paths, registry, registryconfig
from sdnctl.lab import lab

REGISTRY_BIN = "/usr/bin/docker-registry"
HTPASSWD_BIN = "/usr/bin/htpasswd"
PORT = 5000
ADDRESS = f"{lab.EXTERNAL_IP}:{PORT}"
NAMES = ("registry.lab",)  # besides its address, in its certificate
USERNAME = "lab"
READY_TIMEOUT = 20.0
SUFFIX = "registry"


@dataclass(frozen=True)
class RegistryInfo:
    address: str
    url: str
    pid: int
    start_time: int
    dir: str
    ca: str
    username: str
    netns: str


def installed() -> bool:
    return os.access(REGISTRY_BIN, os.X_OK) and os.access(HTPASSWD_BIN, os.X_OK)


def registry_dir(prefix: str) -> str:
    return os.path.join(paths.run_dir(), "lab", prefix + SUFFIX)


def _config(directory: str, cert: str, key: str) -> str:
    return json.dumps({  # YAML is a superset of JSON: no YAML writer needed
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": os.path.join(directory, "storage")},
                    "delete": {"enabled": True}},
        "http": {"addr": ADDRESS, "tls": {"certificate": cert, "key": key},
                 "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "auth": {"htpasswd": {"realm": "sdnctl-lab", "path": os.path.join(directory,
                                                                           "htpasswd")}},
    }, indent=2)


def info(prefix: str) -> RegistryInfo | None:
    """The lab's registry when it runs (its state file names a live process)."""
    try:
        with open(os.path.join(registry_dir(prefix), "state.json")) as f:
            found = RegistryInfo(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None
    return found if lab.process_alive(found.pid, found.start_time) else None


def running() -> list[RegistryInfo]:
    """Every lab registry of this machine that runs."""
    base = os.path.join(paths.run_dir(), "lab")
    try:
        entries = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.endswith(SUFFIX) and os.path.isfile(os.path.join(base, entry, "state.json")):
            got = info(entry.removesuffix(SUFFIX))
            if got is not None:
                found.append(got)
    return found


def ensure(the_lab: lab.Lab) -> RegistryInfo:
    """The lab's registry, started if it does not run (its storage is kept if it does)."""
    have = info(the_lab.prefix)
    if have is not None:
        return have
    if not installed():
        raise lab.LabError("the lab's registry needs docker-registry and apache2-utils "
                           "(htpasswd): scripts/setup.sh installs them")
    netns = the_lab.ensure_external()
    directory = registry_dir(the_lab.prefix)
    shutil.rmtree(directory, ignore_errors=True)  # a dead one's leftovers
    os.makedirs(os.path.join(directory, "storage"), mode=0o700)
    # (imported here: cryptography's import was 23 ms of every `up` and `down`, which call
    # this module for a registry most labs do not have)
    from sdnctl.lab.labtls import make_tls

    ca, cert, key = make_tls(os.path.join(directory, "tls"), (lab.EXTERNAL_IP,), NAMES)
    password = secrets.token_urlsafe(18)
    done = subprocess.run([HTPASSWD_BIN, "-Bbn", USERNAME, password], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise lab.LabError(f"could not make the registry's htpasswd: {done.stderr.strip()}")
    with open(os.path.join(directory, "htpasswd"), "w") as f:
        f.write(done.stdout)
    config = os.path.join(directory, "config.yml")
    with open(config, "w") as f:
        f.write(_config(directory, cert, key))
    pid = lab.spawn_in_netns(netns, [REGISTRY_BIN, "serve", config],
                             os.path.join(directory, "registry.log"),
                             env={"OTEL_TRACES_EXPORTER": "none"})
    found = RegistryInfo(ADDRESS, f"https://{ADDRESS}", pid, lab.process_start_time(pid) or 0,
                         directory, ca, USERNAME, netns)
    try:
        with open(os.path.join(directory, "state.json"), "w") as f:
            json.dump(asdict(found), f, indent=2)
        registryconfig.put(ADDRESS, registryconfig.RegistryEntry(
            ca=ca, username=USERNAME, password=password, netns=netns))
        _wait_ready(found)
    except BaseException:
        stop(the_lab.prefix)
        raise
    return found


def _wait_ready(found: RegistryInfo) -> None:
    """Until ``GET /v2/`` answers through TLS with our credentials (the registry's own
    readiness signal: it listens only once its storage and auth are set up)."""
    client = registry.Client(registryconfig.endpoint(ADDRESS), timeout=5)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if not lab.process_alive(found.pid, found.start_time):
            raise lab.LabError(f"docker-registry exited; see {found.dir}/registry.log")
        try:
            client.request("GET", "/v2/", "").read_all()
            return
        except registry.RegistryError as e:
            if time.monotonic() > deadline:
                raise lab.LabError(f"docker-registry did not answer at {ADDRESS} within "
                                   f"{READY_TIMEOUT}s: {e}") from e
        time.sleep(0.05)


def stop(prefix: str) -> bool:
    """Stop the lab's registry (by PID) and remove its directory and its registry-file entry.
    True when there was one."""
    directory = registry_dir(prefix)
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError), open(
            os.path.join(directory, "state.json")) as f:
        state = json.load(f)
    if state.get("pid") and lab.process_alive(state["pid"], state.get("start_time")):
        lab.stop_process(state["pid"], start_time=state.get("start_time"))
    existed = os.path.isdir(directory)
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(registryconfig.RegistryConfigError):
        entry = registryconfig.load().get(state.get("address", ADDRESS))
        if entry is not None and (not state or entry.netns == state.get("netns")):
            registryconfig.remove(state.get("address", ADDRESS))
    return existed
