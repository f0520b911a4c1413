"""Lab HTTP backends and client: real servers that answer with their name, a client that counts.

    python -m lab.web serve --name rs1 --listen 0.0.0.0:80 [--listen [::]:80] [--status 200]
    python -m lab.web get http://192.0.2.100/ --count 60 [--timeout 2]

`serve` prints one line `ready` on stdout once every listener is bound, so a test waits for that
line rather than sleeping. Each response is JSON `{"name", "client", "server", "count"}`: the
client address the real server saw (NAT tests assert it is the client's, not the director's),
the local address it answered from (DR/TUN: the VIP) and how many requests that connection has
carried (keep-alive, for long-lived connections across a failover). `POST /status/NNN` changes
the status code later answers carry (health-check tests make a server fail and recover).

`get` opens a new connection per request (so the scheduler sees each), at most `--count`
requests, each bounded by `--timeout`, and prints `{"names": {name: n}, "errors": n,
"clients": [...]}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import socket
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

MAX_HEADER = 16384


def split_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Backend:
    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if len(head) > MAX_HEADER:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = ([*lines[0].split(" "), "", ""])[:3]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                served += 1
                if method == "POST" and path.startswith("/status/"):
                    self.status = int(path.rsplit("/", 1)[1])
                body = json.dumps(
                    {"name": self.name, "client": peer[0], "server": local[0], "count": served}
                ).encode()
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()


async def serve(name: str, listens: Sequence[str], status: int) -> None:
    backend = Backend(name, status)
    servers = []
    for item in listens:
        host, port = split_listen(item)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IP_FREEBIND / IPV6_FREEBIND: a DR/TUN real server may bind the VIP before it is on lo.
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND (also honoured for IPv6 sockets)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        servers.append(await asyncio.start_server(backend.handle, sock=sock))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def get_once(url: str, timeout: float, source: str | None = None) -> dict[str, Any]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn = http.client.HTTPConnection(
        host, parts.port or 80, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", parts.path or "/", headers={"Connection": "close"})
        response = conn.getresponse()
        data: dict[str, Any] = json.loads(response.read())
        data["status"] = response.status
        return data
    finally:
        conn.close()


def get_many(
    url: str, count: int, timeout: float, deadline: float, source: str | None = None
) -> dict[str, Any]:
    names: Counter[str] = Counter()
    clients: set[str] = set()
    servers: set[str] = set()
    errors: list[str] = []
    end = time.monotonic() + deadline
    for _ in range(count):
        if time.monotonic() > end:
            errors.append("deadline reached")
            break
        try:
            data = get_once(url, timeout, source)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        names[data["name"]] += 1
        clients.add(data["client"])
        servers.add(data["server"])
    return {
        "names": dict(names),
        "errors": len(errors),
        "error_samples": errors[:5],
        "clients": sorted(clients),
        "servers": sorted(servers),
    }


def hold_connection(url: str, timeout: float) -> int:
    """One TCP connection for the whole run (a long-lived client across a failover): for each
    line on stdin, one request on it, one JSON line out (`{"error": ...}` when it fails; a
    failed connection is not reopened, so the caller sees whether the same one survived)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)
    broken: str | None = None
    for _ in sys.stdin:
        if broken is None:
            try:
                conn.request("GET", parts.path or "/")
                response = conn.getresponse()
                data: dict[str, Any] = json.loads(response.read())
                data["status"] = response.status
                data["port"] = conn.sock.getsockname()[1] if conn.sock else None
                print(json.dumps(data), flush=True)
                continue
            except (OSError, ValueError, http.client.HTTPException) as exc:
                broken = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"error": broken}), flush=True)
    conn.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.web", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve")
    srv.add_argument("--name", required=True)
    srv.add_argument("--listen", action="append", required=True, metavar="HOST:PORT")
    srv.add_argument("--status", type=int, default=200)
    get = sub.add_parser("get")
    get.add_argument("url")
    get.add_argument("--count", type=int, default=1)
    get.add_argument("--timeout", type=float, default=2.0)
    get.add_argument("--deadline", type=float, default=60.0, help="stop after this many seconds")
    get.add_argument("--source", help="local address to connect from")
    hold = sub.add_parser("hold", help="one keep-alive connection; a request per stdin line")
    hold.add_argument("url")
    hold.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.command == "hold":
        return hold_connection(args.url, args.timeout)
    if args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.name, args.listen, args.status))
        return 0
    count = max(1, min(args.count, 100_000))
    result = get_many(args.url, count, args.timeout, args.deadline, args.source)
    print(json.dumps(result))
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
