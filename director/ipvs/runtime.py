"""The daemon's IPVS part: modules and sysctls, the reconciler, the sync daemon.

IPVS is programmed on every director whatever its VRRP state (as keepalived does), so a
failover moves only addresses. The kernel's connection sync daemon follows one VRRP instance:
master while it is MASTER, backup otherwise, so connections established through this node
survive on the peer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from director.config.models import Config
from director.ipvs.desired import Weights, desired_table
from director.ipvs.kernel import IpvsKernel
from director.ipvs.model import SyncDaemon, Table
from director.ipvs.owned import OwnedStore
from director.ipvs.reconcile import Reconciler
from director.ipvs.system import SysctlGuard, load_modules, requirements, timeouts

log = logging.getLogger("director.ipvs")


class IpvsRuntime:
    def __init__(self, config: Config, *, keep_on_stop: bool = False) -> None:
        self.config = config
        self.keep_on_stop = keep_on_stop
        self.sysctls = SysctlGuard()
        self.kernel: IpvsKernel | None = None
        # Its own socket: the reconciler's runs in a worker thread at the same time.
        self.sync_kernel: IpvsKernel | None = None
        self.reconciler: Reconciler | None = None
        self.weights: Weights = {}
        self.sorry: frozenset[str] = frozenset()
        self.sync_state: str | None = None  # "master" | "backup" while a sync daemon runs
        self._sync_lock = asyncio.Lock()
        self._follow_tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.config.services) or self.config.ipvs.sync_daemon is not None

    async def start(self) -> None:
        """Modules, sysctls, and the first full sync, before VRRP may take any VIP."""
        if not self.enabled:
            return
        needs = requirements(self.config)
        await asyncio.to_thread(load_modules, ("ip_vs", *needs.modules))
        if self.config.ipvs.sysctls:
            changed = self.sysctls.apply({k: v for k, (v, _) in needs.sysctls.items()})
            for name, before in changed.items():
                log.info("sysctl %s: %d -> %d (%s)", name, before, *needs.sysctls[name])
        self.kernel = IpvsKernel()
        wanted = timeouts(self.config)
        if wanted is not None:
            self.kernel.set_timeouts(*wanted)
        self.reconciler = Reconciler(
            self.kernel,
            OwnedStore(self.config.node.state_dir),
            flush=self.config.ipvs.flush,
            resync_interval=self.config.ipvs.resync_interval,
        )
        self.reconciler.set_desired(self._desired())
        await self.reconciler.sync_now()
        self.reconciler.start()
        if self.config.ipvs.sync_daemon is not None:
            self.sync_kernel = IpvsKernel()
            await self.follow("BACKUP")

    def _desired(self) -> Table:
        return desired_table(self.config.services, self.weights, self.sorry)

    def update_health(self, weights: Weights, sorry: frozenset[str]) -> None:
        self.weights, self.sorry = weights, sorry
        if self.reconciler is not None:
            self.reconciler.set_desired(self._desired())

    # ------------------------------------------------------------ sync daemon

    def instance_changed(self, instance: str, state: str) -> None:
        """Engine listener: the sync daemon's role follows its instance's VRRP state."""
        daemon = self.config.ipvs.sync_daemon
        if daemon is not None and instance == daemon.instance and self.sync_kernel is not None:
            task = asyncio.get_running_loop().create_task(self.follow(state))
            self._follow_tasks.add(task)
            task.add_done_callback(self._follow_tasks.discard)

    async def follow(self, vrrp_state: str) -> None:
        cfg = self.config.ipvs.sync_daemon
        if cfg is None or self.sync_kernel is None:
            return
        want: Literal["master", "backup"] = "master" if vrrp_state == "MASTER" else "backup"
        async with self._sync_lock:
            if want == self.sync_state:
                return
            other = "backup" if want == "master" else "master"
            daemon = SyncDaemon(
                state=want,
                interface=cfg.interface,
                sync_id=cfg.sync_id,
                maxlen=cfg.maxlen,
                group=str(cfg.group) if cfg.group is not None else "",
                port=cfg.port or 0,
                ttl=cfg.ttl or 0,
            )
            try:
                await asyncio.to_thread(self._switch, other, daemon)
            except Exception as exc:
                log.error("ipvs sync daemon: cannot start as %s: %s", want, exc)
                return
            self.sync_state = want
            log.info("ipvs sync daemon: %s on %s (sync id %d)", want, cfg.interface, cfg.sync_id)

    def _switch(self, other: str, daemon: SyncDaemon) -> None:
        assert self.sync_kernel is not None
        running = {d.state for d in self.sync_kernel.daemons()}
        if other in running:
            self.sync_kernel.stop_daemon(other)
        if daemon.state in running:
            self.sync_kernel.stop_daemon(daemon.state)  # restart with our settings
        self.sync_kernel.start_daemon(daemon)

    # ------------------------------------------------------------ stop

    async def stop(self) -> None:
        if self._follow_tasks:
            await asyncio.gather(*self._follow_tasks, return_exceptions=True)
        if self.reconciler is not None:
            await self.reconciler.stop(release_owned=not self.keep_on_stop)
        if self.sync_kernel is not None and self.sync_state is not None:
            try:
                await asyncio.to_thread(self.sync_kernel.stop_daemon, self.sync_state)
            except Exception as exc:
                log.error("ipvs sync daemon: cannot stop: %s", exc)
            self.sync_state = None
        self.sysctls.restore()

    def close(self) -> None:
        for kernel in (self.kernel, self.sync_kernel):
            if kernel is not None:
                kernel.close()
        self.kernel = self.sync_kernel = None

    def status(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        out: dict[str, Any] = self.reconciler.status() if self.reconciler else {}
        out["sync_daemon"] = self.sync_state
        out["sysctls_changed"] = dict(self.sysctls.changed)
        return out
