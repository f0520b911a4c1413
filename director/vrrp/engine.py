"""Runs the `vrrp` section: channels, instances, tracking, sync groups and notifications."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

from director import proc
from director.config.models import Instance, Notify, SyncGroup, TrackScript, Vrrp
from director.vrrp.instance import Announcements, InstanceRunner, Vips
from director.vrrp.packet import IPAddress
from director.vrrp.receive import Expect, Refused, check_ipv4, check_ipv6
from director.vrrp.router import State, Transition
from director.vrrp.tracking import RiseFall, Tracked, effective
from director.vrrp.transport import Channel

log = logging.getLogger("director.vrrp")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

# An instance -> its VIPs and its announcer: supplied by the composition root.
PartsFactory = Callable[[Instance], tuple[Vips, Announcements]]


class EngineError(Exception):
    pass


async def local_source(ifname: str, family: int, vips: Sequence[IPAddress]) -> IPAddress:
    """This router's own address on `ifname`: for IPv6 its link-local address (RFC 5798 5.1.2.1),
    for IPv4 its first address that is not a VIP."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise EngineError(f"interface {ifname!r} does not exist") from None
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    # The sync IPRoute runs its own event loop, which cannot nest in ours.
    async with AsyncIPRoute() as ipr:
        async for msg in await ipr.addr("dump", index=index, family=af):
            address = ipaddress.ip_address(msg.get("IFA_ADDRESS"))
            if address in vips:
                continue
            if family == 6 and not address.is_link_local:
                continue
            return address
    kind = "link-local IPv6" if family == 6 else "IPv4"
    raise EngineError(f"interface {ifname!r} has no {kind} address to send adverts from")


class InstanceTracking:
    """The tracked objects of one instance and their effect on its priority."""

    def __init__(self, runner: InstanceRunner) -> None:
        self.runner = runner
        cfg = runner.cfg
        # keepalived puts an instance in FAULT when its own interface goes down.
        self.interfaces: dict[str, int] = {cfg.interface: 0}
        for item in cfg.track.interfaces:
            self.interfaces[item.name] = item.weight
        self.link_up: dict[str, bool] = {}
        self.scripts = {s.name: RiseFall(s.rise, s.fall) for s in cfg.track.scripts}
        self.files: dict[str, int] = {}

    def tracked(self) -> list[Tracked]:
        cfg = self.runner.cfg
        out = [
            Tracked(f"interface {name}", weight, self.link_up.get(name, True))
            for name, weight in self.interfaces.items()
        ]
        out += [
            Tracked(f"script {s.name}", s.weight, self.scripts[s.name].healthy)
            for s in cfg.track.scripts
        ]
        out += [
            Tracked(f"file {f.path}", f.weight, value=self.files.get(f.path, 0))
            for f in cfg.track.files
        ]
        return out

    def apply(self) -> None:
        cfg = self.runner.cfg
        self.runner.tracking_changed(
            effective(cfg.priority, self.tracked(), owner=cfg.address_owner)
        )


class Engine:
    def __init__(self, config: Vrrp, *, parts: PartsFactory) -> None:
        self.config = config
        self.make_parts = parts
        self.runners: dict[str, InstanceRunner] = {}
        self.tracking: dict[str, InstanceTracking] = {}
        self.channels: dict[tuple[str, str, bool, bool], Channel] = {}
        self.channel_expect: dict[Channel, dict[int, Expect]] = {}
        self.channel_runners: dict[Channel, dict[int, InstanceRunner]] = {}
        self.channel_drops: dict[Channel, dict[str, int]] = {}
        self.group_of: dict[str, SyncGroup] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._ipr: AsyncIPRoute | None = None
        # Called with (instance name, new state) on every transition (the IPVS sync daemon).
        self.listeners: list[Callable[[str, str], None]] = []

    # ------------------------------------------------------------ build

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for group in self.config.sync_groups:
            for member in group.instances:
                self.group_of[member] = group
        try:
            for cfg in self.config.instances:
                vips = [a.ip for a in cfg.addresses]
                source = (
                    cfg.unicast.source
                    if cfg.unicast is not None and cfg.unicast.source is not None
                    else await local_source(cfg.interface, cfg.family, vips)
                )
                channel = self._channel(cfg, source)
                vips_of, announcer = self.make_parts(cfg)
                runner = InstanceRunner(
                    cfg,
                    channel,
                    vips_of,
                    announcer,
                    on_transition=self._transitioned,
                    loop=loop,
                )
                self.runners[cfg.name] = runner
                self.tracking[cfg.name] = InstanceTracking(runner)
                self.channel_expect[channel][cfg.vrid] = runner.expect
                self.channel_runners[channel][cfg.vrid] = runner
        except Exception:
            self.close()
            raise
        # A crashed run may have left VIPs behind: remove them before anything enters BACKUP.
        for runner in self.runners.values():
            await runner.vips.remove_leftovers()
            await runner.announcer.prepare()
        await self._watch_links()
        for channel in self.channels.values():
            channel.start(loop)
        for runner in self.runners.values():
            runner.start()
            self.tracking[runner.name].apply()
        for name, tracking in self.tracking.items():
            cfg = self.runners[name].cfg
            for script in cfg.track.scripts:
                self._tasks.append(loop.create_task(self._run_script(tracking, script)))
            for tfile in cfg.track.files:
                self._tasks.append(loop.create_task(self._watch_file(tracking, tfile.path)))

    def _channel(self, cfg: Instance, source: IPAddress) -> Channel:
        multicast = cfg.unicast is None
        ah = cfg.auth is not None and cfg.auth.type == "ah"
        key = (cfg.interface, str(source), multicast, ah)
        channel = self.channels.get(key)
        if channel is None:
            channel = Channel(
                cfg.interface, source, multicast=multicast, receiver=lambda *a: None, ah=ah
            )
            self.channels[key] = channel
            channel.receiver = self._receiver(channel)
        return channel

    def _receiver(
        self, channel: Channel
    ) -> Callable[[bytes, IPAddress, IPAddress, int | None], None]:
        expect = self.channel_expect.setdefault(channel, {})
        runners = self.channel_runners.setdefault(channel, {})
        drops = self.channel_drops.setdefault(channel, {})

        def receive(data: bytes, src: IPAddress, dst: IPAddress, hop_limit: int | None) -> None:
            try:
                if hop_limit is None:
                    got = check_ipv4(data, expect)
                else:
                    got = check_ipv6(data, src, dst, hop_limit, expect)
            except Refused as refused:
                runner = runners.get(refused.vrid) if refused.vrid is not None else None
                if runner is not None:
                    runner.dropped(refused.reason)
                else:
                    key = f"drop_{refused.reason.value}"
                    drops[key] = drops.get(key, 0) + 1
                log.debug("%s: dropped advert from %s: %s", channel.ifname, src, refused)
                return
            runners[got.advert.vrid].received(got)

        return receive

    # ------------------------------------------------------------ tracking

    async def _watch_links(self) -> None:
        names = {name for t in self.tracking.values() for name in t.interfaces}
        ipr = AsyncIPRoute()
        self._ipr = ipr
        await ipr.bind(groups=RTMGRP_LINK)
        state: dict[str, bool] = {}
        async for link in await ipr.link("dump"):
            name = link.get("ifname")
            if name in names:
                state[name] = _link_up(link)
        for name in names - state.keys():
            log.warning("tracked interface %s does not exist: counted as down", name)
            state[name] = False
        for tracking in self.tracking.values():
            tracking.link_up.update({n: state[n] for n in tracking.interfaces})
        self._tasks.append(asyncio.get_running_loop().create_task(self._link_events(ipr, names)))

    async def _link_events(self, ipr: AsyncIPRoute, names: set[str]) -> None:
        while True:
            async for msg in ipr.get():
                name = msg.get("ifname")
                if name not in names or msg.get("event") not in ("RTM_NEWLINK", "RTM_DELLINK"):
                    continue
                up = msg.get("event") == "RTM_NEWLINK" and _link_up(msg)
                for tracking in self.tracking.values():
                    if name in tracking.interfaces and tracking.link_up.get(name) != up:
                        tracking.link_up[name] = up
                        log.info("%s: link %s", name, "up" if up else "down")
                        tracking.apply()

    async def _run_script(self, tracking: InstanceTracking, script: TrackScript) -> None:
        loop = asyncio.get_running_loop()
        state = tracking.scripts[script.name]
        timeout = script.timeout if script.timeout is not None else script.interval
        next_at = loop.time()
        while True:
            outcome = await proc.run(script.command, timeout)
            if state.record(outcome.returncode == 0):
                log.info(
                    "%s: track script %s now %s (%s)",
                    tracking.runner.name,
                    script.name,
                    "healthy" if state.healthy else "failing",
                    outcome.reason,
                )
                tracking.apply()
            next_at = max(next_at + script.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _watch_file(self, tracking: InstanceTracking, path: str) -> None:
        # Read once a second: a track file is an operator's switch, not a fast signal.
        while True:
            try:
                text = await asyncio.to_thread(Path(path).read_text)
                value = int(text.strip() or "0")
            except (OSError, ValueError):
                value = 0
            if tracking.files.get(path) != value:
                tracking.files[path] = value
                tracking.apply()
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------ transitions

    def _transitioned(self, runner: InstanceRunner, change: Transition) -> None:
        self._notify(runner.cfg.notify, "INSTANCE", runner.name, change.new, runner)
        for listener in self.listeners:
            listener(runner.name, change.new.value)
        group = self.group_of.get(runner.name)
        if group is None:
            return
        peers = [self.runners[m] for m in group.instances if m != runner.name]
        faulty = any(self.runners[m].router.state is State.FAULT for m in group.instances)
        for peer in peers:
            peer.router.hold_backup = faulty and peer.router.state is not State.FAULT
        reason = f"sync group {group.name}: {runner.name} is {change.new.value}"
        if change.new is State.MASTER:
            for peer in peers:
                peer.force(State.MASTER, reason)
        elif change.old is State.MASTER and change.new in (State.BACKUP, State.FAULT):
            for peer in peers:
                peer.force(State.BACKUP, reason)
        states = {self.runners[m].router.state for m in group.instances}
        if len(states) == 1 and change.new in (State.MASTER, State.BACKUP, State.FAULT):
            self._notify(group.notify, "GROUP", group.name, change.new, runner)

    def _notify(
        self, notify: Notify, kind: str, name: str, state: State, runner: InstanceRunner
    ) -> None:
        specific = {
            State.MASTER: notify.master,
            State.BACKUP: notify.backup,
            State.FAULT: notify.fault,
            State.STOP: notify.stop,
        }.get(state)
        if specific:
            proc.spawn(specific, notify.timeout, f"{name} notify {state.value.lower()}")
        if notify.generic and state in (State.MASTER, State.BACKUP, State.FAULT, State.STOP):
            # keepalived's order: TYPE NAME STATE PRIORITY
            argv = [*notify.generic, kind, name, state.value, str(runner.router.priority)]
            proc.spawn(argv, notify.timeout, f"{name} notify")

    # ------------------------------------------------------------ stop and status

    async def stop(self) -> None:
        """Graceful: masters hand off (make before break), then everything is released."""
        for runner in self.runners.values():
            runner.stop()
        if self.runners:
            await asyncio.gather(*(r.stopped() for r in self.runners.values()))
        # The last removals must reach the kernel before the process ends.
        for runner in self.runners.values():
            await runner.vips.aclose()
        self.close()

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        for channel in self.channels.values():
            channel.close()
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None

    def status(self) -> dict[str, Any]:
        return {
            "instances": [r.status() for r in self.runners.values()],
            "sync_groups": [
                {
                    "name": g.name,
                    "instances": list(g.instances),
                    "states": [self.runners[m].router.state.value for m in g.instances],
                }
                for g in self.config.sync_groups
            ],
            "unmatched_drops": {
                f"{c.ifname}/{c.source}": dict(d) for c, d in self.channel_drops.items() if d
            },
        }


def _link_up(msg: Any) -> bool:
    flags = int(msg["flags"])
    return bool(flags & IFF_UP and flags & IFF_LOWER_UP)
