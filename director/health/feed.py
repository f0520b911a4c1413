"""Health results into IPVS: the daemon's link between the check runner and the reconciler.

Every change (a real server's weight, a service's quorum, an operator's drain) rebuilds the
weights the desired table is made from and hands them on; the reconciler coalesces. Drains
are recorded in the state directory and put back at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from director.config.models import Config
from director.health.maintenance import DrainedStore, parse_real_server
from director.health.runner import HealthRunner, RealServerKey
from director.ipvs.desired import Weights
from director.ipvs.model import DestKey

log = logging.getLogger("director.health")

Update = Callable[[Weights, frozenset[str]], None]


class HealthFeed:
    def __init__(self, config: Config, update: Update) -> None:
        self.config = config
        self.update = update
        self.drained = DrainedStore(config.node.state_dir)
        self.runner = HealthRunner(config.services, on_change=self._changed, on_quorum=self._quorum)
        for service, address, port in sorted(self.drained.load()):
            try:
                self.runner.set_override(service, (address, port), drained=True)
            except KeyError:
                log.info(
                    "drained %s %s:%d is no longer configured; forgotten", service, address, port
                )

    def view(self) -> tuple[Weights, frozenset[str]]:
        weights: dict[tuple[str, DestKey], int | None] = {}
        sorry: set[str] = set()
        for svc in self.config.services:
            for (address, port), weight in self.runner.weights(svc.name).items():
                weights[(svc.name, DestKey(address, port))] = weight
            if not self.runner.quorum(svc.name):
                sorry.add(svc.name)
        return weights, frozenset(sorry)

    def start(self) -> None:
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def _changed(self, _service: str, _rs: RealServerKey, _weight: int | None, _why: str) -> None:
        self.update(*self.view())

    def _quorum(self, _service: str, _up: bool, _why: str) -> None:
        self.update(*self.view())

    def set_drained(self, service_name: str, real_server: str, drained: bool) -> str:
        """The operator's drain (weight 0) or enable; returns `ADDRESS:PORT`. ValueError names
        an unknown service or real server."""
        service = next((s for s in self.config.services if s.name == service_name), None)
        if service is None:
            known = ", ".join(s.name for s in self.config.services) or "none"
            raise ValueError(f"no service named {service_name!r} (known: {known})")
        key = parse_real_server(service, real_server)
        entries = {(name, a, p) for name, (a, p) in self.runner.overrides()}
        entry = (service.name, *key)
        # Recorded first: a drain that could not be kept must not be half applied.
        try:
            self.drained.save(entries | {entry} if drained else entries - {entry})
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ValueError(f"cannot record it in {self.drained.path}: {why}") from None
        self.runner.set_override(service.name, key, drained)
        self.update(*self.view())
        return f"{key[0]}:{key[1]}"

    def status(self) -> dict[str, Any]:
        return self.runner.status()
