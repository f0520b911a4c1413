"""Composition root: builds the parts from the config, runs them, stops them cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from director import __version__, proc
from director.api.control import ControlServer
from director.config.models import Config, Instance
from director.health.feed import HealthFeed
from director.ipvs.runtime import IpvsRuntime
from director.net.addresses import InstanceVips, VipManager
from director.vrrp.announce import InstanceAnnouncer, PacketSockets
from director.vrrp.engine import Engine
from director.vrrp.instance import Announcements, Vips

log = logging.getLogger("director")


class Daemon:
    def __init__(self, config: Config, config_path: str, *, keep_ipvs: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.started_at = time.time()
        self.engine = Engine(config.vrrp, parts=self._parts)
        self.ipvs = IpvsRuntime(config, keep_on_stop=keep_ipvs)
        self.engine.listeners.append(self.ipvs.instance_changed)
        # Health decides which real servers IPVS gets; before the first check, alpha servers
        # are out and the others in at their configured weight.
        self.health = HealthFeed(config, self.ipvs.update_health) if config.services else None
        if self.health is not None:
            self.ipvs.update_health(*self.health.view())
        self.control = ControlServer(config.node.control_socket, self._control)
        self._stop = asyncio.Event()
        # One netlink socket for every instance's VIPs, one packet socket per interface.
        self.vip_manager = VipManager()
        self.packet_sockets = PacketSockets()

    def _parts(self, instance: Instance) -> tuple[Vips, Announcements]:
        vips = InstanceVips(instance, self.vip_manager)
        return vips, InstanceAnnouncer(instance, vips, self.packet_sockets)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.control.start()
        try:
            # IPVS first: a node that becomes master must already forward for its VIPs.
            await self.ipvs.start()
            if self.health is not None:
                self.health.start()
            await self.engine.start()
            log.info(
                "director %s started (%s): %d vrrp instance(s), %d service(s)",
                __version__,
                self.config.node.name,
                len(self.config.vrrp.instances),
                len(self.config.services),
            )
            await self._stop.wait()
            log.info("stopping")
            await self.engine.stop()
            if self.health is not None:
                await self.health.stop()
            await self.ipvs.stop()
            await proc.drain()
        finally:
            self.engine.close()
            self.ipvs.close()
            self.vip_manager.close()
            self.packet_sockets.close()
            await self.control.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("stopped")
        return 0

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["command"]
        if command == "status":
            return {"ok": True, "status": self.status()}
        if command in ("drain", "enable"):
            if self.health is None:
                return {"ok": False, "error": "this director has no services"}
            service, real_server = request.get("service"), request.get("real_server")
            if not isinstance(service, str) or not isinstance(real_server, str):
                return {"ok": False, "error": f"{command} needs 'service' and 'real_server'"}
            try:
                key = self.health.set_drained(service, real_server, command == "drain")
            except ValueError as exc:
                return {"ok": False, "error": str(exc)}
            return {
                "ok": True,
                "service": service,
                "real_server": key,
                "drained": command == "drain",
            }
        return {"ok": False, "error": f"unknown command {command!r}; known: status, drain, enable"}

    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.node.name,
            "version": __version__,
            "pid": os.getpid(),
            "config": self.config_path,
            "uptime": round(time.time() - self.started_at, 3),
            "vrrp": self.engine.status(),
            "ipvs": self.ipvs.status(),
            "health": self.health.status() if self.health is not None else {},
        }
