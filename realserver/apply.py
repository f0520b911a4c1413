"""All or nothing: run steps through an executor; on a failure, undo what was done.

Pure orchestration: the executor (the kernel side) is passed in, so this is testable with a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from realserver.steps import Step, inverse

Executor = Callable[[Step], None]
Recorder = Callable[[Sequence[Step]], None]


class StepFailed(Exception):
    """A step failed; the steps before it were rolled back (unless rollback_errors says not)."""

    def __init__(self, step: Step, cause: BaseException, rollback_errors: list[str]) -> None:
        message = f"step '{step.describe()}' failed: {cause}"
        if rollback_errors:
            message += "; rollback incomplete: " + "; ".join(rollback_errors)
        super().__init__(message)
        self.step = step
        self.cause = cause
        self.rollback_errors = rollback_errors


def apply_all(steps: Sequence[Step], execute: Executor, record: Recorder | None = None) -> None:
    """Execute `steps` in order. `record` is called with this run's steps so far before each
    step runs (write-ahead: the state file names a step before the kernel sees it; the caller
    appends them to any earlier state), and once more when all are done. On a failure the done
    steps are undone newest first, `record` gets what could not be undone, and StepFailed is
    raised naming the step."""
    done: list[Step] = []
    for step in steps:
        if record is not None:
            record([*done, step])
        try:
            execute(step)
        except Exception as exc:
            left = rollback(done, execute)
            if record is not None:
                record([s for s, _ in left])
            raise StepFailed(
                step, exc, [f"could not undo {s.describe()}: {e}" for s, e in left]
            ) from exc
        done.append(step)
    if record is not None:
        record(done)


def rollback(done: Sequence[Step], execute: Executor) -> list[tuple[Step, Exception]]:
    """Undo `done` newest first, carrying on past failures; returns the steps that could not be
    undone (in the order applied) with the error, so they stay recorded for `stop`."""
    left: list[tuple[Step, Exception]] = []
    for step in reversed(done):
        undo = inverse(step)
        if undo is None:
            continue
        try:
            execute(undo)
        except Exception as exc:
            left.append((step, exc))
    return left[::-1]
