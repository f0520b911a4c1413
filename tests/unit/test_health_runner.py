"""The runner against real servers on loopback: weights, quorum, commands, control, reload."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
from collections.abc import Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from director.config.models import Service
from director.health.runner import HealthRunner, RealServerKey
from lab.web import Backend

T = TypeVar("T")
LOOP = "127.0.0.1"
FAST = {"interval": "50ms", "timeout": "40ms", "retry_delay": "10ms"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    return asyncio.run(bounded())


def service(real_servers: list[dict[str, Any]], check: dict[str, Any], **extra: Any) -> Service:
    return Service.model_validate(
        {
            "name": "web",
            "vip": "10.0.0.100",
            "port": 80,
            "check": {**FAST, **check},
            "real_servers": real_servers,
            **extra,
        }
    )


class Recorder:
    """Collects on_change and on_quorum calls; tests await the ones they expect."""

    def __init__(self) -> None:
        self.changes: asyncio.Queue[tuple[RealServerKey, int | None, str]] = asyncio.Queue()
        self.quorum: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()

    def on_change(self, svc: str, key: RealServerKey, weight: int | None, reason: str) -> None:
        assert svc == "web"
        self.changes.put_nowait((key, weight, reason))

    def on_quorum(self, svc: str, up: bool, reason: str) -> None:
        self.quorum.put_nowait((up, reason))

    async def change(self) -> tuple[RealServerKey, int | None, str]:
        return await asyncio.wait_for(self.changes.get(), 10)

    async def until(self, key: RealServerKey, weight: int | None) -> str:
        """Wait for `key` to reach `weight`; the reason of that change."""
        while True:
            got, new, reason = await self.change()
            if got == key and new == weight:
                return reason


@asynccontextmanager
async def backends(count: int) -> Any:
    """`count` lab.web backends on loopback; yields (backends, ports)."""
    made = [Backend(f"rs{i + 1}") for i in range(count)]
    servers = [await asyncio.start_server(b.handle, LOOP, 0) for b in made]
    try:
        yield made, [s.sockets[0].getsockname()[1] for s in servers]
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


@asynccontextmanager
async def running(runner: HealthRunner) -> Any:
    runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def test_http_fall_removes_and_rise_restores(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="director.health")

    async def scenario() -> list[str]:
        rec = Recorder()
        async with backends(1) as (made, ports):
            key = (LOOP, ports[0])
            svc = service(
                [{"address": LOOP, "port": ports[0], "weight": 3}],
                {"http": {}, "rise": 2, "fall": 3},
            )
            runner = HealthRunner([svc], rec.on_change, on_quorum=rec.on_quorum)
            assert runner.weights("web") == {key: None}  # alpha: down until the first success
            async with running(runner):
                reasons = [await rec.until(key, 3)]
                made[0].status = 500
                reasons.append(await rec.until(key, None))
                made[0].status = 200
                reasons.append(await rec.until(key, 3))
                status = runner.status()["services"][0]["real_servers"][0]
        assert status["state"] == "UP" and status["transitions"] == 3
        assert status["failures"] >= 3 and status["checks"] > status["failures"]
        return reasons

    first, down, up = run(scenario())
    assert first.startswith("HTTP 200 from 127.0.0.1:")
    assert down.startswith("HTTP 500 from 127.0.0.1:") and down.endswith("(3 failures in a row)")
    assert up.endswith("(2 successes in a row)")
    # Every transition is logged once, with the real server and its reason.
    logged = [r.getMessage() for r in caplog.records if "DOWN" in r.getMessage()]
    assert [m.split(": ", 1)[1].split(":")[0] for m in logged] == [
        "DOWN -> UP",
        "UP -> DOWN",
        "DOWN -> UP",
    ], logged
    assert logged[1].startswith("web 127.0.0.1:") and down in logged[1]


def test_inhibit_and_drain() -> None:
    async def scenario() -> list[int | None]:
        rec = Recorder()
        async with backends(1) as (made, ports):
            key = (LOOP, ports[0])
            rs = [{"address": LOOP, "port": ports[0], "weight": 2}]
            svc = service(rs, {"http": {}}, drain="100ms", on_failure="remove")
            runner = HealthRunner([svc], rec.on_change)
            async with running(runner):
                await rec.until(key, 2)
                made[0].status = 503
                seen = []
                for _ in range(2):
                    _, weight, _ = await rec.change()
                    seen.append(weight)
            inhibit = service(rs, {"http": {}}, on_failure="inhibit")
            runner = HealthRunner([inhibit], rec.on_change)
            assert runner.weights("web") == {key: 0}
            async with running(runner):
                made[0].status = 200
                await rec.until(key, 2)
                made[0].status = 503
                seen.append((await rec.change())[1])
        return seen

    # drain: weight 0 first, out of IPVS after the drain time; inhibit: weight 0, stays in.
    assert run(scenario()) == [0, None, 0]


def test_retries_hold_off_a_failure(tmp_path: Path) -> None:
    weight_file = tmp_path / "w"
    weight_file.write_text("4")

    async def scenario() -> tuple[str, dict[str, Any]]:
        rec = Recorder()
        rs = [{"address": LOOP, "port": 80}]
        svc = service(rs, {"file": {"path": str(weight_file)}, "retries": 2})
        runner = HealthRunner([svc], rec.on_change)
        async with running(runner):
            await rec.until((LOOP, 80), 4)
            weight_file.write_text("-1")
            reason = await rec.until((LOOP, 80), None)
            stats = runner.stats.as_dict()
        return reason, stats

    reason, stats = run(scenario())
    assert reason == f"{weight_file} holds -1: down (attempt 3)"
    assert stats["retries"] == 2


def test_quorum_sorry_server_and_commands(tmp_path: Path) -> None:
    log = tmp_path / "log"

    def command(word: str) -> list[str]:
        script = f"import sys; open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
        return [sys.executable, "-c", script, word, "{service}", "{address}", "{port}"]

    keys: list[RealServerKey] = []

    async def scenario() -> tuple[list[tuple[bool, str]], list[dict[Any, int]]]:
        rec = Recorder()
        async with backends(2) as (made, ports):
            keys.extend((LOOP, p) for p in ports)
            check = {"http": {}, "notify_up": command("up"), "notify_down": command("down")}
            svc = service(
                [{"address": LOOP, "port": p} for p in ports],
                check,
                quorum=2,
                sorry_server="127.0.0.99:8080",
                quorum_up=command("quorum-up")[:5],
                quorum_down=command("quorum-down")[:5],
            )
            runner = HealthRunner([svc], rec.on_change, on_quorum=rec.on_quorum)
            assert not runner.quorum("web")  # alpha: nothing up yet
            pools = [runner.pool("web")]
            async with running(runner):
                events = [await asyncio.wait_for(rec.quorum.get(), 10)]
                pools.append(runner.pool("web"))
                made[1].status = 500
                events.append(await asyncio.wait_for(rec.quorum.get(), 10))
                pools.append(runner.pool("web"))
                made[1].status = 200
                events.append(await asyncio.wait_for(rec.quorum.get(), 10))
                await rec.until(keys[1], 1)
        return events, pools

    events, pools = run(scenario())
    assert [up for up, _ in events] == [True, False, True]
    assert events[1][1] == "quorum lost: live weight 1 < 2 - 0"
    sorry = ("127.0.0.99", 8080)
    assert pools[0] == {sorry: 1}
    assert sorry not in pools[1] and set(pools[1].values()) == {1}
    # Quorum lost: the sorry server takes new connections; the healthy real server stays at
    # weight 0 (its connections carry on); the failed one is out.
    assert pools[2] == {keys[0]: 0, sorry: 1}
    lines = log.read_text().splitlines()
    # stop() waits for the commands, so every one of them has written its line.
    assert lines.count("quorum-down web") == 2 and lines.count("quorum-up web") == 2
    ups = [line for line in lines if line.startswith("up web 127.0.0.1 ")]
    downs = [line for line in lines if line.startswith("down web 127.0.0.1 ")]
    assert len(ups) == 3 and len(downs) == 1


def test_slow_start_after_recovery() -> None:
    async def scenario() -> list[int]:
        rec = Recorder()
        async with backends(1) as (made, ports):
            key = (LOOP, ports[0])
            rs = [{"address": LOOP, "port": ports[0], "weight": 4}]
            runner = HealthRunner([service(rs, {"http": {}}, slow_start="2s")], rec.on_change)
            async with running(runner):
                await rec.until(key, 4)  # start-up: no ramp
                made[0].status = 500
                await rec.until(key, None)
                made[0].status = 200
                weights: list[int] = []
                while not weights or weights[-1] != 4:
                    weight = (await rec.change())[1]
                    assert weight is not None
                    weights.append(weight)
        return weights

    weights = run(scenario())
    assert weights[0] == 1 and weights[-1] == 4
    assert weights == sorted(weights) and len(weights) >= 3


def test_operator_override_survives_until_cleared() -> None:
    async def scenario() -> list[tuple[int | None, str]]:
        rec = Recorder()
        async with backends(1) as (made, ports):
            key = (LOOP, ports[0])
            runner = HealthRunner(
                [service([{"address": LOOP, "port": ports[0], "weight": 5}], {"http": {}})],
                rec.on_change,
            )
            async with running(runner):
                await rec.until(key, 5)
                runner.set_override("web", key, drained=True)
                out = [(await rec.change())[1:]]
                made[0].status = 500
                out.append((await rec.change())[1:])
                made[0].status = 200
                out.append((await rec.change())[1:])  # healthy, still drained: weight 0
                assert runner.overrides() == [("web", key)]
                runner.set_override("web", key, drained=False)
                out.append((await rec.change())[1:])
                with pytest.raises(KeyError, match=r"no real server 10\.9\.9\.9:80"):
                    runner.set_override("web", ("10.9.9.9", 80), drained=True)
                with pytest.raises(KeyError, match="no service 'nope'"):
                    runner.set_override("nope", key, drained=True)
        return out

    out = run(scenario())
    assert out[0] == (0, "drained by the operator")
    assert out[1][0] is None and out[1][1].startswith("HTTP 500")
    assert out[2][0] == 0
    assert out[3] == (5, "enabled by the operator")


def test_status_is_json() -> None:
    async def scenario() -> dict[str, Any]:
        rec = Recorder()
        async with backends(1) as (_, ports):
            # The first real server has its own check; the service has none for the second.
            rs = [
                {"address": LOOP, "port": ports[0], "check": {**FAST, "http": {}}},
                {"address": "127.0.0.2", "port": 80},
            ]
            svc = Service.model_validate(
                {
                    "name": "web",
                    "vip": "10.0.0.100",
                    "port": 80,
                    "sorry_server": "127.0.0.99",
                    "real_servers": rs,
                }
            )
            runner = HealthRunner([svc], rec.on_change)
            async with running(runner):
                await rec.until((LOOP, ports[0]), 1)
                status: dict[str, Any] = json.loads(json.dumps(runner.status()))
        return status

    status = run(scenario())
    web = status["services"][0]
    assert web["quorum"] == {"up": True, "live_weight": 2, "quorum": 0, "hysteresis": 0}
    assert web["sorry_server"] == "127.0.0.99:80" and web["sorry_active"] is False
    checked, unchecked = web["real_servers"]
    assert checked["check"] == "http" and checked["last_result"]["ok"] is True
    assert checked["last_result"]["reason"].startswith("HTTP 200 from 127.0.0.1:")
    # No check: up from the start, never checked.
    assert unchecked["check"] is None and unchecked["state"] == "UP"
    assert unchecked["last_result"] is None and unchecked["checks"] == 0
    assert status["stats"]["started"] >= 1


def test_start_is_spread_over_the_interval(tmp_path: Path) -> None:
    weight_file = tmp_path / "w"
    weight_file.write_text("1")

    async def scenario() -> int:
        rec = Recorder()
        rs = [{"address": LOOP, "port": 1000 + i} for i in range(40)]
        check = {"file": {"path": str(weight_file)}, "interval": "1s", "timeout": "1s"}
        runner = HealthRunner([service(rs, check)], rec.on_change, rng=random.Random(5))
        async with running(runner):
            await rec.change()  # the first check ran
            await asyncio.sleep(0.3)
            members = runner.status()["services"][0]["real_servers"]
            return sum(1 for m in members if m["checks"])

    ran = run(scenario())
    # Spread over the second, not all at once: some ran, most have not yet.
    assert 1 <= ran < 40


def test_stop_waits_for_misc_and_leaves_nothing(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    )

    async def scenario() -> None:
        rec = Recorder()
        check: dict[str, Any] = {"misc": {"command": [sys.executable, "-c", script]}}
        check.update({"interval": "2s", "timeout": "1s"})
        runner = HealthRunner([service([{"address": LOOP}], check)], rec.on_change)
        fds = len(os.listdir("/proc/self/fd"))
        runner.start()
        for _ in range(300):
            if pid_file.exists() and pid_file.read_text():
                break
            await asyncio.sleep(0.01)
        await runner.stop()
        pid = int(pid_file.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert len(os.listdir("/proc/self/fd")) <= fds
        assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    run(scenario())


def test_reload_keeps_history_and_applies_changes() -> None:
    a: RealServerKey = ("", 0)
    b: RealServerKey = ("", 0)

    async def scenario() -> tuple[list[tuple[RealServerKey, int | None]], dict[Any, Any]]:
        nonlocal a, b
        rec = Recorder()
        async with backends(2) as (_, ports):
            a, b = (LOOP, ports[0]), (LOOP, ports[1])
            first = service([{"address": LOOP, "port": ports[0], "weight": 1}], {"http": {}})
            runner = HealthRunner([first], rec.on_change)
            async with running(runner):
                await rec.until(a, 1)
                runner.set_override("web", a, drained=True)
                await rec.until(a, 0)
                second = service(
                    [
                        {"address": LOOP, "port": ports[0], "weight": 7},
                        {"address": LOOP, "port": ports[1], "weight": 2},
                    ],
                    {"http": {"path": "/other"}},
                )
                runner.reload([second])
                weights = runner.weights("web")
                runner.set_override("web", a, drained=False)
                changes = [(await rec.change())[:2]]
                changes.append((await rec.change())[:2])
        return changes, weights

    changes, weights = run(scenario())
    # The drained flag and the UP state of `a` survived the reload; `b` starts down (alpha).
    assert weights == {a: 0, b: None}
    assert sorted(changes, key=str) == sorted([(a, 7), (b, 2)], key=str)
