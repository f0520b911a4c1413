"""Every checker against real servers on loopback (sockets, TLS, processes, files)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from director.config.models import Check
from director.health.checkers import build_checker
from director.health.http import host_name
from director.health.result import CheckResult
from lab import dns as lab_dns
from lab.tls import Material, make_material, server_context
from lab.web import Backend

T = TypeVar("T")
LOOP = "127.0.0.1"


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


async def attempt(spec: dict[str, Any], port: int, address: str = LOOP) -> CheckResult:
    check = Check.model_validate(spec)
    checker = build_checker(check, address, port, "svc")
    done: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe = checker.start(check.timeout, done.set_result)
    try:
        return await done
    finally:
        probe.cancel()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOP, 0))
        port: int = sock.getsockname()[1]
        return port


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_server(handler: Handler, **kwargs: Any) -> Any:
    server = await asyncio.start_server(handler, LOOP, 0, **kwargs)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def responder(raw: bytes, seen: list[bytes] | None = None, close: bool = True) -> Handler:
    """Reads one request head, answers `raw` verbatim."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if seen is not None:
                seen.append(head)
            writer.write(raw)
            await writer.drain()
            if close:
                writer.close()
            else:
                await reader.read()  # hold the connection open until the client goes
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    return handle


def response(status: int, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


# ---------------------------------------------------------------- TCP


def test_tcp_up_and_refused() -> None:
    async def scenario() -> tuple[CheckResult, CheckResult]:
        async with tcp_server(responder(b"")) as port:
            up = await attempt({"tcp": {}}, port)
        down = await attempt({"tcp": {}}, port)
        return up, down

    up, down = run(scenario())
    assert up.ok and up.reason.startswith("connected to 127.0.0.1:")
    assert not down.ok and down.reason.startswith("connection refused by 127.0.0.1:")


@contextmanager
def stalled_listener() -> Iterator[int]:
    """A listener whose accept queue is full: new SYNs are dropped, connects hang."""
    listener = socket.socket()
    listener.bind((LOOP, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((LOOP, port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_tcp_connect_timeout() -> None:
    with stalled_listener() as port:
        result = run(attempt({"tcp": {}, "timeout": "200ms"}, port))
    assert not result.ok
    assert result.reason == f"connect timeout after 0.2s to 127.0.0.1:{port}"


def test_connect_port_and_bind_to() -> None:
    async def scenario() -> tuple[CheckResult, str]:
        peers: list[str] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peers.append(writer.get_extra_info("peername")[0])
            writer.close()

        async with tcp_server(handle) as port:
            spec = {"tcp": {}, "connect_port": port, "bind_to": "127.0.0.9"}
            result = await attempt(spec, free_port())
            for _ in range(100):
                if peers:
                    break
                await asyncio.sleep(0.01)
        return result, peers[0]

    result, peer = run(scenario())
    assert result.ok
    assert peer == "127.0.0.9"


def test_missing_port_is_a_failing_check_with_the_reason() -> None:
    result = run(attempt({"tcp": {}}, 0))
    assert not result.ok and "no port to check" in result.reason


# ---------------------------------------------------------------- HTTP


def test_http_status_and_request() -> None:
    async def scenario() -> tuple[CheckResult, CheckResult, CheckResult, list[bytes]]:
        seen: list[bytes] = []
        async with tcp_server(responder(response(503, b"busy"), seen)) as port:
            spec: dict[str, Any] = {
                "http": {
                    "path": "/healthz?x=1",
                    "host": "www.example",
                    "headers": {"X-Probe": "yes", "user-agent": "custom"},
                }
            }
            down = await attempt(spec, port)
            spec["http"]["status"] = [200, "500-503"]
            up = await attempt(spec, port)
            spec["http"]["status"] = ["200-299", 504]
            again = await attempt(spec, port)
        return down, up, again, seen

    down, up, again, seen = run(scenario())
    assert not down.ok and down.reason.startswith("HTTP 503 from 127.0.0.1:")
    assert up.ok and up.reason.startswith("HTTP 503 from")
    assert not again.ok
    head = seen[0].decode()
    assert head.startswith("GET /healthz?x=1 HTTP/1.1\r\n")
    assert "\r\nHost: www.example\r\n" in head
    assert "\r\nX-Probe: yes\r\n" in head
    assert "\r\nuser-agent: custom\r\n" in head and "director-health" not in head
    assert "\r\nConnection: close\r\n" in head


BODY = b'{"status": "green", "version": 7}'


@pytest.mark.parametrize(
    ("http", "ok", "why"),
    [
        ({"body_regex": r'"status": "green"'}, True, ""),
        ({"body_regex": r'"status": "red"'}, False, "body does not match"),
        ({"body_no_regex": "red|yellow"}, True, ""),
        ({"body_no_regex": "green"}, False, "body matches 'green'"),
        ({"digest": "md5:" + hashlib.md5(BODY).hexdigest()}, True, ""),
        ({"digest": "sha256:" + hashlib.sha256(BODY).hexdigest().upper()}, True, ""),
        ({"digest": "sha256:" + "0" * 64}, False, "body sha256 is"),
    ],
)
@pytest.mark.parametrize(
    "framing",
    [
        "length",
        "chunked",
        "close",
    ],
)
def test_http_body_checks(http: dict[str, Any], ok: bool, why: str, framing: str) -> None:
    if framing == "length":
        raw = response(200, BODY)
    elif framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (BODY[:5], BODY[5:]))
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    else:
        raw = b"HTTP/1.0 200 OK\r\n\r\n" + BODY
    result = run(_http_once(raw, {"http": http}))
    assert result.ok is ok, result.reason
    assert why in result.reason


async def _http_once(raw: bytes, spec: dict[str, Any], close: bool = True) -> CheckResult:
    async with tcp_server(responder(raw, close=close)) as port:
        return await attempt(spec, port)


def test_http_status_only_does_not_wait_for_the_body() -> None:
    # The server sends the head, then holds the connection: the status settles the check.
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial"
    result = run(_http_once(raw, {"http": {}, "timeout": "2s"}, close=False))
    assert result.ok


def test_http_incomplete_body_times_out_with_the_reason() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial"
    spec = {"http": {"body_regex": "x"}, "timeout": "300ms"}
    result = run(_http_once(raw, spec, close=False))
    assert not result.ok
    assert result.reason.startswith("HTTP 200 from 127.0.0.1:")
    assert result.reason.endswith("body incomplete after 0.3s")


def test_http_no_response_and_garbage() -> None:
    silent = run(_http_once(b"", {"http": {}, "timeout": "300ms"}, close=False))
    assert not silent.ok and silent.reason.startswith("no HTTP response from 127.0.0.1:")
    assert silent.reason.endswith("within 0.3s")
    closed = run(_http_once(b"", {"http": {}}))
    assert not closed.ok and closed.reason.startswith("no HTTP response from")
    garbage = run(_http_once(b"SSH-2.0-OpenSSH\r\n", {"http": {}}))
    assert not garbage.ok and garbage.reason.startswith("invalid HTTP response from")


def test_http_head_and_interim_response() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + response(204, b"")
    result = run(_http_once(raw, {"http": {"method": "HEAD", "body_no_regex": "x"}}))
    assert result.ok and result.reason.startswith("HTTP 204 from")


def test_http_connection_reset() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async def scenario() -> CheckResult:
        async with tcp_server(handle) as port:
            return await attempt({"http": {}}, port)

    result = run(scenario())
    assert not result.ok
    assert result.reason.startswith("connection reset by 127.0.0.1:")


def test_http_lab_backend_failing_and_recovering() -> None:
    async def scenario() -> list[CheckResult]:
        backend = Backend("rs1")
        async with tcp_server(backend.handle) as port:
            results = [await attempt({"http": {"body_regex": '"name": "rs1"'}}, port)]
            backend.status = 500
            results.append(await attempt({"http": {}}, port))
            backend.status = 200
            results.append(await attempt({"http": {}}, port))
        return results

    up, down, back = run(scenario())
    assert up.ok and not down.ok and back.ok
    assert down.reason.startswith("HTTP 500 from 127.0.0.1:")


# ---------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("tls"), ips=[LOOP], dns=["rs1.lab"])


async def _https(
    material: Material, http: dict[str, Any], require_client: bool = False
) -> tuple[CheckResult, list[str]]:
    names: list[str] = []
    context = server_context(material, require_client, names)
    async with tcp_server(Backend("rs1").handle, ssl=context) as port:
        result = await attempt({"http": {"tls": True, **http}, "timeout": "2s"}, port)
    return result, names


def test_https_verified_with_the_ca(material: Material) -> None:
    result, names = run(_https(material, {"ca_file": str(material.ca)}))
    assert result.ok and result.reason.startswith("HTTP 200 from 127.0.0.1:")
    assert names == [""]  # the certificate is matched against the address; no SNI for an IP


def test_https_sni_and_host(material: Material) -> None:
    http = {"ca_file": str(material.ca), "sni": "rs1.lab"}
    result, names = run(_https(material, http))
    assert result.ok and names == ["rs1.lab"]
    wrong = {"ca_file": str(material.ca), "sni": "other.lab"}
    result, _ = run(_https(material, wrong))
    assert not result.ok and "not accepted" in result.reason and "other.lab" in result.reason


def test_https_untrusted_unless_verify_off(material: Material) -> None:
    result, _ = run(_https(material, {}))
    assert not result.ok
    assert result.reason.startswith("TLS certificate of 127.0.0.1:")
    assert "not accepted" in result.reason
    result, _ = run(_https(material, {"verify": False}))
    assert result.ok


def test_https_client_certificate(material: Material) -> None:
    base = {"ca_file": str(material.ca)}
    without, _ = run(_https(material, base, require_client=True))
    assert not without.ok
    client = {**base, "cert_file": str(material.client_cert), "key_file": str(material.client_key)}
    with_cert, _ = run(_https(material, client, require_client=True))
    assert with_cert.ok, with_cert.reason


def test_https_missing_client_key_is_reported(material: Material, tmp_path: Path) -> None:
    http = {"ca_file": str(material.ca), "cert_file": str(tmp_path / "nope.pem")}
    result, _ = run(_https(material, http))
    assert not result.ok and result.reason.startswith("cannot load TLS files")


def test_https_handshake_timeout(material: Material) -> None:
    async def scenario() -> CheckResult:
        # A plain TCP server that never speaks TLS.
        async with tcp_server(responder(b"", close=False)) as port:
            return await attempt({"http": {"tls": True}, "timeout": "300ms"}, port)

    result = run(scenario())
    assert not result.ok
    assert result.reason.startswith("TLS handshake timeout after 0.3s with 127.0.0.1:")


# ---------------------------------------------------------------- UDP


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.prefix + data, addr)


async def _udp(spec: dict[str, Any], prefix: bytes = b"echo:") -> CheckResult:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Echo(prefix), local_addr=(LOOP, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        return await attempt(spec, port)
    finally:
        transport.close()


def test_udp_reply_expectations() -> None:
    assert run(_udp({"udp": {"payload": "ping", "expect": "^echo:ping$"}})).ok
    miss = run(_udp({"udp": {"payload": "ping", "expect": "pong"}}))
    assert not miss.ok and "does not match 'pong'" in miss.reason
    hexed = run(_udp({"udp": {"payload_hex": "01 02", "expect_hex": "65 63 68 6f 3a 01"}}))
    assert hexed.ok and hexed.reason.endswith("(7 bytes)")
    wrong = run(_udp({"udp": {"payload_hex": "01", "expect_hex": "ff"}}))
    assert not wrong.ok and "starts 65, not ff" in wrong.reason


def test_udp_icmp_port_unreachable_and_silence() -> None:
    port = free_port(socket.SOCK_DGRAM)
    refused = run(attempt({"udp": {"payload": "x"}, "timeout": "2s"}, port))
    assert not refused.ok
    assert refused.reason == f"ICMP port unreachable from 127.0.0.1:{port}"

    async def silent(spec: dict[str, Any]) -> CheckResult:
        # A bound socket that never answers: no ICMP error, no reply.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOP, 0))
            return await attempt(spec, sock.getsockname()[1])

    quiet = run(silent({"udp": {}, "timeout": "200ms"}))
    assert quiet.ok and quiet.reason.startswith("no ICMP error from 127.0.0.1:")
    needed = run(silent({"udp": {"require_reply": True}, "timeout": "200ms"}))
    assert not needed.ok and needed.reason.endswith("within 0.2s")


# ---------------------------------------------------------------- DNS


async def _dns(spec: dict[str, Any], zone: dict[str, Any], tmp: Path) -> CheckResult:
    path = tmp / "zone.json"
    path.write_text(json.dumps(zone))
    transport, _ = await lab_dns.start(f"{LOOP}:0", path)
    try:
        port = transport.get_extra_info("sockname")[1]
        return await attempt(spec, port)
    finally:
        transport.close()


ZONE = {
    "records": {
        "www.example.": [["A", "192.0.2.80"], ["AAAA", "2001:db8::80"]],
        "alias.example.": [["CNAME", "www.example."]],
        "example.": [["MX", "10 mail.example."], ["TXT", "v=spf1 -all"]],
    }
}


@pytest.mark.parametrize(
    ("dns", "ok", "why"),
    [
        ({"name": "www.example"}, True, "DNS NOERROR from 127.0.0.1:"),
        ({"name": "www.example", "answer": "192.0.2.80"}, True, "with '192.0.2.80'"),
        ({"name": "WWW.example.", "type": "AAAA", "answer": "2001:DB8:0::80"}, True, ""),
        ({"name": "www.example", "answer": "192.0.2.81"}, False, "(got 192.0.2.80)"),
        ({"name": "alias.example", "type": "CNAME", "answer": "WWW.example"}, True, ""),
        ({"name": "example", "type": "MX", "answer": "10 mail.example"}, True, ""),
        ({"name": "example", "type": "TXT", "answer": '"v=spf1 -all"'}, True, ""),
        ({"name": "nope.example"}, False, "DNS NXDOMAIN from 127.0.0.1:"),
        ({"name": "nope.example", "rcode": "NXDOMAIN"}, True, ""),
    ],
)
def test_dns_answers(dns: dict[str, Any], ok: bool, why: str, tmp_path: Path) -> None:
    result = run(_dns({"dns": dns}, ZONE, tmp_path))
    assert result.ok is ok, result.reason
    assert why in result.reason


def test_dns_servfail_and_silence(tmp_path: Path) -> None:
    failing = run(_dns({"dns": {"name": "www.example"}}, {**ZONE, "rcode": "SERVFAIL"}, tmp_path))
    assert not failing.ok
    assert failing.reason.endswith(", expected NOERROR")
    spec = {"dns": {"name": "www.example"}, "timeout": "200ms"}
    silent = run(_dns(spec, {**ZONE, "silent": True}, tmp_path))
    assert not silent.ok and silent.reason.startswith("no DNS reply from 127.0.0.1:")


# ---------------------------------------------------------------- MISC


def test_misc_exit_codes_and_dynamic_weight() -> None:
    def misc(code: int, dynamic: bool = False) -> CheckResult:
        spec = {"misc": {"command": ["sh", "-c", f"exit {code}"], "dynamic_weight": dynamic}}
        return run(attempt(spec, 0))

    assert misc(0).ok and misc(0).reason == "sh exited 0"
    assert not misc(1).ok and misc(1).reason == "sh exited 1"
    assert not misc(1, dynamic=True).ok
    assert not misc(7).ok
    dynamic = misc(7, dynamic=True)
    assert dynamic.ok and dynamic.weight == 5 and dynamic.reason == "sh exited 7: weight 5"
    assert misc(2, dynamic=True).weight == 0


def test_misc_substitutes_the_real_server(tmp_path: Path) -> None:
    out = tmp_path / "args"
    command = [
        sys.executable,
        "-c",
        f"import sys; open({str(out)!r}, 'w').write(' '.join(sys.argv[1:]))",
    ]
    spec = {"misc": {"command": [*command, "{address}", "{port}", "{service}", "{other}"]}}
    assert run(attempt(spec, 8080, "10.0.0.21")).ok
    assert out.read_text() == "10.0.0.21 8080 svc {other}"


def test_misc_timeout_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    )
    spec = {"misc": {"command": [sys.executable, "-c", script]}, "timeout": "500ms"}
    result = run(attempt(spec, 0))
    assert not result.ok and result.reason.endswith("timeout after 0.5s")
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_misc_command_not_found() -> None:
    result = run(attempt({"misc": {"command": ["/nonexistent/check"]}}, 0))
    assert not result.ok and result.reason.startswith("/nonexistent/check: cannot run")


# ---------------------------------------------------------------- FILE


@pytest.mark.parametrize(
    ("content", "ok", "weight", "why"),
    [
        ("12\n", True, 12, "holds weight 12"),
        ("0", True, 0, "holds weight 0"),
        ("-1", False, None, "holds -1: down"),
        ("abc", False, None, "not an integer weight"),
        ("999999", True, 65535, "holds weight 65535"),
    ],
)
def test_file_weight(content: str, ok: bool, weight: int | None, why: str, tmp_path: Path) -> None:
    path = tmp_path / "weight"
    path.write_text(content)
    result = run(attempt({"file": {"path": str(path)}}, 0))
    assert (result.ok, result.weight) == (ok, weight)
    assert why in result.reason


def test_file_missing_and_fifo(tmp_path: Path) -> None:
    missing = run(attempt({"file": {"path": str(tmp_path / "none")}}, 0))
    assert not missing.ok and missing.reason.endswith("does not exist")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # A FIFO without writer must not block the loop: it reads as empty.
    blocked = run(attempt({"file": {"path": str(fifo)}}, 0))
    assert not blocked.ok and "not an integer" in blocked.reason


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("www.example", "www.example"),
        ("www.example:8443", "www.example"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_tls_name_from_the_host_header(host: str, name: str) -> None:
    assert host_name(host) == name
