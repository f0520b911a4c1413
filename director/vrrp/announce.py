"""Gratuitous ARP (IPv4) and unsolicited Neighbor Advertisements (IPv6) for a new master's VIPs.

Three parts, like the rest of the daemon:

- frames: built once per address with scapy (slow, about 0.3 ms, so never on the send path) and
  kept as bytes; rebuilt only if the interface's MAC or link-local address changes;
- `AnnounceSchedule`: pure timing of the bursts, driven by the caller's clock;
- `Announcer`: the asyncio shell; one timer on the loop's monotonic clock, frames sent on one
  AF_PACKET socket per interface (`PacketSockets`).

Timing mirrors keepalived: on becoming master, `repeat` rounds spaced by `interval`
(garp_master_repeat, garp_interval); the same again `delay` after becoming master
(garp_master_delay, 0 = no second burst); then one round every `refresh` while master
(garp_master_refresh, with keepalived's default garp_master_refresh_repeat of 1). A round sends
one frame per address. Whatever leaves MASTER (backup, fault, stopping) cancels everything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from director.config.models import Garp, Instance
from director.net.addresses import AddressError, InstanceVips, LinkInfo, Vip, VipManager

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = "33:33:00:00:00:01"
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPOP_REQUEST = 1


# ---------------------------------------------------------------- frames


def gratuitous_arp(mac: str, address: ipaddress.IPv4Address) -> bytes:
    """keepalived's gratuitous ARP: a broadcast ARP *request* with sender = target = VIP.

    A request rather than a reply because every stack updates an existing cache entry from a
    broadcast request, and some ignore unsolicited replies. Target MAC is broadcast, as
    keepalived (vrrp_arp.c) sends it.
    """
    from scapy.layers.l2 import ARP, Ether

    ip = str(address)
    frame = Ether(src=mac, dst=BROADCAST) / ARP(
        op=ARPOP_REQUEST, hwsrc=mac, psrc=ip, hwdst=BROADCAST, pdst=ip
    )
    return bytes(frame)


def unsolicited_na(
    mac: str,
    source: ipaddress.IPv6Address,
    target: ipaddress.IPv6Address,
    *,
    router: bool = False,
) -> bytes:
    """Unsolicited Neighbor Advertisement (RFC 4861 7.2.6) to all nodes, Override set.

    Override makes receivers replace the cached MAC of an existing entry; Solicited is clear
    (nobody asked; receivers keep the entry STALE and verify it); Router mirrors the sender's
    forwarding state, as keepalived does, since a clear R flag makes hosts drop us as a router.
    Hop limit 255 or receivers discard it. scapy fills in the ICMPv6 checksum.
    """
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import Ether

    frame = (
        Ether(src=mac, dst=ALL_NODES_MAC)
        / IPv6(src=str(source), dst=str(ALL_NODES), hlim=255)
        # scapy's R defaults to 1: always set every flag explicitly.
        / ICMPv6ND_NA(tgt=str(target), R=int(router), S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=mac)
    )
    return bytes(frame)


@dataclass(frozen=True, slots=True)
class Frame:
    """One address's announcement, ready to send as is."""

    ifname: str
    address: IPAddress
    data: bytes

    @property
    def ethertype(self) -> int:
        return int.from_bytes(self.data[12:14], "big")


def build_frame(address: IPAddress, link: LinkInfo, *, router: bool = False) -> Frame:
    if isinstance(address, ipaddress.IPv4Address):
        return Frame(link.name, address, gratuitous_arp(link.mac, address))
    # The NA's source must be an address of the interface: the link-local one, as keepalived;
    # without one (IPv6 link-local disabled), the VIP itself, which is on the interface too.
    source = link.link_local or address
    return Frame(link.name, address, unsolicited_na(link.mac, source, address, router=router))


def ipv6_forwarding(ifname: str) -> bool:
    """The interface's IPv6 forwarding sysctl (in the current namespace); False if unreadable."""
    try:
        return Path(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding").read_text().strip() != "0"
    except OSError:
        return False


async def build_frames(vips: Sequence[Vip], manager: VipManager) -> list[Frame]:
    """One frame per VIP, on the VIP's own interface; one link lookup per interface."""
    links: dict[str, LinkInfo] = {}
    frames: list[Frame] = []
    for vip in vips:
        if vip.dev not in links:
            links[vip.dev] = await manager.link_info(vip.dev)
        router = vip.address.version == 6 and ipv6_forwarding(vip.dev)
        frames.append(build_frame(vip.ip, links[vip.dev], router=router))
    return frames


# ---------------------------------------------------------------- schedule (pure)

RoundKind = Literal["master", "delayed", "refresh"]


@dataclass(frozen=True, slots=True)
class Round:
    """Send one frame per address now. `number` counts from 1 within its burst."""

    kind: RoundKind
    number: int
    at: float  # when it was due


class AnnounceSchedule:
    """When to send, as deadlines on the caller's clock; no I/O, no clock of its own.

    `start(now)` on becoming master (again: restarts), `due(now)` when `deadline` passes,
    `cancel()` on leaving master.
    """

    def __init__(self, garp: Garp) -> None:
        self.garp = garp
        self._pending: list[Round] = []  # finite bursts, sorted by time
        self._next_refresh: float | None = None

    @property
    def deadline(self) -> float | None:
        times = [r.at for r in self._pending[:1]]
        if self._next_refresh is not None:
            times.append(self._next_refresh)
        return min(times, default=None)

    @property
    def active(self) -> bool:
        return bool(self._pending) or self._next_refresh is not None

    def start(self, now: float) -> None:
        g = self.garp
        rounds = [Round("master", i + 1, now + i * g.interval) for i in range(g.repeat)]
        if g.delay > 0:
            start = now + g.delay
            rounds += [Round("delayed", i + 1, start + i * g.interval) for i in range(g.repeat)]
        # Stable sort: where the bursts overlap, each keeps its order.
        self._pending = sorted(rounds, key=lambda r: r.at)
        self._next_refresh = now + g.refresh if g.refresh > 0 else None

    def due(self, now: float) -> list[Round]:
        """The rounds whose time has come, oldest first; each is returned once."""
        n = 0
        while n < len(self._pending) and self._pending[n].at <= now:
            n += 1
        out, self._pending = self._pending[:n], self._pending[n:]
        if self._next_refresh is not None and self._next_refresh <= now:
            out.append(Round("refresh", 1, self._next_refresh))
            out.sort(key=lambda r: r.at)
            following = self._next_refresh + self.garp.refresh
            # After a stall (suspended host, busy loop), one round covers the missed ones and
            # the period restarts from now instead of firing a catch-up volley.
            self._next_refresh = following if following > now else now + self.garp.refresh
        return out

    def cancel(self) -> None:
        self._pending = []
        self._next_refresh = None


# ---------------------------------------------------------------- asyncio shell


class PacketSockets:
    """One AF_PACKET socket per interface, opened on first use, shared by every announcer.

    Bound with protocol 0, so the kernel delivers nothing to it: it only sends.
    """

    def __init__(self) -> None:
        self._socks: dict[str, socket.socket] = {}

    def send(self, frame: Frame) -> None:
        """Send without blocking; raises OSError (BlockingIOError when the queue is full)."""
        sock = self._socks.get(frame.ifname)
        if sock is None:
            sock = self._open(frame.ifname)
        # The address names the interface and the ethertype (skb->protocol) per frame.
        sock.sendto(frame.data, (frame.ifname, frame.ethertype))

    def _open(self, ifname: str) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.setblocking(False)
            sock.bind((ifname, 0))
        except BaseException:
            sock.close()
            raise
        self._socks[ifname] = sock
        return sock

    def forget(self, ifname: str) -> None:
        """Close an interface's socket (it was removed or recreated); reopened on next use."""
        sock = self._socks.pop(ifname, None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        for name in list(self._socks):
            self.forget(name)


class Announcer:
    """Runs one instance's schedule on the event loop and sends its frames.

    The shell calls `start()` on the router's `Announce` action and `stop()` on any transition
    out of MASTER. Send errors are counted and logged, never raised: a lost GARP is repaired by
    the next round, and VRRP must not stop over it.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        garp: Garp,
        sockets: PacketSockets,
        *,
        name: str = "",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.frames = list(frames)
        self.schedule = AnnounceSchedule(garp)
        self.sockets = sockets
        self.name = name
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()  # set while nothing is scheduled
        self._idle.set()
        self.sent = 0
        self.errors = 0
        self.rounds = 0

    @property
    def running(self) -> bool:
        return self.schedule.active

    def set_frames(self, frames: Sequence[Frame]) -> None:
        """New frames (MAC or link-local changed); a running schedule goes on with them."""
        self.frames = list(frames)

    def start(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self._cancel_timer()  # becoming master again restarts the bursts
        self._idle.clear()
        self.schedule.start(loop.time())
        self._fire()  # the first round is due now: send it in this call

    def stop(self) -> None:
        self.schedule.cancel()
        self._cancel_timer()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until nothing is scheduled: the bursts are over (never, with a refresh) or stopped."""
        await self._idle.wait()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        assert self._loop is not None
        self._timer = None
        for _ in self.schedule.due(self._loop.time()):
            self._send_round()
        deadline = self.schedule.deadline
        if deadline is None:
            self._idle.set()
        else:
            self._timer = self._loop.call_at(deadline, self._fire)

    def _send_round(self) -> None:
        self.rounds += 1
        errors: list[str] = []
        for frame in self.frames:
            try:
                self.sockets.send(frame)
            except OSError as e:
                self.errors += 1
                errors.append(f"{frame.address} on {frame.ifname}: {e.strerror or e}")
            else:
                self.sent += 1
        if errors:
            # One line per round, not per frame: a down link fails every frame of the round.
            log.warning("%s: announcing failed: %s", self.name, "; ".join(errors))


class InstanceAnnouncer:
    """One VRRP instance's announcements behind the plain `start()` / `stop()` its runner calls.

    Frames are built on the first `start()` (they need the interfaces' MAC and link-local
    address, read by netlink) and kept; `relink()` drops them after a link change. Each start
    waits for the instance's VIPs to reach the kernel first, so no GARP precedes its VIP.
    """

    def __init__(self, instance: Instance, vips: InstanceVips, sockets: PacketSockets) -> None:
        self.name = instance.name
        self.vips = vips
        self.announcer = Announcer([], instance.garp, sockets, name=instance.name)
        self._built = False
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return (self._task is not None and not self._task.done()) or self.announcer.running

    def start(self) -> None:
        self.stop()
        self._task = asyncio.get_running_loop().create_task(self._start())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.announcer.stop()

    async def wait_idle(self) -> None:
        """Until the bursts are over (never, with a refresh) or stopped."""
        if self._task is not None:
            # asyncio.wait, unlike await, returns normally when stop() cancelled the task.
            await asyncio.wait([self._task])
        await self.announcer.wait_idle()

    def relink(self) -> None:
        """An interface changed (MAC, link-local, recreated): rebuild frames on next start."""
        self._built = False

    async def prepare(self) -> bool:
        """Build the frames now (at daemon start), so becoming master sends at once: the first
        scapy build costs a hundred milliseconds or more, which must not delay a takeover."""
        if self._built:
            return True
        try:
            frames = await build_frames(self.vips.vips, self.vips.manager)
        except AddressError as e:
            self.announcer.errors += 1
            log.error("%s: cannot build announcements: %s", self.name, e)
            return False
        self.announcer.set_frames(frames)
        self._built = True
        return True

    async def _start(self) -> None:
        await self.vips.settled()
        if await self.prepare():
            self.announcer.start()
