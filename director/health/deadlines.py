"""Many deadlines behind one asyncio timer.

Every check has a deadline pending at all times (its next attempt or its timeout). As asyncio
timers, each would be a TimerHandle in the loop's heap, ordered by a comparison written in
Python: at 10,000 checks a second that alone costs more than the probes. Here a deadline is a
tuple in a heap of our own (compared in C), and the loop holds one timer, for the earliest.
Deadlines that no longer matter are not removed: their callback sees a stale token and returns.

With `slack`, the timer is armed that much after the earliest deadline, and every deadline due
by then runs in the same turn (timer coalescing): when the loop is otherwise idle, each turn
costs several system calls and the loop's own bookkeeping, so starting checks in small groups
rather than one per wake-up halves the CPU per check at moderate rates. Deadlines then run up
to `slack` late, which the runner keeps to 5 % of the check interval.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger("director.health")

Callback = Callable[[Any, float], None]  # (token, when it was due)

# Deadlines handled per turn of the loop, so that a backlog (after a stall) does not starve the
# sockets' callbacks.
BATCH = 256
# A deadline this close to now is due: the loop may wake a hair early.
SLACK = 1e-6


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop, slack: float = 0.0) -> None:
        self._loop = loop
        self.slack = slack
        # Called before and after each batch: the runner polls its sockets there. Before, so
        # that a reply that came in ahead of its timeout's turn counts; after, so that
        # connections that completed while the batch started them are served in this turn.
        self.poll: Callable[[], object] | None = None
        self._heap: list[tuple[float, int, Callback, Any]] = []
        self._seq = itertools.count()
        self._handle: asyncio.Handle | None = None
        self._armed = math.inf
        self._running = False

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, callback: Callback, token: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), callback, token))
        if not self._running and when + self.slack < self._armed:
            self._arm(when + self.slack)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed = math.inf
        self._heap.clear()

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed = math.inf
        heap, loop = self._heap, self._loop
        end = loop.time() + SLACK
        count = 0
        self._running = True
        try:
            if self.poll is not None:
                self.poll()
            while heap and heap[0][0] <= end and count < BATCH:
                when, _, callback, token = heapq.heappop(heap)
                count += 1
                try:
                    callback(token, when)
                except Exception:
                    log.exception("health deadline callback failed")
            if self.poll is not None and count:
                self.poll()
        finally:
            self._running = False
        if not heap:
            return
        if heap[0][0] <= loop.time() + SLACK:
            # More are due: after the sockets had their turn.
            self._armed = -math.inf
            self._handle = loop.call_soon(self._run)
        else:
            self._arm(heap[0][0] + self.slack)
