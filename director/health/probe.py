"""What every checker shares: the target, the probe and checker interfaces.

A checker is built once per real server; `start(timeout, done)` begins one attempt and returns a
handle whose `cancel()` abandons it (closing what it opened). `done` is called exactly once per
attempt that is not cancelled, never from inside `start` itself. With `timer=False` the probe
sets no timer of its own: the caller calls `expire()` when the timeout is over (the runner keeps
every deadline in one heap of its own, far cheaper than an asyncio timer per attempt). Probes
that time themselves (HTTPS, MISC) ignore `expire()`.

TCP, HTTP, UDP and DNS probes are selector callbacks on the loop's own sockets (no task, no
future): at 10,000 checks a second a task per check would cost more than the check. HTTPS and
MISC run as tasks (TLS through asyncio's ssl transport, MISC through director.proc).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from director.health.result import CheckResult

Done = Callable[[CheckResult], None]


class Probe(Protocol):
    def cancel(self) -> None: ...

    def expire(self) -> None: ...


class Checker(Protocol):
    kind: str  # "tcp", "http", "https", "udp", "dns", "misc", "file"

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> Probe: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where a check connects: the real server's address and port unless connect_ip/_port say
    otherwise, from bind_to if set."""

    address: str
    port: int
    bind_to: str | None = None
    # Derived once: every check's reason names the target.
    family: int = field(init=False, compare=False)
    sockaddr: tuple[str, int] = field(init=False, compare=False)
    host: str = field(init=False, compare=False)  # as in a URL or a Host header
    label: str = field(init=False, compare=False)  # "10.0.0.21:80", "[2001:db8::21]:80"

    def __post_init__(self) -> None:
        v6 = ":" in self.address
        host = f"[{self.address}]" if v6 else self.address
        object.__setattr__(self, "family", socket.AF_INET6 if v6 else socket.AF_INET)
        object.__setattr__(self, "sockaddr", (self.address, self.port))
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "label", f"{host}:{self.port}")

    def __str__(self) -> str:
        return self.label

    @staticmethod
    def of(address: object, port: int, bind_to: object | None = None) -> Target:
        return Target(
            str(ipaddress.ip_address(str(address))),
            port,
            None if bind_to is None else str(ipaddress.ip_address(str(bind_to))),
        )


def seconds(value: float) -> str:
    return f"{value:g}s"


class TaskProbe:
    """A probe written as a coroutine returning its CheckResult (HTTPS, MISC)."""

    __slots__ = ("_task",)

    def __init__(self, coro: Coroutine[Any, Any, CheckResult], done: Done) -> None:
        self._task = asyncio.get_running_loop().create_task(coro)

        def finished(task: asyncio.Task[CheckResult]) -> None:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None:
                # A bug in a checker must show as a failed check with its cause, not vanish.
                done(CheckResult(False, f"checker error: {type(exc).__name__}: {exc}"))
            else:
                done(task.result())

        self._task.add_done_callback(finished)

    @property
    def task(self) -> asyncio.Task[CheckResult]:
        return self._task

    def cancel(self) -> None:
        self._task.cancel()

    def expire(self) -> None:
        """The coroutine enforces its own timeout."""


class ReadyProbe:
    """A probe whose result is known at once (FILE, or a checker that cannot start): reported
    on the next loop iteration, as `done` must not run inside `start`."""

    __slots__ = ("_handle",)

    def __init__(self, result: CheckResult, done: Done) -> None:
        self._handle = asyncio.get_running_loop().call_soon(done, result)

    def cancel(self) -> None:
        self._handle.cancel()

    def expire(self) -> None:
        """Already reported."""
