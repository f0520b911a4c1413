"""The probes' shared epoll set, on a real event loop with socket pairs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from director.health.poller import IN, Poller


def test_coalescing_takes_what_became_ready_meanwhile_in_one_poll() -> None:
    async def scenario() -> tuple[list[list[int]], list[bool]]:
        loop = asyncio.get_running_loop()
        poller = Poller.of(loop)
        poller.coalesce = 0.05
        pairs = [socket.socketpair() for _ in range(3)]
        rounds: list[list[int]] = []  # the sockets each dispatch that found any served
        paused: list[bool] = []  # after each such dispatch: is the set unwatched for now?
        turn: list[int] = []
        waiting: list[tuple[int, asyncio.Future[None]]] = []

        def handler(i: int) -> Callable[[int], None]:
            def on_event(mask: int) -> None:
                assert mask & IN
                pairs[i][0].recv(16)
                turn.append(i)

            return on_event

        for i, (a, _) in enumerate(pairs):
            a.setblocking(False)
            poller.watch(a.fileno(), IN, handler(i))
        original = poller.dispatch

        def recording() -> int:
            count = original()
            if turn:
                rounds.append(turn[:])
                turn.clear()
                # _dispatch / _poll_again decide after this returns: look one turn later.
                loop.call_soon(lambda: paused.append(poller._resume is not None))
            for entry in list(waiting):
                if len(rounds) >= entry[0]:
                    waiting.remove(entry)
                    entry[1].set_result(None)
            return count

        async def rounds_reach(n: int) -> None:
            future = loop.create_future()
            waiting.append((n, future))
            await asyncio.wait_for(future, 5)
            await asyncio.sleep(0)  # the call_soon above

        poller.dispatch = recording  # type: ignore[method-assign]
        pairs[0][1].send(b"x")
        await rounds_reach(1)
        # The set is not watched for 50 ms now: both of these are taken by the next poll.
        pairs[1][1].send(b"x")
        pairs[2][1].send(b"x")
        await rounds_reach(2)
        # The poll after that finds nothing and watches the set again; a new event is then
        # served as soon as it comes.
        pairs[0][1].send(b"y")
        await rounds_reach(3)
        for a, b in pairs:
            poller.forget(a.fileno())
            a.close()
            b.close()
        Poller.release(loop)
        return rounds, paused

    rounds, paused = asyncio.run(scenario())
    assert rounds[0] == [0]
    # The two that became ready while the set was not watched came in one poll, not two turns.
    assert sorted(rounds[1]) == [1, 2]
    assert rounds[2] == [0]
    assert paused[:2] == [True, True]


def test_without_coalescing_every_event_is_served_at_once() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        poller = Poller.of(loop)
        a, b = socket.socketpair()
        a.setblocking(False)
        seen = loop.create_future()
        poller.watch(a.fileno(), IN, lambda mask: seen.set_result(a.recv(16)))
        b.send(b"x")
        data = await asyncio.wait_for(seen, 5)
        resume = poller._resume
        poller.forget(a.fileno())
        a.close()
        b.close()
        Poller.release(loop)
        return data == b"x" and resume is None

    assert asyncio.run(scenario())


def test_close_while_paused_cancels_the_pending_poll() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        poller = Poller.of(loop)
        poller.coalesce = 10.0
        a, b = socket.socketpair()
        a.setblocking(False)
        seen = loop.create_future()
        poller.watch(a.fileno(), IN, lambda mask: seen.set_result(a.recv(16)))
        b.send(b"x")
        await asyncio.wait_for(seen, 5)
        resume = poller._resume
        poller.forget(a.fileno())
        a.close()
        b.close()
        Poller.release(loop)  # no socket left: closes the poller while it is paused
        return resume is not None and resume.cancelled()

    assert asyncio.run(scenario())
