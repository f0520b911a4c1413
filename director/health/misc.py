"""MISC check: an external command, without a shell, bounded by the check's timeout.

Exit 0 is up, 1 is down; with `dynamic_weight` an exit of 2-255 is up with weight = code - 2
(keepalived's misc_dynamic), otherwise any non-zero exit is down. The command runs through
director.proc (no shell, stdio detached, killed by its pid at the timeout).
"""

from __future__ import annotations

import asyncio

from director import proc
from director.config.models import MiscCheck
from director.health.probe import Done
from director.health.result import CheckResult


class MiscProbe:
    """Cancelling detaches the result but lets the command run to its end or its timeout:
    proc.run kills the child at the timeout, not when its task is cancelled, so cancelling the
    task would leave the process behind. The runner waits for `task` when it stops."""

    __slots__ = ("_done", "task")

    def __init__(self, checker: MiscChecker, timeout: float, done: Done) -> None:
        self._done: Done | None = done
        self.task = asyncio.get_running_loop().create_task(checker.run(timeout))
        self.task.add_done_callback(self._finished)

    def cancel(self) -> None:
        self._done = None

    def expire(self) -> None:
        """proc.run enforces the timeout (and kills the command)."""

    def _finished(self, task: asyncio.Task[CheckResult]) -> None:
        done, self._done = self._done, None
        if done is None or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            done(CheckResult(False, f"checker error: {type(exc).__name__}: {exc}"))
        else:
            done(task.result())


class MiscChecker:
    kind = "misc"

    def __init__(self, misc: MiscCheck) -> None:
        self.argv = list(misc.command)
        self.dynamic = misc.dynamic_weight

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> MiscProbe:
        return MiscProbe(self, timeout, done)

    async def run(self, timeout: float) -> CheckResult:
        outcome = await proc.run(self.argv, timeout)
        name = self.argv[0]
        code = outcome.returncode
        if code is None:
            return CheckResult(False, f"{name}: {outcome.reason}")
        if code == 0:
            return CheckResult(True, f"{name} exited 0")
        if code < 0:
            return CheckResult(False, f"{name} killed by signal {-code}")
        if code >= 2 and self.dynamic:
            return CheckResult(True, f"{name} exited {code}: weight {code - 2}", weight=code - 2)
        return CheckResult(False, f"{name} exited {code}")
