"""The asyncio shell around one VRRP instance: timer, sockets, VIPs, announcements, notify.

The state machine (router.py) decides; this carries out its actions in order and re-arms the one
timer it exposes. Nothing here blocks the loop: kernel address calls are sub-millisecond netlink
requests and scripts run as child processes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from director.config.models import Instance
from director.vrrp.auth import AhCheck, AhSequence, build_ah_packet, next_ip_id, password_field
from director.vrrp.packet import Advert, AuthType, Drop, IPAddress, encode
from director.vrrp.receive import Expect, Received
from director.vrrp.router import (
    Action,
    AddVips,
    Announce,
    RemoveVips,
    Router,
    RouterConfig,
    SendAdvert,
    State,
    Transition,
)
from director.vrrp.tracking import Effect
from director.vrrp.transport import Channel

log = logging.getLogger("director.vrrp")


class Vips(Protocol):
    """An instance's VIPs: add/remove return at once; the kernel work follows in order."""

    def add(self) -> None: ...
    def remove(self) -> None: ...
    async def remove_leftovers(self) -> Any: ...
    async def aclose(self) -> None: ...


class Announcements(Protocol):
    async def prepare(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


# Called after every state change of an instance (notify, sync groups).
TransitionHook = Callable[["InstanceRunner", Transition], None]


class InstanceRunner:
    def __init__(
        self,
        cfg: Instance,
        channel: Channel,
        vips: Vips,
        announcer: Announcements,
        *,
        on_transition: TransitionHook,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.channel = channel
        self.vips = vips
        self.announcer = announcer
        self.loop = loop
        self.on_transition = on_transition
        self.interval_cs = round(cfg.advert_interval * 100)
        self.addresses = tuple(a.ip for a in cfg.addresses)
        self.router = Router(
            RouterConfig(
                name=cfg.name,
                vrid=cfg.vrid,
                version=cfg.version,
                priority=cfg.priority,
                interval_cs=self.interval_cs,
                primary=channel.source,
                preempt=cfg.preempt,
                preempt_delay=cfg.preempt_delay,
                graceful_handoff=cfg.graceful_handoff,
            )
        )
        auth = cfg.auth
        self.auth_type = AuthType.NONE if auth is None else AuthType[auth.type.upper()]
        self.password = password_field(auth.password) if auth else b"\0" * 8
        peers = None if cfg.unicast is None else frozenset(cfg.unicast.peers)
        self.peers: tuple[IPAddress, ...] = tuple(cfg.unicast.peers) if cfg.unicast else ()
        # AH: one sequence counter for both directions, as keepalived keeps it.
        self.ah_sequence = AhSequence()
        self.ah_check = (
            AhCheck(self.password, cfg.unicast is not None, self.ah_sequence)
            if self.auth_type is AuthType.AH
            else None
        )
        self._ip_id = 0
        self.expect = Expect(
            version=cfg.version,
            vrid=cfg.vrid,
            interval_cs=self.interval_cs,
            addresses=frozenset(self.addresses),
            auth_type=self.auth_type,
            password=self.password,
            peers=peers,
            ah_check=self.ah_check,
        )
        self.counters: collections.Counter[str] = collections.Counter()
        self.fault_reasons: tuple[str, ...] = ()
        self.last_transition: tuple[float, str, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._messages: dict[tuple[int, IPAddress], bytes] = {}
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------ events in

    def start(self) -> None:
        self._apply(self.router.start(self.loop.time()))

    def received(self, got: Received) -> None:
        self.counters["adverts_received"] += 1
        if got.advert.priority == 0:
            self.counters["priority_zero_received"] += 1
        advert = got.advert
        if (
            self.ah_check is not None
            and self.router.state is State.MASTER
            and 0 < advert.priority < self.router.priority
        ):
            # keepalived: our next advert must number above the newcomer's.
            self.ah_sequence.lower_priority_seen(self.ah_sequence.counter)
        self._apply(
            self.router.receive(got.src, advert.priority, advert.interval_cs, self.loop.time())
        )

    def dropped(self, reason: Drop) -> None:
        self.counters[f"drop_{reason.value}"] += 1

    def tracking_changed(self, effect: Effect) -> None:
        now = self.loop.time()
        actions: list[Action] = list(self.router.set_priority(effect.priority, now))
        if effect.faults != self.fault_reasons:
            was, self.fault_reasons = self.fault_reasons, effect.faults
            if effect.fault and not was:
                actions += self.router.set_fault(True, f"{', '.join(effect.faults)} failed", now)
            elif was and not effect.fault:
                actions += self.router.set_fault(False, f"{', '.join(was)} recovered", now)
        self._apply(actions)

    def force(self, state: State, reason: str) -> None:
        now = self.loop.time()
        if state is State.BACKUP:
            self._apply(self.router.force_backup(reason, now))
        elif state is State.MASTER:
            self._apply(self.router.force_master(reason, now))
        elif state is State.FAULT:
            self._apply(self.router.set_fault(True, reason, now))

    def stop(self) -> None:
        self._apply(self.router.stop(self.loop.time()))

    async def stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------ actions out

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendAdvert):
                self._send(action.priority)
            elif isinstance(action, AddVips):
                self.vips.add()
            elif isinstance(action, RemoveVips):
                self.announcer.stop()
                self.vips.remove()
            elif isinstance(action, Announce):
                self.announcer.start()
            elif isinstance(action, Transition):
                self._transition(action)
        self._rearm()

    def _send(self, priority: int) -> None:
        destinations = self.channel.destinations(self.peers)
        for dst in destinations:
            message = self._messages.get((priority, dst))
            if message is None:
                # Built once per (priority, destination), IP header included: the v3 checksum
                # covers the destination. With AH only the VRRP part can be kept.
                advert = Advert(
                    version=self.cfg.version,
                    vrid=self.cfg.vrid,
                    priority=priority,
                    interval_cs=self.interval_cs,
                    addresses=self.addresses,
                    auth_type=self.auth_type,
                    auth_data=self.password if self.auth_type is AuthType.PASS else b"\0" * 8,
                )
                message = encode(advert, self.channel.source, dst)
                if self.ah_check is None:
                    message = self.channel.frame(message, dst)
                self._messages[(priority, dst)] = message
            if self.ah_check is not None:
                # Sequence number and IP id are inside the ICV: a new packet every time.
                self._ip_id = next_ip_id(self._ip_id)
                message = build_ah_packet(
                    self.channel.source,  # type: ignore[arg-type]  # AH is IPv4 only
                    dst,  # type: ignore[arg-type]
                    message,
                    self.password,
                    self.ah_sequence.next_send(),
                    self._ip_id,
                )
            self.channel.send(message, dst)
        self.counters["adverts_sent"] += 1
        if priority == 0:
            self.counters["priority_zero_sent"] += 1

    def _transition(self, change: Transition) -> None:
        self.counters[f"became_{change.new.value.lower()}"] += 1
        self.last_transition = (time.time(), change.new.value, change.reason)
        if change.new is State.MASTER:
            self.ah_sequence.become_master()
        elif change.old is State.MASTER:
            self.announcer.stop()  # no refresh while handing off or after
        log.info(
            "%s: %s -> %s (%s), priority %d",
            self.name,
            change.old.value,
            change.new.value,
            change.reason,
            self.router.priority,
        )
        if change.new is State.STOP:
            self._stopped.set()
        self.on_transition(self, change)

    def _rearm(self) -> None:
        deadline = self.router.deadline
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = None if deadline is None else self.loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self._apply(self.router.timer(self.loop.time()))

    # ------------------------------------------------------------ status

    def _all_counters(self) -> dict[str, int]:
        counters = dict(self.counters)
        if self.ah_check is not None:
            counters["drop_ah_icv"] = self.ah_check.icv_failures
            counters["drop_ah_replay"] = self.ah_check.replays
        return counters

    def status(self) -> dict[str, Any]:
        r = self.router
        last = self.last_transition
        return {
            "name": self.name,
            "state": r.state.value,
            "priority": r.priority,
            "configured_priority": self.cfg.priority,
            "vrid": self.cfg.vrid,
            "version": self.cfg.version,
            "interface": self.cfg.interface,
            "source": str(self.channel.source),
            "master": None if r.master is None else str(r.master),
            "master_down_interval": round(r.master_down_interval, 6),
            "addresses": [str(a.address) for a in self.cfg.addresses],
            "faults": list(self.fault_reasons),
            "last_transition": None
            if last is None
            else {"at": last[0], "state": last[1], "reason": last[2]},
            "counters": dict(sorted(self._all_counters().items())),
        }
