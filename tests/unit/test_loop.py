"""The daemon's event loop waits on epoll through select(): readiness and timers both work."""

from __future__ import annotations

import asyncio
import socket

from director.loop import PreciseEpollSelector, run


def test_timers_and_io_on_the_precise_loop() -> None:
    async def main() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop._selector, PreciseEpollSelector)  # type: ignore[attr-defined]
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        got: asyncio.Future[bytes] = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.set_result(a.recv(16)))
        fired = loop.create_future()
        loop.call_later(0.005, fired.set_result, True)
        b.send(b"ping")
        data = await asyncio.wait_for(got, 5)
        ok = await asyncio.wait_for(fired, 5)
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        return data, ok

    assert run(main()) == (b"ping", True)


def test_a_timer_is_not_fired_early() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        target = loop.time() + 0.0125
        fut = loop.create_future()
        loop.call_at(target, fut.set_result, None)
        await fut
        return loop.time() - target

    assert run(main()) >= 0
