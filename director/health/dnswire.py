"""DNS messages for the DNS check, with struct (RFC 1035): a query out, a response in.

Only what a health check reads: header, question, and the answer section's records rendered as
text the way `dig +short` prints them (`192.0.2.1`, `10 mail.example.`, `"v=spf1 -all"` without
the quotes), so that a configured `answer` reads naturally.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPES = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
}
TYPE_NAMES = {number: name for name, number in TYPES.items()}
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}
RCODE_NAMES = {number: name for name, number in RCODES.items()}
CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_MAX_POINTERS = 64  # a compression loop must not spin


class DnsError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    type: int
    text: str


@dataclass(frozen=True, slots=True)
class Message:
    ident: int
    flags: int
    questions: tuple[tuple[str, int], ...]
    answers: tuple[Record, ...]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name not in ("", ".") else []:
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) <= 63:
            raise DnsError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def encode_query(ident: int, name: str, qtype: int, recursion: bool = True) -> bytes:
    flags = 0x0100 if recursion else 0
    return _HEADER.pack(ident, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at offset (following compression pointers) and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    for _ in range(_MAX_POINTERS):
        if offset >= len(data):
            raise DnsError("name runs past the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsError("truncated compression pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        if length & 0xC0:
            raise DnsError("unknown label type")
        offset += 1
        if length == 0:
            text = ".".join(labels) + "." if labels else "."
            return text, end if end is not None else offset
        if offset + length > len(data):
            raise DnsError("label runs past the end")
        labels.append(data[offset : offset + length].decode("ascii", "backslashreplace"))
        offset += length
    raise DnsError("compression pointer loop")


def _rdata_text(data: bytes, rtype: int, start: int, length: int) -> str:
    rdata = data[start : start + length]
    if rtype == TYPES["A"] and length == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == TYPES["AAAA"] and length == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (TYPES["CNAME"], TYPES["NS"], TYPES["PTR"]):
        return read_name(data, start)[0]
    if rtype == TYPES["MX"] and length >= 3:
        return f"{struct.unpack_from('!H', data, start)[0]} {read_name(data, start + 2)[0]}"
    if rtype == TYPES["SRV"] and length >= 7:
        priority, weight, port = struct.unpack_from("!HHH", data, start)
        return f"{priority} {weight} {port} {read_name(data, start + 6)[0]}"
    if rtype == TYPES["SOA"]:
        mname, at = read_name(data, start)
        rname, at = read_name(data, at)
        numbers = struct.unpack_from("!IIIII", data, at)
        return " ".join([mname, rname, *map(str, numbers)])
    if rtype == TYPES["TXT"]:
        parts, at = [], 0
        while at < len(rdata):
            size = rdata[at]
            parts.append(rdata[at + 1 : at + 1 + size].decode("utf-8", "backslashreplace"))
            at += 1 + size
        return "".join(parts)
    return rdata.hex()


def decode(data: bytes) -> Message:
    if len(data) < _HEADER.size:
        raise DnsError(f"{len(data)} bytes is shorter than a DNS header")
    try:
        ident, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
        offset = _HEADER.size
        questions = []
        for _ in range(qdcount):
            name, offset = read_name(data, offset)
            qtype, _qclass = struct.unpack_from("!HH", data, offset)
            offset += 4
            questions.append((name, qtype))
        answers = []
        for _ in range(ancount):
            name, offset = read_name(data, offset)
            rtype, _rclass, _ttl, length = _RR.unpack_from(data, offset)
            offset += _RR.size
            if offset + length > len(data):
                raise DnsError("record data runs past the end")
            answers.append(Record(name, rtype, _rdata_text(data, rtype, offset, length)))
            offset += length
    except struct.error as exc:
        raise DnsError(f"truncated message: {exc}") from None
    return Message(ident, flags, tuple(questions), tuple(answers))


def _normal(rtype: int, text: str) -> str:
    text = text.strip()
    if rtype in (TYPES["A"], TYPES["AAAA"]):
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return text
    if rtype == TYPES["TXT"]:
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text
    # Names: case-insensitive, with or without the final dot.
    return " ".join(word.lower().rstrip(".") or "." for word in text.split())


def answer_matches(expected: str, record: Record) -> bool:
    return _normal(record.type, expected) == _normal(record.type, record.text)
