"""A tiny server for namespace tests: every listener answers with the address it saw.

    python peer_server.py PROTO HOST PORT [PROTO HOST PORT ...]

TCP: accepts, writes "peer=<ip>:<port>\\n", closes. UDP: answers each datagram with the same
line. Runs until killed. Used as a container's command, so the test proves what source address
reached the container (no NAT on the way in).
"""

from __future__ import annotations

import socket
import sys
import threading


def serve_tcp(host: str, port: int) -> None:
    with socket.create_server((host, port), reuse_port=False) as server:
        while True:
            conn, peer = server.accept()
            with conn:
                conn.sendall(f"peer={peer[0]}:{peer[1]}\n".encode())


def serve_udp(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        while True:
            _, peer = sock.recvfrom(2048)
            sock.sendto(f"peer={peer[0]}:{peer[1]}\n".encode(), peer)


def main(argv: list[str]) -> None:
    if not argv or len(argv) % 3:
        raise SystemExit(__doc__)
    threads = []
    for i in range(0, len(argv), 3):
        proto, host, port = argv[i], argv[i + 1], int(argv[i + 2])
        target = serve_tcp if proto == "tcp" else serve_udp
        threads.append(threading.Thread(target=target, args=(host, port), daemon=True))
    for t in threads:
        t.start()
    print("serving", " ".join(argv), flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1:])
