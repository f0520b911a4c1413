"""The daemon's event loop: asyncio with timers that fire on time.

asyncio's epoll selector rounds every wait up to a whole millisecond (epoll_wait counts
milliseconds), so each timer fires up to 1 ms late; at 10 ms adverts that is a tenth of an
interval. Waiting on the epoll descriptor itself with select(), which takes microseconds, keeps
epoll for readiness (no limit on the number of descriptors) and makes the wait precise.

The kernel lets a timed wait expire up to 0.1 % late (timer slack): 3.6 ms on a 3.6 s
Master_Down_Interval. Waits are therefore cut into slices of at most 50 ms (slack then stays
near 50 us), at the cost of one wake-up per 50 ms of idling.
"""

from __future__ import annotations

import asyncio
import select
import selectors
from typing import Any

MAX_SLICE = 0.05


class PreciseEpollSelector(selectors.EpollSelector):
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout > 0:
            # Only the epoll descriptor goes to select(): readable when any registered one is.
            select.select([self.fileno()], [], [], min(timeout, MAX_SLICE))
            timeout = 0
        return super().select(timeout)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(PreciseEpollSelector())


def run(main: Any) -> Any:
    """asyncio.run(main) on the precise loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
