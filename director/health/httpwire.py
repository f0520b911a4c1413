"""HTTP/1.1 for health checks, sans-IO: the request bytes, an incremental response reader, and
the verdict on a response (status list and ranges, body regex, body digest).

The reader stops at the status line when nothing looks at the body: most checks need no more,
and a check that does not read the body does not wait for it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from director.config.models import HttpCheck
from director.health.probe import Target
from director.health.result import CheckResult

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
USER_AGENT = "director-health"


@dataclass(frozen=True, slots=True)
class HttpSpec:
    method: str
    statuses: tuple[tuple[int, int], ...]
    body_regex: re.Pattern[bytes] | None = None
    body_no_regex: re.Pattern[bytes] | None = None
    digest: tuple[str, str] | None = None  # (md5 | sha256, lower-case hex)
    needs_body: bool = field(init=False)  # read once per check: a field, not a property

    def __post_init__(self) -> None:
        needs = bool(self.body_regex or self.body_no_regex or self.digest)
        object.__setattr__(self, "needs_body", needs)

    def status_ok(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.statuses)

    @staticmethod
    def of(http: HttpCheck) -> HttpSpec:
        statuses = []
        for item in http.status:
            low, _, high = str(item).partition("-")
            statuses.append((int(low), int(high or low)))
        digest = None
        if http.digest is not None:
            algo, _, hexdigest = http.digest.partition(":")
            digest = (algo, hexdigest.lower())
        return HttpSpec(
            method=http.method,
            statuses=tuple(statuses),
            body_regex=re.compile(http.body_regex.encode()) if http.body_regex else None,
            body_no_regex=re.compile(http.body_no_regex.encode()) if http.body_no_regex else None,
            digest=digest,
        )


def build_request(http: HttpCheck, target: Target) -> bytes:
    """One request that asks the server to close the connection after answering."""
    default_port = 443 if http.tls else 80
    host = http.host or (target.host if target.port == default_port else str(target))
    headers = {"host": ("Host", host), "user-agent": ("User-Agent", USER_AGENT)}
    headers["accept"] = ("Accept", "*/*")
    headers["connection"] = ("Connection", "close")
    if http.method in ("POST", "PUT"):
        headers["content-length"] = ("Content-Length", "0")
    for name, value in http.headers.items():
        headers[name.lower()] = (name, value)
    lines = [f"{http.method} {http.path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.values())]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"line break in the HTTP request line or a header: {line!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


_STATUS, _HEADERS, _LENGTH, _CHUNKED, _EOF = range(5)


class ResponseParser:
    """Feed bytes as they come; `done` or `error` ends it. Errors read well followed by
    ' from <target>': 'invalid HTTP response', 'incomplete HTTP response', ..."""

    __slots__ = (
        "_buf",
        "_chunk",
        "_head",
        "_length",
        "_state",
        "_want_body",
        "body",
        "done",
        "error",
        "status",
    )

    def __init__(self, want_body: bool, head_request: bool = False) -> None:
        self._buf = bytearray()
        self._state = _STATUS
        self._want_body = want_body
        self._head = head_request
        self._length = 0
        self._chunk = bytearray()
        self.status: int | None = None
        self.body = b""
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        if self._state == _STATUS and not self._want_body and not self._buf:
            # The common case, one read holding the whole status line: read the code in place.
            code = data[9:12]
            if data[:7] == b"HTTP/1." and data[12:13] in (b" ", b"\r") and code.isdigit():
                status = int(code)
                if not 100 <= status < 200:
                    self.status = status
                    self.done = True
                    return
        self._buf += data
        self._advance()

    def feed_eof(self) -> None:
        if self.done:
            return
        if self._state == _EOF:
            self._finish(bytes(self._buf))
        else:
            self._fail("no HTTP response" if self.status is None else "incomplete HTTP response")

    # ------------------------------------------------------------ internals

    def _finish(self, body: bytes) -> None:
        self.body = body
        self.done = True

    def _fail(self, error: str) -> None:
        self.error = error
        self.done = True

    def _advance(self) -> None:
        while not self.done:
            state = self._state
            if state == _STATUS:
                if not self._status_line():
                    return
            elif state == _HEADERS:
                if not self._headers():
                    return
            elif state == _LENGTH:
                if len(self._buf) < self._length:
                    return
                self._finish(bytes(self._buf[: self._length]))
            elif state == _CHUNKED:
                if not self._chunks():
                    return
            else:
                if len(self._buf) > MAX_BODY:
                    self._fail(f"HTTP body over {MAX_BODY // 1024} KiB")
                return

    def _status_line(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._fail("invalid HTTP response")
            return False
        parts = bytes(buf[:end]).split(b" ", 2)
        del buf[: end + 2]
        code = parts[1] if len(parts) > 1 else b""
        if not parts[0].startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            self._fail("invalid HTTP response")
            return False
        status = int(code)
        if 100 <= status < 200 and status != 101:
            # An interim response (100 Continue, 103 Early Hints): its headers, then the real one.
            self._state = _HEADERS
            self.status = None
            return True
        self.status = status
        if not self._want_body:
            self._finish(b"")
            return False
        self._state = _HEADERS
        return True

    def _headers(self) -> bool:
        buf = self._buf
        if buf.startswith(b"\r\n"):
            end, skip = 0, 2
        else:
            end = buf.find(b"\r\n\r\n")
            skip = 4
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail("HTTP headers too long")
                return False
        head = bytes(buf[:end])
        del buf[: end + skip]
        if self.status is None:  # the end of an interim response
            self._state = _STATUS
            return True
        length: int | None = None
        chunked = False
        for line in head.split(b"\r\n") if head else ():
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                text = value.strip()
                if not text.isdigit():
                    self._fail("invalid HTTP response")
                    return False
                length = int(text)
            elif key == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if self._head or self.status in (204, 304):
            self._finish(b"")
        elif chunked:
            self._state = _CHUNKED
        elif length is not None:
            if length > MAX_BODY:
                self._fail(f"HTTP body over {MAX_BODY // 1024} KiB")
                return False
            self._length = length
            self._state = _LENGTH
        else:
            self._state = _EOF
        return True

    def _chunks(self) -> bool:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self._fail("invalid HTTP response")
                return False
            if size == 0:
                self._finish(bytes(self._chunk))  # trailers, if any, are not read
                return False
            if len(buf) < end + 2 + size + 2:
                return False
            self._chunk += buf[end + 2 : end + 2 + size]
            del buf[: end + 2 + size + 2]
            if len(self._chunk) > MAX_BODY:
                self._fail(f"HTTP body over {MAX_BODY // 1024} KiB")
                return False


def judge(spec: HttpSpec, parser: ResponseParser, target: Target) -> CheckResult:
    """The verdict on a finished parser (done, or stopped at a status the spec rejects)."""
    if parser.error is not None:
        return CheckResult(False, f"{parser.error} from {target}")
    status = parser.status
    assert status is not None
    seen = f"HTTP {status} from {target}"
    if not spec.status_ok(status):
        return CheckResult(False, seen)
    body = parser.body
    if spec.body_regex is not None and not spec.body_regex.search(body):
        return CheckResult(
            False, f"{seen}: body does not match {spec.body_regex.pattern.decode()!r}"
        )
    if spec.body_no_regex is not None and spec.body_no_regex.search(body):
        return CheckResult(False, f"{seen}: body matches {spec.body_no_regex.pattern.decode()!r}")
    if spec.digest is not None:
        algo, want = spec.digest
        got = hashlib.new(algo, body).hexdigest()
        if got != want:
            return CheckResult(False, f"{seen}: body {algo} is {got}, expected {want}")
    return CheckResult(True, seen)


def settled(spec: HttpSpec, parser: ResponseParser) -> bool:
    """True when the verdict is known: the response is read, or its status already fails."""
    return parser.done or (parser.status is not None and not spec.status_ok(parser.status))
