"""Bring the kernel's IPVS table to the desired one: once (CLI), or continuously (daemon).

`sync_once` is the whole step: dump, plan, record ownership, apply in batches. The daemon's
`Reconciler` runs it in one task, level-triggered: a change anywhere marks it dirty, the task
coalesces whatever piled up into one sync, and a periodic resync repairs drift (an operator's
`ipvsadm -C` is undone within one period). Kernel calls run in a worker thread so a 10,000
service apply never stalls VRRP adverts on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from director.ipvs.model import Service, ServiceKey, Table
from director.ipvs.owned import OwnedStore
from director.ipvs.plan import DelService, Op, describe, plan

log = logging.getLogger("director.ipvs")


class Failure(Protocol):
    @property
    def op(self) -> Op: ...
    @property
    def message(self) -> str: ...


class Kernel(Protocol):
    def dump(self) -> dict[ServiceKey, Service]: ...
    def apply(self, ops: Sequence[Op]) -> Sequence[Failure]: ...


@dataclass
class SyncResult:
    ops: list[Op] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def sync_once(kernel: Kernel, desired: Table, store: OwnedStore, flush: bool) -> SyncResult:
    actual = kernel.dump()
    ops = plan(desired, actual, (lambda _key: True) if flush else store.owns)
    if not ops:
        store.save(desired.keys())
        return SyncResult()
    # Recorded before the change: a crash half-way leaves nothing the next run disowns.
    store.save(store.keys | desired.keys())
    failures = kernel.apply(ops)
    undeleted = {f.op.key for f in failures if isinstance(f.op, DelService)}
    store.save(set(desired) | undeleted)
    return SyncResult(ops, [f.message for f in failures])


def release(kernel: Kernel, store: OwnedStore) -> SyncResult:
    """Remove every service the director owns (stop, `director flush`)."""
    actual = kernel.dump()
    ops: list[Op] = [DelService(k) for k in sorted(actual) if store.owns(k)]
    failures = kernel.apply(ops) if ops else []
    store.save({f.op.key for f in failures if isinstance(f.op, DelService)})
    return SyncResult(ops, [f.message for f in failures])


class Reconciler:
    def __init__(
        self, kernel: Kernel, store: OwnedStore, *, flush: bool, resync_interval: float
    ) -> None:
        self.kernel = kernel
        self.store = store
        self.flush = flush
        self.resync_interval = resync_interval
        self.desired: Table = {}
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()  # set after each sync; lets callers await one
        self.syncs = 0
        self.ops_applied = 0
        self.drift_repairs = 0
        self.last_sync: float | None = None
        self.last_duration = 0.0
        self.errors: list[str] = []
        self._pending_change = False

    def set_desired(self, desired: Table) -> None:
        if desired != self.desired:
            self.desired = desired
            self._pending_change = True
            self._dirty.set()

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def sync_now(self) -> None:
        """Run one sync in the caller's task (start-up: IPVS is programmed before VRRP runs)."""
        await self._sync()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ipvs-reconciler")

    async def wait_synced(self) -> None:
        self._synced.clear()
        await self._synced.wait()

    async def stop(self, *, release_owned: bool) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if release_owned:
            result = await asyncio.to_thread(release, self.kernel, self.store)
            for message in result.failures:
                log.error("ipvs: on stop: %s", message)
            log.info("ipvs: removed %d service(s) on stop", len(result.ops))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.resync_interval)
            self._dirty.clear()
            try:
                await self._sync()
            except Exception as exc:  # the kernel socket failing must not end reconciling
                log.error("ipvs: sync failed: %s", exc)
                self.errors = [str(exc)]

    async def _sync(self) -> None:
        desired, expected = self.desired, self._pending_change
        self._pending_change = False
        started = time.monotonic()
        result = await asyncio.to_thread(sync_once, self.kernel, desired, self.store, self.flush)
        self.last_duration = time.monotonic() - started
        self.syncs += 1
        self.last_sync = time.time()
        self.ops_applied += len(result.ops)
        # Operations nobody asked for, and not a retry of what failed last time: drift.
        if result.ops and not expected and not self.errors:
            self.drift_repairs += 1
            log.warning("ipvs: kernel drifted from the desired state; repairing")
        for op in result.ops[:20]:
            log.info("ipvs: %s", describe(op))
        if len(result.ops) > 20:
            log.info("ipvs: ... and %d more operation(s)", len(result.ops) - 20)
        for message in result.failures:
            if message not in self.errors:
                log.error("ipvs: %s", message)
        self.errors = result.failures
        self._synced.set()

    def status(self) -> dict[str, Any]:
        return {
            "services": len(self.desired),
            "real_servers": sum(len(s.dests) for s in self.desired.values()),
            "syncs": self.syncs,
            "operations_applied": self.ops_applied,
            "drift_repairs": self.drift_repairs,
            "last_sync": self.last_sync,
            "last_sync_seconds": round(self.last_duration, 4),
            "errors": self.errors,
        }
