"""TCP connect check, and the connection machinery the plain HTTP check builds on.

A connection is a non-blocking socket in the probes' epoll set (poller.py) and, unless the
caller keeps the deadline (see probe.py), one timer for the timeout. It is closed with SO_LINGER
0 (a RST, as HAProxy's checks do): thousands of checks a second would otherwise leave as many
TIME_WAIT sockets on the director.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
import struct

from director.health.poller import EDGE, ERR, OUT, Poller
from director.health.probe import Done, Target, seconds
from director.health.result import CheckResult

NO_LINGER = struct.pack("ii", 1, 0)
STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_IN_PROGRESS = (errno.EINPROGRESS, 0)


def connect_error(err: int, target: Target) -> str:
    if err == errno.ECONNREFUSED:
        return f"connection refused by {target}"
    if err == errno.ECONNRESET:
        return f"connection reset by {target}"
    return f"connect to {target} failed: {os.strerror(err).lower()}"


class StreamProbe:
    """One TCP connection attempt; subclasses carry on from `connected`."""

    EVENTS = OUT | EDGE

    __slots__ = (
        "_connected",
        "_done",
        "_fd",
        "_loop",
        "_poller",
        "_sock",
        "_timeout",
        "_timer",
        "_up",
        "target",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: Target,
        timeout: float,
        done: Done,
        timer: bool = True,
        up: CheckResult | None = None,
    ) -> None:
        self._loop = loop
        self.target = target
        self._up = up
        self._done: Done | None = done
        self._sock: _socket.socket | None = None
        self._fd = -1
        self._connected = False
        self._timeout = timeout
        self._poller = Poller.of(loop)
        self._timer = loop.call_later(timeout, self.expire) if timer else None
        try:
            # The C socket type, created non-blocking: no Python wrapper, no extra syscall.
            sock = _socket.socket(target.family, STREAM)
        except OSError as exc:
            self._soon(CheckResult(False, f"cannot open a socket: {exc.strerror or exc}"))
            return
        self._sock = sock
        self._fd = sock.fileno()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, NO_LINGER)
        try:
            if target.bind_to is not None:
                sock.bind((target.bind_to, 0))
            err = sock.connect_ex(target.sockaddr)
        except OSError as exc:
            err = exc.errno or errno.EINVAL
        if err in _IN_PROGRESS:
            # Edge-triggered, for the whole life of the socket: connected (OUT), then the
            # reply (IN), without re-arming in between.
            self._poller.watch(self._fd, self.EVENTS, self._on_event)
        else:
            self._soon(CheckResult(False, connect_error(err, target)))

    # ------------------------------------------------------------ for subclasses

    def connected(self, sock: _socket.socket) -> None:
        self.finish(self._up or CheckResult(True, f"connected to {self.target.label}"))

    def ready(self, sock: _socket.socket, mask: int) -> None:
        """Socket events once connected (subclasses that talk)."""

    def timeout_reason(self, timeout: float) -> str:
        return f"connect timeout after {seconds(timeout)} to {self.target}"

    def finish(self, result: CheckResult) -> None:
        done = self._done
        if done is None:
            return
        # _close(), inline: this runs for every check.
        self._done = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._poller._handlers.pop(self._fd, None)
            sock.close()
        done(result)

    def cancel(self) -> None:
        self._close()

    def expire(self) -> None:
        """The timeout is over: fail with what was being waited for."""
        self._timer = None
        if self._done is not None:
            self.finish(CheckResult(False, self.timeout_reason(self._timeout)))

    # ------------------------------------------------------------ internals

    def _soon(self, result: CheckResult) -> None:
        self._loop.call_soon(self.finish, result)

    def _on_event(self, mask: int) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._connected:
            self.ready(sock, mask)
            return
        if mask & ERR:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.finish(CheckResult(False, connect_error(err, self.target)))
                return
        self._connected = True
        self.connected(sock)

    def _close(self) -> None:
        self._done = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self._sock
        if sock is not None:
            self._sock = None
            self._poller.forget(self._fd)
            sock.close()


class TcpChecker:
    kind = "tcp"

    def __init__(self, target: Target) -> None:
        self.target = target
        self.up = CheckResult(True, f"connected to {target.label}")  # immutable: shared

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> StreamProbe:
        loop = asyncio.get_running_loop()
        return StreamProbe(loop, self.target, timeout, done, timer, self.up)
