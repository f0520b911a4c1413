"""The runner's deadline heap behind one asyncio timer, on a real event loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from director.health.deadlines import BATCH, Deadlines


def test_deadlines_fire_in_order_with_their_token_and_due_time() -> None:
    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        seen: list[tuple[str, float]] = []
        done = loop.create_future()

        def hit(token: Any, due: float) -> None:
            seen.append((token, due))
            if len(seen) == 3:
                done.set_result(None)

        now = loop.time()
        for token, delay in (("c", 0.03), ("a", 0.01), ("b", 0.02)):
            deadlines.push(now + delay, hit, token)
        await asyncio.wait_for(done, 5)
        assert len(deadlines) == 0
        return [(token, due - now) for token, due in seen]

    seen = asyncio.run(scenario())
    assert [token for token, _ in seen] == ["a", "b", "c"]
    assert [round(due, 3) for _, due in seen] == [0.01, 0.02, 0.03]


def test_an_earlier_deadline_rearms_the_timer() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        seen: list[str] = []
        first = loop.create_future()
        now = loop.time()
        deadlines.push(now + 30, lambda token, due: seen.append(token), "late")
        deadlines.push(now + 0.01, lambda token, due: first.set_result(token), "early")
        # Were the timer still armed for +30 s, this would time out.
        seen.append(await asyncio.wait_for(first, 5))
        deadlines.close()
        return seen

    assert asyncio.run(scenario()) == ["early"]


def test_a_backlog_yields_to_other_callbacks_between_batches() -> None:
    async def scenario() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        order: list[str] = []
        done = loop.create_future()
        total = 2 * BATCH + 1

        def hit(token: int, due: float) -> None:
            order.append(f"d{token}")
            if token == 0:
                loop.call_soon(order.append, "socket")
            if token == total - 1:
                done.set_result(None)

        now = loop.time()
        for i in range(total):
            deadlines.push(now, hit, i)
        await asyncio.wait_for(done, 5)
        return order, total

    order, total = asyncio.run(scenario())
    assert len(order) == total + 1
    # The callback queued during the first batch ran before the later batches.
    assert order.index("socket") == BATCH


def test_a_failing_callback_is_logged_and_the_rest_run(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        seen: list[int] = []
        done = loop.create_future()

        def hit(token: int, due: float) -> None:
            if token == 1:
                raise RuntimeError("boom")
            seen.append(token)
            if token == 2:
                done.set_result(None)

        now = loop.time()
        for i in range(3):
            deadlines.push(now + 0.001 * i, hit, i)
        await asyncio.wait_for(done, 5)
        return seen

    with caplog.at_level(logging.ERROR, logger="director.health"):
        assert asyncio.run(scenario()) == [0, 2]
    assert "health deadline callback failed" in caplog.text
    assert "boom" in caplog.text


def test_close_drops_everything_pending() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        seen: list[int] = []
        now = loop.time()
        deadlines.push(now + 0.01, lambda token, due: seen.append(token), 1)
        deadlines.close()
        # A later deadline on another heap proves time passed beyond the dropped one.
        other = Deadlines(loop)
        passed = loop.create_future()
        other.push(now + 0.05, lambda token, due: passed.set_result(None), 0)
        await asyncio.wait_for(passed, 5)
        return seen

    assert asyncio.run(scenario()) == []


def test_slack_runs_nearby_deadlines_in_one_turn() -> None:
    async def scenario(slack: float) -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop, slack=slack)
        order: list[str] = []
        done = loop.create_future()

        def hit(token: str, due: float) -> None:
            order.append(token)
            if token == "a":
                loop.call_soon(order.append, "other")
            else:
                done.set_result(None)

        now = loop.time()
        deadlines.push(now + 0.01, hit, "a")
        deadlines.push(now + 0.02, hit, "b")
        await asyncio.wait_for(done, 5)
        await asyncio.sleep(0)
        return order

    # Without slack the loop turns between the two; with it, both run in the first turn.
    assert asyncio.run(scenario(0.0)) == ["a", "other", "b"]
    assert asyncio.run(scenario(0.05)) == ["a", "b", "other"]
