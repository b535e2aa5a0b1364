"""A tiny upstream DNS server for the lab's outside world (dnslib, UDP and TCP).

Usage: dns_upstream.py ADDRESS PORT. Prints "ready" once both sockets listen.
www.example: one A record; big.example: 80 (too big for 512 bytes: truncated over UDP);
anything else: NXDOMAIN.
"""

from __future__ import annotations

import sys
import time

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer


class Upstream(BaseResolver):  # type: ignore[misc]
    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        name = str(request.q.qname).lower()
        reply = request.reply()
        if name == "www.example.":
            reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A("203.0.113.80")))
        elif name == "big.example.":
            for i in range(80):
                reply.add_answer(RR(name, QTYPE.A, ttl=300, rdata=A(f"203.0.113.{i + 100}")))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def main(address: str, port: int) -> None:
    servers = [DNSServer(Upstream(), port=port, address=address, tcp=tcp,
                         logger=_Quiet()) for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
