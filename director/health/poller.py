"""One epoll set for every probe socket, which the event loop watches as a single descriptor.

asyncio's add_reader/add_writer build a Handle and walk the selector's key map at each call; a
check arms a socket two or three times, and at 10,000 checks a second that bookkeeping costs
more than the system calls. Probe sockets go into an epoll set of their own instead (direct
epoll_ctl calls, a dict from descriptor to callback); the loop's selector watches that set's
descriptor, so everything still runs on the one event loop, in its thread, in its turn.

A socket leaves the set when it is closed (nothing else holds it), so probes `forget` a
descriptor and close the socket: no EPOLL_CTL_DEL needed.

With `coalesce` set, the set is not watched for that long after each dispatch: it is polled
again then, and watched again only when that poll finds nothing (as a network driver switches
between interrupts and polling). What becomes ready meanwhile, such as the replies to a group
of checks started together, is taken in one turn of the loop instead of one turn each: an idle
loop spends more per turn than a check costs. Events then wait up to `coalesce` seconds, which
the runner keeps to 5 % of the check interval.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import Callable

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP
EDGE = select.EPOLLET

Handler = Callable[[int], None]  # gets the epoll event mask


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Poller] = weakref.WeakKeyDictionary()


_last: list[Poller | None] = [None]  # the poller asked for last


class Poller:
    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Poller:
        last = _last[0]
        if last is not None and last._loop() is loop:
            return last  # once per check: skip the weak dictionary's own weakref
        poller = _by_loop.get(loop)
        if poller is None:
            poller = _by_loop[loop] = Poller(loop)
        _last[0] = poller
        return poller

    @classmethod
    def existing(cls, loop: asyncio.AbstractEventLoop) -> Poller | None:
        return _by_loop.get(loop)

    @classmethod
    def release(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Close the loop's poller if no socket is in it (it is made again when needed)."""
        poller = _by_loop.get(loop)
        if poller is not None and not poller._handlers:
            del _by_loop[loop]
            _last[0] = None
            poller.close()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry's value must not keep its own key (the loop) alive.
        self._loop = weakref.ref(loop)
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self.coalesce = 0.0
        self._resume: asyncio.TimerHandle | None = None  # set while not watched
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def watch(self, fd: int, events: int, handler: Handler) -> None:
        """Call `handler(mask)` when `fd` is ready for `events` (level-triggered, or at each
        change with EDGE)."""
        if fd in self._handlers:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
        self._handlers[fd] = handler

    def forget(self, fd: int) -> None:
        """Before the caller closes `fd` (closing takes it out of the set)."""
        self._handlers.pop(fd, None)

    def close(self) -> None:
        loop = self._loop()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        elif loop is not None and not loop.is_closed():
            loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._handlers.clear()

    def dispatch(self) -> int:
        """Run the handlers of every ready descriptor now; how many there were."""
        handlers = self._handlers
        ready = self._epoll.poll(0)
        for fd, mask in ready:
            handler = handlers.get(fd)
            if handler is not None:
                handler(mask)
        return len(ready)

    def _dispatch(self) -> None:
        self.dispatch()
        loop = self._loop()
        if self.coalesce > 0 and loop is not None:
            loop.remove_reader(self._epoll.fileno())
            self._resume = loop.call_later(self.coalesce, self._poll_again, loop)

    def _poll_again(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.dispatch() and self.coalesce > 0:
            self._resume = loop.call_later(self.coalesce, self._poll_again, loop)
        else:
            self._resume = None
            loop.add_reader(self._epoll.fileno(), self._dispatch)
