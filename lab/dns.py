"""A small real DNS responder for the lab's DNS health checks (asyncio, UDP).

    python -m lab.dns serve --listen 0.0.0.0:53 --zone ZONE.json

The zone file is JSON, re-read whenever its modification time changes (a test rewrites it to
make the server fail or recover):

    {"records": {"www.example.": [["A", "192.0.2.80"], ["MX", "10 mail.example."]]},
     "rcode": null, "silent": false}

A query for a name in `records` gets the records of the asked type (CNAME records are added to
any query for the name); an unknown name gets NXDOMAIN. `rcode` (`SERVFAIL`, `REFUSED`, ...)
overrides every answer; `silent: true` drops every query. `serve` prints `ready` once bound.

The wire format is written here with struct, independently of director/health/dnswire.py, so
that the check and the responder do not share a mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV"}
TYPE_CODES = {name: code for code, name in QTYPES.items()}
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}


def wire_name(name: str) -> bytes:
    labels = [label for label in name.strip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\x00"


def rdata(rtype: str, text: str) -> bytes:
    if rtype == "A":
        return ipaddress.IPv4Address(text).packed
    if rtype == "AAAA":
        return ipaddress.IPv6Address(text).packed
    if rtype in ("CNAME", "NS", "PTR"):
        return wire_name(text)
    if rtype == "MX":
        preference, host = text.split()
        return struct.pack("!H", int(preference)) + wire_name(host)
    if rtype == "SRV":
        priority, weight, port, host = text.split()
        return struct.pack("!HHH", int(priority), int(weight), int(port)) + wire_name(host)
    if rtype == "TXT":
        raw = text.encode()
        return b"".join(
            bytes([len(raw[i : i + 255])]) + raw[i : i + 255] for i in range(0, len(raw), 255)
        )
    raise ValueError(f"record type {rtype} not served")


def parse_question(packet: bytes) -> tuple[int, int, str, int, int] | None:
    """(id, flags, name, qtype, end of question) of a query, or None for anything else."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, at = [], 12
    while at < len(packet) and packet[at]:
        size = packet[at]
        if size & 0xC0:
            return None  # queries carry no compression
        labels.append(packet[at + 1 : at + 1 + size].decode("ascii", "replace").lower())
        at += 1 + size
    at += 1
    if at + 4 > len(packet):
        return None
    qtype = struct.unpack_from("!H", packet, at)[0]
    return ident, flags, ".".join(labels) + ".", qtype, at + 4


class Zone:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = -1.0
        self.data: dict[str, Any] = {}

    def current(self) -> dict[str, Any]:
        try:
            stamp = os.stat(self.path).st_mtime_ns / 1e9
        except OSError:
            return self.data
        if stamp != self._stamp:
            with contextlib.suppress(OSError, ValueError):
                self.data = json.loads(self.path.read_text())
                self._stamp = stamp
        return self.data


def answer(packet: bytes, zone: dict[str, Any]) -> bytes | None:
    question = parse_question(packet)
    if question is None or zone.get("silent"):
        return None
    ident, flags, name, qtype, end = question
    records = {
        key.lower().rstrip(".") + ".": value for key, value in zone.get("records", {}).items()
    }
    forced = zone.get("rcode")
    found: list[tuple[str, str]] = []
    if forced:
        rcode = RCODES[forced]
    elif name not in records:
        rcode = RCODES["NXDOMAIN"]
    else:
        rcode = 0
        wanted = QTYPES.get(qtype)
        found = [(t, v) for t, v in records[name] if t == wanted or t == "CNAME"]
    # QR, AA, RD copied, RA; the rcode in the low bits.
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    out = struct.pack("!HHHHHH", ident, reply_flags, 1, len(found), 0, 0) + packet[12:end]
    for rtype, text in found:
        data = rdata(rtype, text)
        # 0xC00C: a pointer to the question's name, right after the 12-byte header.
        out += struct.pack("!HHHIH", 0xC00C, TYPE_CODES[rtype], 1, 60, len(data)) + data
    return out


class Responder(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queries += 1
        reply = answer(data, self.zone.current())
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def start(listen: str, zone_path: Path) -> tuple[asyncio.DatagramTransport, Responder]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Responder(Zone(zone_path)), local_addr=(host, int(port)), family=family
    )
    return transport, protocol


async def serve(listen: str, zone_path: Path) -> None:
    transport, _ = await start(listen, zone_path)
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.dns", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--listen", default="0.0.0.0:53", metavar="HOST:PORT")
    srv.add_argument("--zone", required=True, type=Path)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.zone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
