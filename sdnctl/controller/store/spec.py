"""A store named by its spec (``--store``, ``migrate --from/--to``): open it, and name it back.

Design note. The server and ``migrate`` both turn the same text into a :class:`Store`; the
mapping lives here, beside the drivers, so neither imports the other.
"""

from __future__ import annotations

from sdnctl.api import paths
from sdnctl.controller.store.base import Store
from sdnctl.controller.store.etcd import EtcdAccess, EtcdStore, parse_url
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.controller.store.sqlite import SqliteStore


def open_store(spec: str, db_path: str = "", etcd_access: EtcdAccess | None = None) -> Store:
    """The store ``spec`` names: ``sqlite:PATH``, ``etcd://host:port,...[/prefix]``,
    ``memory``, or ``sqlite`` (the file ``db_path``). ``etcd_access``: TLS and credentials for
    etcd."""
    if spec == "memory":
        return MemoryStore()
    if spec == "sqlite":
        return SqliteStore(db_path or paths.controller_db())
    if spec.startswith("sqlite:"):
        return SqliteStore(spec.removeprefix("sqlite:").removeprefix("//"))
    if spec.startswith("etcd://"):
        endpoints, prefix = parse_url(spec)
        return EtcdStore(endpoints, prefix=prefix, access=etcd_access)
    raise ValueError(f"unknown store {spec!r}: sqlite:PATH, etcd://host:port,...[/prefix] "
                     "or memory")


def describe_store(store: Store) -> str:
    if isinstance(store, SqliteStore):
        return f"sqlite:{store.path}"
    if isinstance(store, EtcdStore):
        return f"etcd://{','.join(store.endpoints)}{store.prefix}"
    return "memory"
