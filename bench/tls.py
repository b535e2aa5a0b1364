"""What mutual TLS costs a controller's callers: the unix socket (no TLS) against the TCP listener.

Design note. One controller (in-memory store) is started in this process with a unix socket and
a TCP listener on 127.0.0.1 (mutual TLS, with a CRL), certificates from a temporary ``sdnctl pki``
directory. The caller runs in a process of its own (``--same-process``: in the controller's,
sharing its GIL). For each transport in turn, round by round: a loop of unary health checks
(µs per call), an image of one layer of random bytes loaded (LoadImage, a client stream),
saved back (SaveImage, a server stream) and its layer fetched as an agent (FetchBlob, a server
stream), in MB/s. The transports alternate as every comparison here does (unix, tcp, then tcp,
unix, ...), so neither always runs first. The machine (two cores) is shared: compare the two
transports within one run, and runs with each other only on the same machine. The script uses
only the public API, so it measures an older checkout too (run it with that checkout's
interpreter, e.g.
``/work/main/.venv/bin/python bench/tls.py``: before the TLS terminator, gRPC's own TLS).

    .venv/bin/python bench/tls.py [--quick | --full] [--mib N] [--calls N] [--rounds N]

``--quick`` (``make bench``): 64 MiB, 500 calls, 2 rounds; ``--full``: 256 MiB, 2000 calls, 3.
Results: ``bench/results/tls.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import harness
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdnctl.api import pki
from sdnctl.api.grpcchannel import open_channel
from sdnctl.api.imagefmt import BlobStore, Image, export_archive
from sdnctl.api.tlsfiles import TlsFiles
from sdnctl.controller.server import create_server
from sdnctl.controller.store.memory import MemoryStore
from sdnctl.lab.testimage import _config_bytes, _file, _layer_tar, _put_bytes
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

CHUNK = 1 << 20
TIMEOUT = 600.0


def build_archive(path: str, mib: int) -> tuple[int, str]:
    """A ``docker save`` archive of one layer holding ``mib`` MiB of random bytes; returns its
    size and the layer's digest."""
    layer = _layer_tar([_file("random.bin", os.urandom(mib << 20))])
    with tempfile.TemporaryDirectory(prefix="sdnctl-bench-") as tmp:
        blobs = BlobStore(tmp)
        diff_id = _put_bytes(blobs, layer)
        config = _config_bytes([diff_id])
        image = Image(_put_bytes(blobs, config), ("bench:tls",), (diff_id,), len(layer))
        export_archive(path, [image], blobs)
    return os.path.getsize(path), diff_id


def chunks(path: str) -> Iterator[pb.ImageChunk]:
    with open(path, "rb") as f:
        while data := f.read(CHUNK):
            yield pb.ImageChunk(data=data)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def drain(stream: Iterator[pb.ImageChunk]) -> int:
    return sum(len(c.data) for c in stream)


def measure(admin: grpc.Channel, agent: grpc.Channel, archive: str, size: int, digest: str,
            calls: int) -> dict[str, float]:
    ctl = pb_grpc.ControllerStub(admin)
    health = health_pb2_grpc.HealthStub(admin)
    request = health_pb2.HealthCheckRequest()
    health.Check(request, timeout=TIMEOUT)  # connected
    unary = timed(lambda: [health.Check(request, timeout=TIMEOUT) for _ in range(calls)])
    load = timed(lambda: ctl.LoadImage(chunks(archive), timeout=TIMEOUT))
    saved = 0

    def save() -> None:
        nonlocal saved
        saved = drain(ctl.SaveImage(pb.ImageRef(name="bench:tls"), timeout=TIMEOUT))

    save_s = timed(save)
    fetched = 0

    def fetch() -> None:
        nonlocal fetched
        fetched = drain(pb_grpc.HostSyncStub(agent).FetchBlob(pb.BlobRequest(digest=digest),
                                                              timeout=TIMEOUT))

    fetch_s = timed(fetch)
    ctl.RemoveImage(pb.ImageRef(name="bench:tls"), timeout=TIMEOUT)
    return {"unary_us": unary / calls * 1e6, "load_mbs": size / load / 1e6,
            "save_mbs": saved / save_s / 1e6, "fetch_mbs": fetched / fetch_s / 1e6}


def run_side(side: str, unix: str, tcp: str, pki_dir: str, archive: str, size: int,
             digest: str, calls: int) -> dict[str, float]:
    """One round of :func:`measure` over the unix socket or over TCP (mutual TLS)."""
    if side.startswith("unix"):
        admin, agent = grpc.insecure_channel(unix), grpc.insecure_channel(unix)
    else:
        admin = open_channel(tcp, TlsFiles.from_dir(pki_dir, "user", "bench"))
        agent = open_channel(tcp, TlsFiles.from_dir(pki_dir, "agent", "h1"))
    with admin, agent:
        return measure(admin, agent, archive, size, digest, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size_group = parser.add_mutually_exclusive_group()
    size_group.add_argument("--quick", action="store_true", help="64 MiB, 500 calls, 2 rounds")
    size_group.add_argument("--full", action="store_true", help="256 MiB, 2000 calls, 3 rounds")
    parser.add_argument("--mib", type=int, help="layer size")
    parser.add_argument("--calls", type=int, help="unary calls per round")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--same-process", action="store_true",
                        help="call from the controller's process (shares its GIL)")
    args = parser.parse_args(argv)
    harness.compile_bytecode()
    full = (256, 2000, 3) if args.full else (64, 500, 2)
    given = (args.mib, args.calls, args.rounds)
    args.mib, args.calls, args.rounds = (g or d for g, d in zip(given, full, strict=True))
    with tempfile.TemporaryDirectory(prefix="sdnctl-bench-tls-") as tmp:
        d = Path(tmp) / "pki"
        pki.init(d)
        pki.issue(d, "user", "bench", role="admin")
        pki.issue(d, "agent", "h1")
        archive = str(Path(tmp) / "image.tar")
        size, digest = build_archive(archive, args.mib)
        running = create_server([f"unix:{tmp}/c.sock", "tcp:127.0.0.1:0"], MemoryStore(),
                                tls=TlsFiles.from_dir(d, "controller"),
                                crl=str(d / "crl.pem"), sweep_interval=0,
                                blob_dir=str(Path(tmp) / "blobs"))
        unix, tcp = running.addresses
        sides = ("unix (no TLS)", "tcp (mutual TLS)")
        results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        spawn = multiprocessing.get_context("spawn")
        try:
            for i in range(args.rounds):
                # A, B, then B, A: neither transport always goes first (harness.alternate).
                for name in sides if i % 2 == 0 else sides[::-1]:
                    if args.same_process:
                        results[name].append(run_side(name, unix, tcp, str(d), archive, size,
                                                      digest, args.calls))
                        continue
                    with spawn.Pool(1) as pool:  # the caller in a process of its own
                        results[name].append(pool.apply(run_side, (
                            name, unix, tcp, str(d), archive, size, digest, args.calls)))
        finally:
            running.stop(grace=0)
    print(f"layer {args.mib} MiB, {args.calls} unary calls, medians of {args.rounds} rounds")
    print(f"{'transport':18} {'unary µs/call':>14} {'LoadImage MB/s':>15} "
          f"{'SaveImage MB/s':>15} {'FetchBlob MB/s':>15}")
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"{name:18} {med['unary_us']:14.0f} {med['load_mbs']:15.0f} "
              f"{med['save_mbs']:15.0f} {med['fetch_mbs']:15.0f}")
    units = {"unary_us": "µs/call", "load_mbs": "MB/s", "save_mbs": "MB/s", "fetch_mbs": "MB/s"}
    unix, tcp = sides
    harness.write_result("tls", {
        "mode": "full" if args.full else "quick",
        "params": {"mib": args.mib, "calls": args.calls, "rounds": args.rounds,
                   "same_process": args.same_process},
        "measurements": [harness.Measurement(f"{metric} {name}", unit,
                                             [r[metric] for r in results[name]])
                         for metric, unit in units.items() for name in sides],
        "comparisons": [harness.comparison(
            f"{metric} mutual TLS / unix", harness.ratio([r[metric] for r in results[tcp]],
                                                         [r[metric] for r in results[unix]]),
            "", None) for metric in units],
        "notes": [f"layer {args.mib} MiB, {args.calls} unary calls, {args.rounds} rounds; "
                  "what the TLS terminator (revocation at the handshake) costs TCP callers"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
