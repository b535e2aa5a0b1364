"""HPACK (RFC 7541), the header compression of HTTP/2, as much as a gRPC client needs.

Design note. ``sdnctl.api.wire`` (the CLI's gRPC) must read any header block a server sends:
indexed fields, literals with or without indexing, the dynamic table with its size updates, and
Huffman-coded strings. It writes its own headers in the simplest form the format has (literal,
not indexed, no Huffman), so the encoder keeps no state. The Huffman code is canonical, so the
table below is only each symbol's code length (RFC 7541 appendix B; symbol 256 is EOS); the
codes follow from sorting the symbols by (length, symbol). Standalone, with no import of
``hpack`` (the PyPI package loads ``logging``: 7 ms of a CLI start).
"""

from __future__ import annotations

from collections import deque

#: RFC 7541 appendix A: the static table, index 1 first.
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

#: RFC 7541 appendix B: the Huffman code's length in bits of symbols 0..256, one byte each.
HUFFMAN_LENGTHS = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b08"
    "0606060505050606060606060607080f060c0a0d0607070707070707070707070707070707070707070707080708"
    "0d130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c141614141616161716"
    "171717171718171818161718171717171516171617171816151416161717151716161815161717151516151716"
    "171714161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a1c1b1b1b141814"
    "15161515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e")
EOS = 256
#: A header table entry's size: its name and value in octets plus this (RFC 7541 4.1).
ENTRY_OVERHEAD = 32


class HpackError(ValueError):
    """A header block that breaks RFC 7541: the connection cannot go on (COMPRESSION_ERROR)."""


def _huffman_codes() -> dict[tuple[int, int], int]:
    """(length, code) -> symbol, from the canonical code's lengths."""
    order = sorted(range(EOS + 1), key=lambda s: (HUFFMAN_LENGTHS[s], s))
    codes: dict[tuple[int, int], int] = {}
    code, previous = 0, HUFFMAN_LENGTHS[order[0]]
    for i, symbol in enumerate(order):
        length = HUFFMAN_LENGTHS[symbol]
        if i:
            code = (code + 1) << (length - previous)
            previous = length
        codes[(length, code)] = symbol
    return codes


_CODES = _huffman_codes()
_LONGEST = max(HUFFMAN_LENGTHS)


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded string's octets; HpackError for EOS, a code too long or bad padding."""
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            symbol = _CODES.get((length, code))
            if symbol is None:
                if length > _LONGEST:
                    raise HpackError("invalid Huffman code")
                continue
            if symbol == EOS:
                raise HpackError("EOS in a Huffman-coded string")
            out.append(symbol)
            code = length = 0
    # What is left must be padding: fewer than 8 bits, all ones (a prefix of EOS).
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def encode_integer(value: int, prefix_bits: int) -> bytes:
    """``value`` in a ``prefix_bits``-bit prefix (the octet's other bits zero: a string's
    length without Huffman)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(headers: list[tuple[str, str]]) -> bytes:
    """A header block: each field a literal without indexing with a new name, no Huffman."""
    out = bytearray()
    for name, value in headers:
        out.append(0)
        for text in (name.encode(), value.encode()):
            out += encode_integer(len(text), 7)
            out += text
    return bytes(out)


class Decoder:
    """One connection's decoding context: its dynamic table lives as long as the connection."""

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size  # what we announced (SETTINGS_HEADER_TABLE_SIZE)
        self.size_limit = max_size  # what the encoder last chose, at most max_size
        self.table: deque[tuple[str, str]] = deque()  # newest first
        self.size = 0

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        pos = 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = self._integer(block, pos, 7)
                headers.append(self._entry(index))
            elif byte & 0x40:  # literal with incremental indexing
                name, value, pos = self._literal(block, pos, 6)
                headers.append((name, value))
                self._add(name, value)
            elif byte & 0x20:  # dynamic table size update
                size, pos = self._integer(block, pos, 5)
                if size > self.max_size:
                    raise HpackError(f"table size {size} over the {self.max_size} allowed")
                self.size_limit = size
                self._evict(0)
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(block, pos, 4)
                headers.append((name, value))
        return headers

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if 0 <= dynamic < len(self.table):
            return self.table[dynamic]
        raise HpackError(f"header index {index} not in the table")

    def _literal(self, block: bytes, pos: int, prefix_bits: int) -> tuple[str, str, int]:
        index, pos = self._integer(block, pos, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise HpackError("header block ends inside a string")
        huffman = block[pos] & 0x80
        length, pos = self._integer(block, pos, 7)
        if pos + length > len(block):
            raise HpackError("header block ends inside a string")
        raw = block[pos:pos + length]
        text = huffman_decode(raw) if huffman else raw
        return text.decode("utf-8", "replace"), pos + length

    @staticmethod
    def _integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            if pos >= len(block) or shift > 28:
                raise HpackError("header block ends inside an integer")
            byte = block[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos

    def _add(self, name: str, value: str) -> None:
        entry = len(name.encode()) + len(value.encode()) + ENTRY_OVERHEAD
        self._evict(entry)
        if entry <= self.size_limit:  # an entry larger than the table empties it, stays out
            self.table.appendleft((name, value))
            self.size += entry

    def _evict(self, room: int) -> None:
        while self.table and self.size + room > self.size_limit:
            name, value = self.table.pop()
            self.size -= len(name.encode()) + len(value.encode()) + ENTRY_OVERHEAD
