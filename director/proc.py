"""External commands (notify, track and MISC scripts): no shell, a timeout, never blocking."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger("director.proc")


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: did not finish (timeout) or could not start
    reason: str  # "exit 0", "timeout after 1s", "cannot run: ..."


async def run(argv: Sequence[str], timeout: float) -> Outcome:
    """Run `argv` with stdin/stdout/stderr detached; kill it (by its pid) after `timeout`."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return Outcome(None, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return Outcome(None, f"timeout after {timeout:g}s")
    return Outcome(code, f"exit {code}")


_pending: set[asyncio.Task[Outcome]] = set()


def spawn(argv: Sequence[str], timeout: float, what: str) -> asyncio.Task[Outcome]:
    """Fire and forget (notify scripts): logs a failure, never raises into the caller."""

    async def go() -> Outcome:
        outcome = await run(argv, timeout)
        if outcome.returncode != 0:
            log.warning("%s %s: %s", what, list(argv), outcome.reason)
        return outcome

    task = asyncio.get_running_loop().create_task(go())
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def drain() -> None:
    """Wait for spawned commands (each is bounded by its own timeout): the stop notifications
    must run before the daemon exits."""
    while _pending:
        await asyncio.wait(set(_pending))
