"""The audit log: what it records, that it survives a restart, and `Events` streaming."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
from apitest import TIMEOUT, Api, rpc_error

from sdnctl.controller.audit import REQUEST_MAX, AuditLog
from sdnctl.controller.server import RunningServer
from sdnctl.v1 import sdnctl_pb2 as pb


def test_records_survive_a_restart_and_keep_their_numbers(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.log")
    log = AuditLog(path)
    log.record("local", "/m/A", "{}", "OK", revision=3)
    log.record("user:bob(viewer)", "/m/B", "x" * (REQUEST_MAX + 10), "PERMISSION_DENIED", "no")
    log.close()
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "a") as f:
        f.write('{"torn": \n')  # a crash mid-line is skipped
    again = AuditLog(path)
    assert [(r.seq, r.method) for r in again.since(0)] == [(1, "/m/A"), (2, "/m/B")]
    assert again.since(0)[1].request.endswith("...(truncated)")
    assert again.record("local", "/m/C", "{}", "OK").seq == 3
    again.close()
    assert json.loads(Path(path).read_text().splitlines()[-1])["seq"] == 3


def test_every_mutating_call_is_recorded_with_its_outcome(front: Api,
                                                         server: RunningServer) -> None:
    api = front
    api.container("web")
    rpc_error(lambda: api.container("web"), grpc.StatusCode.ALREADY_EXISTS)
    api.ctl.ListContainers(pb.ListRequest(), timeout=TIMEOUT)  # a read: not recorded
    api.sync.ReportStatus(pb.ReportStatusRequest(host="h1"), timeout=TIMEOUT)  # telemetry
    assert server.audit is not None
    records = server.audit.since(0)
    got = [(r.identity, r.method.rsplit("/", 1)[1], r.code) for r in records]
    assert got == [("local", "CreateHost", "OK"), ("local", "CreateNetwork", "OK"),
                   ("local", "CreateContainer", "OK"),
                   ("local", "CreateContainer", "ALREADY_EXISTS")]
    assert records[2].revision > 0 and '"name": "web"' in records[2].request
    assert "already exists" in records[3].message


def test_events_streams_history_then_follows(front: Api) -> None:
    api = front
    call = api.ctl.Events(pb.EventsRequest(follow=True, since=1), timeout=30)
    try:
        first = next(call)
        assert (first.seq, first.method.rsplit("/", 1)[1]) == (2, "CreateNetwork")
        api.delete("Network", "front")
        event = next(call)  # the call's deadline bounds the wait
        assert (event.seq, event.method.rsplit("/", 1)[1], event.code) == \
            (3, "DeleteNetwork", "OK")
    finally:
        call.cancel()
    done = list(api.ctl.Events(pb.EventsRequest(), timeout=TIMEOUT))
    assert [e.seq for e in done] == [1, 2, 3]
    rpc_error(lambda: list(api.ctl.Events(pb.EventsRequest(since=-1), timeout=TIMEOUT)),
              grpc.StatusCode.INVALID_ARGUMENT)


def test_the_file_rotates_by_size_and_keeps_a_count(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), max_bytes=2000, keep=2)
    for i in range(60):
        log.record("local", f"/m/{i}", "{}", "OK")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]  # no .3: keep=2
    seqs = []
    for name in ("audit.log.2", "audit.log.1", "audit.log"):
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= 2000
        seqs += [json.loads(line)["seq"] for line in text.splitlines()]  # whole lines only
    assert seqs == list(range(seqs[0], 61))  # contiguous, the newest last: nothing lost
    assert seqs[0] > 1  # the oldest went with the file beyond the kept count
    again = AuditLog(str(path), max_bytes=2000, keep=2)  # numbering carries on
    assert again.record("local", "/m/next", "{}", "OK").seq == 61
    again.close()
