"""A controller serves more agents than a small thread pool would (each Watch holds a worker)."""

from __future__ import annotations

from pathlib import Path

import grpc

from sdnctl.controller.server import create_server
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

AGENTS = 64


def test_sixty_four_open_watch_streams_leave_the_api_answering(tmp_path: Path) -> None:
    running = create_server(f"unix:{tmp_path / 'c.sock'}", MemoryStore())
    channel = grpc.insecure_channel(running.address)
    streams = []
    try:
        sync = pb_grpc.HostSyncStub(channel)
        for i in range(AGENTS):
            sync.Register(pb.RegisterRequest(host=f"h{i}", underlay_ip=f"192.0.2.{i + 10}"),
                          timeout=5)
            stream = sync.Watch(pb.WatchRequest(host=f"h{i}"))
            assert next(stream).snapshot  # the stream is open and holds a worker
            streams.append(stream)
        api = pb_grpc.ControllerStub(channel)
        hosts = api.ListHosts(pb.ListRequest(), timeout=5).hosts
        assert len(hosts) == AGENTS
        assert all(h.agent_connected for h in hosts)
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()
        running.stop()
