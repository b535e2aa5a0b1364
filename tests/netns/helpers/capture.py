"""tcpdump that is proved to be capturing before a test relies on it, negatives included.

Design note. "tcpdump printed *listening on*" does not mean that its filter is attached and
matches what the test sends, and a fixed sleep is a guess: either way a negative check ("no
forged packet was delivered") passes when the capture started late. So :func:`capture` starts
tcpdump line-buffered (``-l --immediate-mode``), reads its output in a thread, and sends a
positive control until tcpdump prints it: a packet of the kind the test looks for (ICMP echo,
UDP or TCP SYN, matching the test's own filter), sent out of the captured interface of the
captured namespace through a packet socket. Only then does the test act. ``stop()`` sends one
more control and waits for it (a barrier: what the test sent before is in the output by then)
before it returns what was printed, control lines left out.

A control frame goes out with the interface's own MAC as both source and destination: the peer
drops it at layer 2 (not for its MAC; a bridge does not send a frame back out of the port it
came in on), so it reaches no stack and no other namespace; with its default source address (the
interface's own) it passes anti-spoofing rules too, and counts in no firewall counter. Its payload
carries :data:`CONTROL_PAYLOAD` so that a test reading a pcap can skip control packets.
"""

from __future__ import annotations

import contextlib
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: In every control packet's payload; ``is_control_packet`` looks for it in a pcap's packets.
CONTROL_PAYLOAD = b"sdnctl-capture-control"
#: Control packets number themselves from here: ICMP sequence or TCP/UDP source port.
CONTROL_BASE = 0xC000

# Runs in the captured namespace: the interface's MAC and IPv4 address (ioctl, since /sys shows
# the mount namespace's links), then sends the frame that the caller built around them.
_SEND = r"""
import fcntl, socket, struct, sys
ifname, template = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = struct.pack("256s", ifname.encode())
mac = fcntl.ioctl(s.fileno(), 0x8927, req)[18:24]          # SIOCGIFHWADDR
try:
    ip = fcntl.ioctl(s.fileno(), 0x8915, req)[20:24]       # SIOCGIFADDR
except OSError:
    ip = bytes(4)
frame = bytearray(template.replace(b"\xaa" * 6, mac).replace(b"\xbb" * 4, ip))
total = sum(struct.unpack("!10H", bytes(frame[14:34])))
while total >> 16:
    total = (total & 0xFFFF) + (total >> 16)
frame[24:26] = struct.pack("!H", ~total & 0xFFFF)          # the IPv4 header checksum
p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
p.bind((ifname, 0))
p.send(bytes(frame))
"""
_OWN_MAC, _OWN_IP = b"\xaa" * 6, b"\xbb" * 4
#: tcpdump starts each packet with its time; lines without one continue the packet before.
_RECORD_START = re.compile(r"\d\d:\d\d:\d\d\.\d+ ")


@dataclass(frozen=True)
class Control:
    """The positive control: it must match the capture's filter.

    ``proto`` is ``icmp`` (echo request with id ``ident``), ``udp`` or ``tcp`` (a SYN) to
    ``dport``; ``src`` defaults to the interface's own IPv4 address.
    """

    proto: str = "icmp"
    dst: str = "198.51.100.254"
    src: str | None = None
    dport: int = 9
    ident: int = 0xC0DE


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(control: Control, number: int) -> bytes:
    """An Ethernet frame of ``control`` numbered ``number``; MAC (and source) filled in later."""
    src = socket_aton(control.src) if control.src else _OWN_IP
    dst = socket_aton(control.dst)
    if control.proto == "icmp":
        body = struct.pack("!BBHHH", 8, 0, 0, control.ident, number) + CONTROL_PAYLOAD
        body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
        proto = 1
    elif control.proto == "udp":
        # checksum 0: none (legal for UDP over IPv4), as the source may be filled in later
        body = struct.pack("!HHHH", number, control.dport, 8 + len(CONTROL_PAYLOAD), 0)
        body += CONTROL_PAYLOAD
        proto = 17
    elif control.proto == "tcp":
        body = struct.pack("!HHIIBBHHH", number, control.dport, 0, 0, 5 << 4, 0x02, 1024, 0, 0)
        body += CONTROL_PAYLOAD
        proto = 6
    else:
        raise ValueError(f"no control packet of kind {control.proto!r}")
    # its checksum is computed where it is sent, once the source is known
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), number, 0, 64, proto, 0,
                         src, dst)
    return _OWN_MAC + _OWN_MAC + b"\x08\x00" + header + body


def socket_aton(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def is_control_packet(raw: bytes) -> bool:
    """Whether a captured packet (its bytes, e.g. ``bytes(scapy_packet)``) is a control."""
    return CONTROL_PAYLOAD in raw


class Capture:
    """A running tcpdump whose output a thread collects; see the module's note."""

    def __init__(self, netns: str, ifname: str, bpf: str, args: tuple[str, ...],
                 control: Control) -> None:
        self.netns, self.ifname, self.control = netns, ifname, control
        self._lines: list[str] = []
        self._err: list[str] = []
        self._changed = threading.Condition()
        self._sent: list[int] = []
        # -Z root: with -w, tcpdump would open the file after dropping to its own user.
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", "tcpdump", "-n", "-l", "--immediate-mode", "-Z", "root",
             "-i", ifname, *args, bpf],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._readers = [threading.Thread(target=self._read, args=(stream, into), daemon=True)
                         for stream, into in ((self.proc.stdout, self._lines),
                                              (self.proc.stderr, self._err))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                line = line.rstrip("\n")
                if into is self._lines and into and not _RECORD_START.match(line):
                    into[-1] += "\n" + line  # a packet's second line (e.g. VXLAN's inner frame)
                else:
                    into.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _is_control(self, line: str) -> bool:
        if self.control.proto == "icmp":
            return any(f"id {self.control.ident}, seq {n}," in line for n in self._sent)
        return any(re.search(rf"\.{n} > ", line) for n in self._sent)

    def _send_control(self) -> int:
        number = CONTROL_BASE + len(self._sent)
        self._sent.append(number)
        done = subprocess.run(
            ["nsenter", f"--net={self.netns}", sys.executable, "-c", _SEND, self.ifname,
             _frame(self.control, number).hex()], capture_output=True, text=True, timeout=30,
            check=False)
        assert done.returncode == 0, f"could not send a control packet: {done.stderr}"
        return number

    def _control_seen(self, number: int) -> bool:
        needle = (f"id {self.control.ident}, seq {number}," if self.control.proto == "icmp"
                  else f".{number} > ")
        return any(needle in line for line in self._lines)

    def sync(self, timeout: float = 15.0) -> None:
        """Send controls until tcpdump prints one: it captures, and has printed what came
        before that control."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            number = self._send_control()
            wait_until = min(deadline, time.monotonic() + 0.5)
            with self._changed:
                while not self._control_seen(number):
                    left = wait_until - time.monotonic()
                    if left <= 0 or self.proc.poll() is not None:
                        break
                    self._changed.wait(left)
                if self._control_seen(number):
                    return
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"tcpdump in {self.netns} on {self.ifname} never showed the "
                             f"control packet ({self.control}): {self._err} {self._lines}")

    def lines(self) -> list[str]:
        """What tcpdump printed so far, one entry per packet, control packets left out."""
        with self._changed:
            return [line for line in self._lines if not self._is_control(line)]

    def wait_for(self, needle: str, timeout: float = 15.0, count: int = 1) -> str:
        """The ``count``-th packet (not a control) whose line holds ``needle``, waiting up to
        ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self._lines
                         if needle in line and not self._is_control(line)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (
                    f"tcpdump never printed {needle!r} {count} times: {self.lines()} {self._err}")
                self._changed.wait(left)

    def stop(self) -> str:
        """A last control (a barrier), then stop tcpdump; what it printed, controls left out."""
        if self.proc.poll() is None:
            self.sync()
        self._end()
        return "\n".join(self.lines())

    def _end(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)


@contextlib.contextmanager
def capture(netns: str, ifname: str, bpf: str, *args: str,
            control: Control | None = None) -> Iterator[Capture]:
    """tcpdump on ``ifname`` of the namespace at ``netns`` with filter ``bpf`` (extra tcpdump
    ``args`` such as ``-e`` or ``-w FILE --print``), returned once a control was seen."""
    cap = Capture(netns, ifname, bpf, args, control or Control())
    try:
        cap.sync()
        yield cap
    finally:
        cap._end()


def start_pinger(argv: list[str], timeout: float = 15.0) -> subprocess.Popen[str]:
    """Start ``argv`` (a ``ping`` without ``-q``, under ``nsenter``) and return once its first
    reply came back: the flow runs. Its summary (``communicate()``) still reports the loss."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while not any(" bytes from " in line for line in seen):
        line = proc.stdout.readline()  # ping prints a line per reply: this never blocks long
        seen.append(line)
        if not line or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{argv} never got a reply: {seen}")
    return proc
