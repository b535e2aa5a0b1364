"""Which registries this machine knows and how to reach them: one JSON file.

    {"registries": {"203.0.113.1:5000": {"ca": "/path/ca.pem", "username": "lab",
                                        "password": "...", "netns": "/run/netns/x-ext",
                                        "address": "", "insecure": false}}}

Read by the CLI (``image pull``/``push``), by the controller (the credentials and CA it hands
agents with an image's manifest reference, and where ``image load`` pushes to) and written by the
lab when it runs a registry. The default file is ``<run dir>/registries.json``
(``$SDNCTL_REGISTRY_CONFIG`` moves it); it holds passwords, so it is written 0600. ``netns`` is
only for processes in the root namespace (the CLI, the controller): they make their connections
from inside it. A registry with no entry is reached anonymously, with the system's trust store.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from sdnctl.api import paths
from sdnctl.api.registry import Endpoint


class RegistryConfigError(ValueError):
    pass


@dataclass(frozen=True)
class RegistryEntry:
    ca: str = ""  # a CA file (PEM)
    username: str = ""
    password: str = ""
    netns: str = ""
    address: str = ""
    insecure: bool = False


def config_path() -> str:
    return os.environ.get("SDNCTL_REGISTRY_CONFIG") or os.path.join(paths.run_dir(),
                                                                    "registries.json")


def load(path: str | None = None) -> dict[str, RegistryEntry]:
    path = path or config_path()
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RegistryConfigError(f"{path}: {e}") from e
    registries = doc.get("registries") if isinstance(doc, dict) else None
    if not isinstance(registries, dict):
        raise RegistryConfigError(f"{path}: expected {{\"registries\": {{HOST: {{...}}}}}}")
    found = {}
    for name, raw in registries.items():
        if not isinstance(raw, dict):
            raise RegistryConfigError(f"{path}: registries.{name}: expected an object")
        unknown = set(raw) - set(RegistryEntry.__dataclass_fields__)
        if unknown:
            raise RegistryConfigError(f"{path}: registries.{name}: unknown field(s) "
                                      f"{', '.join(sorted(unknown))}")
        try:
            found[name] = RegistryEntry(**raw)
        except TypeError as e:
            raise RegistryConfigError(f"{path}: registries.{name}: {e}") from e
    return found


def save(entries: dict[str, RegistryEntry], path: str | None = None) -> None:
    path = path or config_path()
    doc = {"registries": {name: asdict(e) for name, e in sorted(entries.items())}}
    paths.write_atomic(path, json.dumps(doc, indent=2) + "\n", 0o600)


def put(registry: str, entry: RegistryEntry, path: str | None = None) -> None:
    entries = load(path)
    entries[registry] = entry
    save(entries, path)


def remove(registry: str, path: str | None = None) -> None:
    entries = load(path)
    if entries.pop(registry, None) is not None:
        save(entries, path)


def endpoint(registry: str, *, use_netns: bool = True, path: str | None = None,
             insecure: bool = False) -> Endpoint:
    """The endpoint for ``registry`` as configured (anonymous, system trust when not)."""
    entry = load(path).get(registry, RegistryEntry())
    return Endpoint(registry=registry, ca_file=entry.ca, username=entry.username,
                    password=entry.password, insecure=insecure or entry.insecure,
                    address=entry.address, netns=entry.netns if use_netns else "")
