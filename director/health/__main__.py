"""Run health checks by hand or from a test, in whatever network namespace this runs in.

    python -m director.health check --check '{http: {path: /healthz}, timeout: 1s}' \\
        --address 10.0.0.21 --port 80 [--count 3] [--every 0.5]
    python -m director.health watch -c director.yaml [--duration 60] [--commands]

`check` runs one check (the `check` mapping of the config, YAML or JSON) against one real server
`count` times and prints one JSON line per attempt; it exits 0 if the last attempt passed, 1 if
it failed, 2 on a usage or config error.

`watch` runs the health runner on a config's services and prints JSON lines: `ready` with the
initial weights, then `weight` and `quorum` events as they happen (and `result` for every check
with `--results`). With `--commands` it reads
commands on stdin, one per line (`drain SERVICE ADDRESS PORT`, `enable SERVICE ADDRESS PORT`,
`status`) and stops at the end of stdin. It stops on SIGTERM, SIGINT or after `--duration`
seconds, printing `stopped` with the final status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from director import loop as precise_loop
from director.config import ConfigInvalid, ConfigUnreadable, load_config
from director.config.models import Check
from director.health.checkers import build_checker
from director.health.result import CheckResult
from director.health.runner import HealthRunner, RealServerKey


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


async def _check_once(check: Check, address: str, port: int, service: str) -> CheckResult:
    checker = build_checker(check, address, port, service)
    done: asyncio.Future[CheckResult] = asyncio.get_running_loop().create_future()
    probe = checker.start(check.timeout, done.set_result)
    try:
        return await done
    finally:
        probe.cancel()


async def _check(check: Check, address: str, port: int, count: int, every: float) -> int:
    result = CheckResult(False, "no attempt")
    for n in range(count):
        if n:
            await asyncio.sleep(every)
        started = time.monotonic()
        result = await _check_once(check, address, port, "oneshot")
        elapsed = round(time.monotonic() - started, 6)
        _emit({"ok": result.ok, "reason": result.reason, "weight": result.weight, "t": elapsed})
    return 0 if result.ok else 1


async def _watch(
    services: Any, duration: float | None, commands_on_stdin: bool, results: bool
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_change(service: str, key: RealServerKey, weight: int | None, reason: str) -> None:
        _emit(
            {
                "event": "weight",
                "service": service,
                "address": key[0],
                "port": key[1],
                "weight": weight,
                "reason": reason,
            }
        )

    def on_quorum(service: str, up: bool, reason: str) -> None:
        _emit({"event": "quorum", "service": service, "up": up, "reason": reason})

    def on_result(service: str, key: RealServerKey, result: CheckResult) -> None:
        _emit(
            {
                "event": "result",
                "service": service,
                "address": key[0],
                "port": key[1],
                "ok": result.ok,
                "reason": result.reason,
            }
        )

    runner = HealthRunner(
        services, on_change, on_quorum=on_quorum, on_result=on_result if results else None
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    weights = {
        svc.name: [[a, p, w] for (a, p), w in runner.weights(svc.name).items()] for svc in services
    }
    quorum = {svc.name: runner.quorum(svc.name) for svc in services}
    runner.start()
    _emit({"event": "ready", "weights": weights, "quorum": quorum})
    commands = loop.create_task(_commands(runner, stop)) if commands_on_stdin else None
    try:
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        if commands is not None:
            commands.cancel()
        await runner.stop()
    _emit({"event": "stopped", "status": runner.status()})
    return 0


async def _commands(runner: HealthRunner, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        words = line.decode().split()
        if words[:1] == ["status"]:
            _emit({"event": "status", "status": runner.status()})
        elif len(words) == 4 and words[0] in ("drain", "enable") and words[3].isdigit():
            try:
                runner.set_override(words[1], (words[2], int(words[3])), words[0] == "drain")
                _emit({"event": "override", "command": words})
            except KeyError as exc:
                _emit({"event": "error", "error": str(exc)})
        elif words:
            _emit({"event": "error", "error": f"unknown command {line.decode().strip()!r}"})
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m director.health", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("check", help="run one check against one real server")
    one.add_argument("--check", required=True, help="the check mapping, YAML or JSON")
    one.add_argument("--address", required=True)
    one.add_argument("--port", type=int, default=0)
    one.add_argument("--count", type=int, default=1)
    one.add_argument("--every", type=float, default=1.0, help="seconds between attempts")
    watch = sub.add_parser("watch", help="run the health runner on a config's services")
    watch.add_argument("-c", "--config", required=True)
    watch.add_argument("--duration", type=float, default=None, help="stop after this many s")
    watch.add_argument("--commands", action="store_true", help="read commands on stdin")
    watch.add_argument("--results", action="store_true", help="print every check's result")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check":
        try:
            check = Check.model_validate(yaml.safe_load(args.check))
        except (yaml.YAMLError, ValidationError) as exc:
            print(f"invalid --check: {exc}", file=sys.stderr)
            return 2
        count = max(1, min(args.count, 100_000))
        code: int = precise_loop.run(_check(check, args.address, args.port, count, args.every))
        return code
    try:
        config = load_config(args.config).config
    except (ConfigUnreadable, ConfigInvalid) as exc:
        print(exc, file=sys.stderr)
        return 2
    assert config is not None
    code = precise_loop.run(_watch(config.services, args.duration, args.commands, args.results))
    return code


if __name__ == "__main__":
    sys.exit(main())
