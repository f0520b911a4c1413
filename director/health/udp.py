"""UDP check, and the datagram machinery the DNS check builds on.

A connected UDP socket: the kernel hands an ICMP error about it to the next receive, so a port
unreachable from the real server ends the check at once (ECONNREFUSED) instead of at the timeout.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
from collections.abc import Callable

from director.config.models import UdpCheck
from director.health.poller import IN, Poller
from director.health.probe import Done, Target, seconds
from director.health.result import CheckResult

Accept = Callable[[bytes], CheckResult | None]  # None: not the reply awaited, keep waiting
Silence = Callable[[float], CheckResult]


def icmp_error(err: int, target: Target) -> str:
    if err == errno.ECONNREFUSED:
        return f"ICMP port unreachable from {target}"
    return f"{os.strerror(err).lower()} for {target}"


class DatagramProbe:
    __slots__ = (
        "_accept",
        "_done",
        "_fd",
        "_loop",
        "_poller",
        "_silence",
        "_sock",
        "_timeout",
        "_timer",
        "target",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: Target,
        timeout: float,
        done: Done,
        payload: bytes,
        accept: Accept,
        silence: Silence,
        timer: bool = True,
    ) -> None:
        self._loop = loop
        self.target = target
        self._done: Done | None = done
        self._accept = accept
        self._silence = silence
        self._sock: socket.socket | None = None
        self._fd = -1
        self._timeout = timeout
        self._poller = Poller.of(loop)
        self._timer = loop.call_later(timeout, self.expire) if timer else None
        try:
            sock = socket.socket(target.family, socket.SOCK_DGRAM)
        except OSError as exc:
            loop.call_soon(self._finish, CheckResult(False, f"cannot open a socket: {exc}"))
            return
        sock.setblocking(False)
        try:
            if target.bind_to is not None:
                sock.bind((target.bind_to, 0))
            sock.connect(target.sockaddr)
            sock.send(payload)
        except OSError as exc:
            sock.close()
            result = CheckResult(False, icmp_error(exc.errno or errno.EIO, target))
            loop.call_soon(self._finish, result)
            return
        self._sock = sock
        self._fd = sock.fileno()
        self._poller.watch(self._fd, IN, self._on_read)

    def cancel(self) -> None:
        self._close()

    def _on_read(self, mask: int) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(CheckResult(False, icmp_error(exc.errno or errno.EIO, self.target)))
            return
        result = self._accept(data)
        if result is not None:
            self._finish(result)

    def expire(self) -> None:
        """The timeout is over: silence is judged (a failure, or a pass without expectation)."""
        self._timer = None
        if self._done is not None:
            self._finish(self._silence(self._timeout))

    def _finish(self, result: CheckResult) -> None:
        done = self._done
        if done is not None:
            self._close()
            done(result)

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


class UdpChecker:
    kind = "udp"

    def __init__(self, udp: UdpCheck, target: Target) -> None:
        self.target = target
        if udp.payload_hex is not None:
            self.payload = bytes.fromhex(udp.payload_hex)
        else:
            self.payload = udp.payload.encode()
        self.expect = re.compile(udp.expect.encode()) if udp.expect is not None else None
        self.prefix = bytes.fromhex(udp.expect_hex) if udp.expect_hex is not None else None
        self.require = udp.require_reply or self.expect is not None or self.prefix is not None

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> DatagramProbe:
        loop = asyncio.get_running_loop()
        return DatagramProbe(
            loop, self.target, timeout, done, self.payload, self._accept, self._silence, timer
        )

    def _accept(self, data: bytes) -> CheckResult:
        target = self.target
        if self.prefix is not None and not data.startswith(self.prefix):
            shown = data[: len(self.prefix)].hex(" ")
            return CheckResult(
                False, f"UDP reply from {target} starts {shown}, not {self.prefix.hex(' ')}"
            )
        if self.expect is not None and not self.expect.search(data):
            return CheckResult(
                False, f"UDP reply from {target} does not match {self.expect.pattern.decode()!r}"
            )
        return CheckResult(True, f"UDP reply from {target} ({len(data)} bytes)")

    def _silence(self, timeout: float) -> CheckResult:
        if self.require:
            return CheckResult(False, f"no UDP reply from {self.target} within {seconds(timeout)}")
        return CheckResult(True, f"no ICMP error from {self.target} within {seconds(timeout)}")
