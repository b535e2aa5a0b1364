"""A store named by its spec (``--store``, ``migrate --from/--to``): open it, and name it back.

Design note. The server and ``migrate`` both turn the same text into a :class:`Store`; the
mapping lives here, beside the drivers, so neither imports the other.
"""

from __future__ import annotations

import argparse

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


def add_etcd_arguments(parser: argparse.ArgumentParser) -> None:
    """``--etcd-cacert/--etcd-cert/--etcd-key/--etcd-user/--etcd-password-file``: how every
    command that opens an etcd store (``serve``, ``migrate``) talks to etcd."""
    parser.add_argument("--etcd-cacert", default="", metavar="FILE",
                        help="talk to etcd over TLS, trusting this CA")
    parser.add_argument("--etcd-cert", default="", metavar="FILE",
                        help="client certificate for etcd (its --client-cert-auth)")
    parser.add_argument("--etcd-key", default="", metavar="FILE", help="its key")
    parser.add_argument("--etcd-user", default="", metavar="NAME",
                        help="etcd user (etcd with auth enabled)")
    parser.add_argument("--etcd-password-file", default="", metavar="FILE",
                        help="file holding the etcd user's password (first line)")


def etcd_access(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EtcdAccess:
    """The etcd flags checked (a usage error names the flag) and read."""
    if (args.etcd_cert or args.etcd_key) and not (args.etcd_cert and args.etcd_key
                                                   and args.etcd_cacert):
        parser.error("--etcd-cert and --etcd-key go together, with --etcd-cacert")
    if bool(args.etcd_user) != bool(args.etcd_password_file):
        parser.error("--etcd-user and --etcd-password-file go together")
    password = ""
    if args.etcd_password_file:
        try:
            with open(args.etcd_password_file) as f:
                password = f.readline().rstrip("\n")
        except OSError as e:
            parser.error(f"--etcd-password-file: {e}")
    return EtcdAccess(args.etcd_cacert, args.etcd_cert, args.etcd_key, args.etcd_user,
                      password)
