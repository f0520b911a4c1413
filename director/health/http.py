"""HTTP and HTTPS checks.

Plain HTTP is a lean HTTP/1.1 probe on selector callbacks (see tcp.py): one connection per
check, one request with `Connection: close`, the response read until its verdict is known. On
the benchmark machine this is about 5x cheaper per check than aiohttp with a new connection each
(docs/health.md). HTTPS goes through asyncio's TLS transport (the ssl module), with the same
request and response reader; its contexts are shared by every check with the same TLS settings.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import os
import socket
import ssl
from dataclasses import dataclass

from director.config.models import HttpCheck
from director.health.httpwire import HttpSpec, ResponseParser, build_request, judge, settled
from director.health.poller import EDGE, ERR, IN, OUT
from director.health.probe import Done, Target, TaskProbe, seconds
from director.health.result import CheckResult
from director.health.tcp import NO_LINGER, StreamProbe, connect_error


class HttpProbe(StreamProbe):
    EVENTS = IN | OUT | EDGE

    __slots__ = ("_checker", "_parser", "_responding", "_sent")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: Target,
        timeout: float,
        done: Done,
        checker: HttpChecker,
        timer: bool = True,
    ) -> None:
        self._checker = checker
        self._sent = 0
        self._responding = False
        self._parser: ResponseParser | None = None  # made only when the first read falls short
        super().__init__(loop, target, timeout, done, timer)

    def connected(self, sock: _socket.socket) -> None:
        self._responding = True
        self._send(sock)

    def ready(self, sock: _socket.socket, mask: int) -> None:
        if mask & OUT and self._sent < len(self._checker.request):
            self._send(sock)
        if mask & (IN | ERR) and self._sock is not None:
            self._receive(sock)

    def _on_event(self, mask: int) -> None:
        # The base class's, with `ready` inlined: one call less on every reply.
        sock = self._sock
        if sock is None:
            return
        if not self._connected:
            super()._on_event(mask)
        elif mask & (IN | ERR) and self._sent >= len(self._checker.request):
            self._receive(sock)
        else:
            self.ready(sock, mask)

    def timeout_reason(self, timeout: float) -> str:
        if not self._responding:
            return super().timeout_reason(timeout)
        status = None if self._parser is None else self._parser.status
        if status is None:
            return f"no HTTP response from {self.target} within {seconds(timeout)}"
        return f"HTTP {status} from {self.target}: body incomplete after {seconds(timeout)}"

    def _send(self, sock: _socket.socket) -> None:
        # The request fits in the socket buffer almost always; if not, the rest goes at the
        # next OUT edge (buffer space freed).
        try:
            self._sent += sock.send(self._checker.request[self._sent :])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.finish(CheckResult(False, connect_error(exc.errno or 0, self.target)))

    def _receive(self, sock: _socket.socket) -> None:
        checker = self._checker
        spec = checker.spec
        # Edge-triggered: read until the socket is empty (or the verdict is known).
        for _ in range(1024):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.finish(CheckResult(False, connect_error(exc.errno or 0, self.target)))
                return
            parser = self._parser
            if parser is None:
                # Nearly every check: the first read holds the status line and nothing looks
                # at the body. The verdict is then one of a few, made once per checker.
                code = data[9:12]
                if (
                    not spec.needs_body
                    and data[:7] == b"HTTP/1."
                    and data[12:13] in (b" ", b"\r")
                    and code.isdigit()
                    and code >= b"200"
                ):
                    result = checker.verdicts.get(code)
                    self.finish(result if result is not None else checker.verdict(code))
                    return
                parser = self._parser = ResponseParser(spec.needs_body, spec.method == "HEAD")
            if data:
                parser.feed(data)
            else:
                parser.feed_eof()
            if settled(spec, parser):
                self.finish(judge(spec, parser, self.target))
                return


class HttpChecker:
    kind = "http"

    def __init__(self, http: HttpCheck, target: Target) -> None:
        self.target = target
        self.spec = HttpSpec.of(http)
        self.request = build_request(http, target)
        # Results of status-only answers by status code bytes (immutable, so made once).
        self.verdicts: dict[bytes, CheckResult] = {}

    def verdict(self, code: bytes) -> CheckResult:
        status = int(code)
        result = CheckResult(self.spec.status_ok(status), f"HTTP {status} from {self.target}")
        if len(self.verdicts) < 64:
            self.verdicts[code] = result
        return result

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> HttpProbe:
        loop = asyncio.get_running_loop()
        return HttpProbe(loop, self.target, timeout, done, self, timer)


# ---------------------------------------------------------------- HTTPS


def host_name(host: str) -> str:
    """The name in a Host value without its port: `www.example:8443` -> `www.example`,
    `[2001:db8::1]:443` and `[2001:db8::1]` -> `2001:db8::1`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class TlsSettings:
    verify: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None

    def stamp(self) -> tuple[float, ...]:
        """Modification times of the files: a changed file gets a fresh context."""
        out = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            with contextlib.suppress(OSError):
                out.append(os.stat(path).st_mtime if path else 0.0)
        return tuple(out)


_contexts: dict[TlsSettings, tuple[tuple[float, ...], ssl.SSLContext]] = {}


def tls_context(settings: TlsSettings) -> ssl.SSLContext:
    """One context per TLS settings (loading the system CAs costs tens of milliseconds)."""
    stamp = settings.stamp()
    cached = _contexts.get(settings)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    if settings.verify:
        context = ssl.create_default_context(cafile=settings.ca_file)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file)
    _contexts[settings] = (stamp, context)
    return context


class _Reader(asyncio.Protocol):
    def __init__(self, spec: HttpSpec, parser: ResponseParser) -> None:
        self.spec = spec
        self.parser = parser
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self._settle()

    def eof_received(self) -> bool:
        self.parser.feed_eof()
        self._settle()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            if exc is not None:
                self.finished.set_exception(exc)
            else:
                self.parser.feed_eof()
                self.finished.set_result(None)

    def _settle(self) -> None:
        if settled(self.spec, self.parser) and not self.finished.done():
            self.finished.set_result(None)


class HttpsChecker:
    kind = "https"

    def __init__(self, http: HttpCheck, target: Target) -> None:
        self.target = target
        self.spec = HttpSpec.of(http)
        self.request = build_request(http, target)
        self.tls = TlsSettings(http.verify, http.ca_file, http.cert_file, http.key_file)
        name = http.sni or (host_name(http.host) if http.host else None)
        # Without a name the certificate is matched against the address (an IP SAN); no SNI
        # is sent for an address.
        self.server_hostname = (name or target.address).strip("[]")

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> TaskProbe:
        return TaskProbe(self._check(timeout), done)

    async def _check(self, timeout: float) -> CheckResult:
        target = self.target
        phase = "connect"
        loop = asyncio.get_running_loop()
        transport: asyncio.Transport | None = None
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as exc:
            return CheckResult(False, f"cannot open a socket: {exc.strerror or exc}")
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, NO_LINGER)
            async with asyncio.timeout(timeout):
                if target.bind_to is not None:
                    sock.bind((target.bind_to, 0))
                await loop.sock_connect(sock, target.sockaddr)
                phase = "handshake"
                try:
                    context = tls_context(self.tls)
                except (OSError, ssl.SSLError) as exc:
                    return CheckResult(False, f"cannot load TLS files: {exc}")
                parser = ResponseParser(self.spec.needs_body, self.spec.method == "HEAD")
                reader = _Reader(self.spec, parser)
                transport, _ = await loop.create_connection(
                    lambda: reader,
                    sock=sock,
                    ssl=context,
                    server_hostname=self.server_hostname,
                    ssl_handshake_timeout=timeout,
                )
                phase = "response"
                transport.write(self.request)
                await reader.finished
            return judge(self.spec, parser, target)
        except TimeoutError:
            return CheckResult(False, self._timeout_reason(phase, timeout))
        except ssl.SSLCertVerificationError as exc:
            return CheckResult(
                False, f"TLS certificate of {target} not accepted: {exc.verify_message}"
            )
        except ssl.SSLError as exc:
            return CheckResult(False, f"TLS handshake with {target} failed: {exc.reason or exc}")
        except OSError as exc:
            if exc.errno is None:
                return CheckResult(False, f"connection to {target} failed: {exc}")
            return CheckResult(False, connect_error(exc.errno, target))
        finally:
            if transport is not None:
                transport.abort()
            sock.close()

    def _timeout_reason(self, phase: str, timeout: float) -> str:
        if phase == "connect":
            return f"connect timeout after {seconds(timeout)} to {self.target}"
        if phase == "handshake":
            return f"TLS handshake timeout after {seconds(timeout)} with {self.target}"
        return f"no HTTP response from {self.target} within {seconds(timeout)}"
