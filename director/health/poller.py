"""One epoll set for every probe socket, which the event loop watches as a single descriptor.

asyncio's add_reader/add_writer build a Handle and walk the selector's key map at each call; a
check arms a socket two or three times, and at 10,000 checks a second that bookkeeping costs
more than the system calls. Probe sockets go into an epoll set of their own instead (direct
epoll_ctl calls, a dict from descriptor to callback); the loop's selector watches that set's
descriptor, so everything still runs on the one event loop, in its thread, in its turn.

A socket leaves the set when it is closed (nothing else holds it), so probes `forget` a
descriptor and close the socket: no EPOLL_CTL_DEL needed.
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


class Poller:
    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Poller:
        poller = _by_loop.get(loop)
        if poller is None:
            poller = _by_loop[loop] = Poller(loop)
        return poller

    @classmethod
    def release(cls, loop: asyncio.AbstractEventLoop) -> None:
        """Close the loop's poller if no socket is in it (it is made again when needed)."""
        poller = _by_loop.get(loop)
        if poller is not None and not poller._handlers:
            del _by_loop[loop]
            poller.close()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry's value must not keep its own key (the loop) alive.
        self._loop = weakref.ref(loop)
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
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
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._handlers.clear()

    def _dispatch(self) -> None:
        handlers = self._handlers
        for fd, mask in self._epoll.poll(0):
            handler = handlers.get(fd)
            if handler is not None:
                handler(mask)
