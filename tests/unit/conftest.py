"""Fixtures shared by the unit tests: the gRPC API fixtures live in ``apitest.py``."""

from apitest import api, etcd, front, mem_api, server, start_server, store

__all__ = ["api", "etcd", "front", "mem_api", "server", "start_server", "store"]
