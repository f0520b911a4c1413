"""GARP/NA frames (checked by parsing them with scapy) and the announce timing with a fake clock."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from director.config.models import Garp, Instance
from director.net.addresses import AddressError, InstanceVips, LinkInfo, Vip
from director.vrrp.announce import (
    ETH_P_ARP,
    ETH_P_IPV6,
    Announcer,
    AnnounceSchedule,
    Frame,
    InstanceAnnouncer,
    build_frame,
    build_frames,
    gratuitous_arp,
    unsolicited_na,
)

MAC = "02:00:5e:00:01:33"
VIP4 = ipaddress.IPv4Address("192.0.2.100")
VIP6 = ipaddress.IPv6Address("2001:db8:0:1::100")
LL = ipaddress.IPv6Address("fe80::5eff:fe00:133")
LINK = LinkInfo("eth0", 2, MAC, LL)


# ---------------------------------------------------------------- frames


def test_gratuitous_arp_is_keepalived_style_broadcast_request() -> None:
    data = gratuitous_arp(MAC, VIP4)
    assert len(data) == 42  # 14 Ethernet + 28 ARP, unpadded like keepalived's
    eth = Ether(data)
    assert eth.dst == "ff:ff:ff:ff:ff:ff"
    assert eth.src == MAC
    assert eth.type == ETH_P_ARP
    arp = eth[ARP]
    assert arp.op == 1  # request
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen) == (1, 0x0800, 6, 4)
    assert arp.hwsrc == MAC
    assert arp.psrc == arp.pdst == str(VIP4)
    assert arp.hwdst == "ff:ff:ff:ff:ff:ff"


def _icmpv6_checksum(src: str, dst: str, icmp: bytes) -> int:
    """RFC 4443 2.3 over the RFC 8200 8.1 pseudo-header, independent of scapy."""
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!I3xB", len(icmp), 58)
    )
    data = pseudo + icmp
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_unsolicited_na_fields() -> None:
    data = unsolicited_na(MAC, LL, VIP6)
    eth = Ether(data)
    assert eth.dst == "33:33:00:00:00:01"  # ff02::1 mapped to Ethernet multicast
    assert eth.src == MAC
    assert eth.type == ETH_P_IPV6
    ip6 = eth[IPv6]
    assert ip6.src == str(LL)
    assert ip6.dst == "ff02::1"
    assert ip6.hlim == 255
    assert ip6.nh == 58
    na = eth[ICMPv6ND_NA]
    assert na.type == 136
    assert na.code == 0
    assert na.O == 1
    assert na.S == 0
    assert na.R == 0
    assert na.tgt == str(VIP6)
    opt = eth[ICMPv6NDOptDstLLAddr]
    assert opt.type == 2  # target link-layer address
    assert opt.len == 1
    assert opt.lladdr == MAC


def test_unsolicited_na_checksum_is_valid() -> None:
    data = unsolicited_na(MAC, LL, VIP6)
    icmp = data[14 + 40 :]
    assert len(icmp) == 32  # 24 NA + 8 option
    # A valid checksum makes the sum over the whole message zero.
    assert _icmpv6_checksum(str(LL), "ff02::1", icmp) == 0
    zeroed = icmp[:2] + b"\0\0" + icmp[4:]
    assert struct.unpack("!H", icmp[2:4])[0] == _icmpv6_checksum(str(LL), "ff02::1", zeroed)
    # And scapy, recomputing from scratch, agrees.
    eth = Ether(data)
    cksum = eth[ICMPv6ND_NA].cksum
    del eth[ICMPv6ND_NA].cksum
    assert Ether(bytes(eth))[ICMPv6ND_NA].cksum == cksum


def test_unsolicited_na_router_flag_follows_forwarding() -> None:
    assert Ether(unsolicited_na(MAC, LL, VIP6, router=True))[ICMPv6ND_NA].R == 1


def test_build_frame_per_family() -> None:
    f4 = build_frame(VIP4, LINK)
    assert (f4.ifname, f4.address, f4.ethertype) == ("eth0", VIP4, ETH_P_ARP)
    f6 = build_frame(VIP6, LINK)
    assert (f6.ifname, f6.address, f6.ethertype) == ("eth0", VIP6, ETH_P_IPV6)
    assert Ether(f6.data)[IPv6].src == str(LL)


def test_na_without_link_local_comes_from_the_vip() -> None:
    frame = build_frame(VIP6, LinkInfo("eth0", 2, MAC, None))
    assert Ether(frame.data)[IPv6].src == str(VIP6)


class FakeManager:
    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def link_info(self, dev: str) -> LinkInfo:
        self.lookups.append(dev)
        return LinkInfo(
            dev, 2 if dev == "eth0" else 3, MAC if dev == "eth0" else "02:00:00:00:00:02"
        )


def test_build_frames_one_per_vip_one_lookup_per_interface() -> None:
    vips = [
        Vip(ipaddress.ip_interface("192.0.2.100/24"), "eth0", "eth0:vip"),
        Vip(ipaddress.ip_interface("192.0.2.101/24"), "eth0"),
        Vip(ipaddress.ip_interface("198.51.100.1/24"), "eth1"),
    ]
    manager = FakeManager()
    frames = asyncio.run(build_frames(vips, manager))  # type: ignore[arg-type]
    assert manager.lookups == ["eth0", "eth1"]
    assert [(f.ifname, str(f.address)) for f in frames] == [
        ("eth0", "192.0.2.100"),
        ("eth0", "192.0.2.101"),
        ("eth1", "198.51.100.1"),
    ]
    assert Ether(frames[2].data).src == "02:00:00:00:00:02"


# ---------------------------------------------------------------- schedule


def timeline(garp: Garp, until: float, start: float = 0.0) -> list[tuple[float, str, int]]:
    """Drive the schedule as the shell does: wake at each deadline, collect the rounds."""
    s = AnnounceSchedule(garp)
    s.start(start)
    out: list[tuple[float, str, int]] = []
    while s.deadline is not None and s.deadline <= until:
        now = s.deadline
        rounds = s.due(now)
        assert rounds, "a deadline with nothing due would spin the loop"
        out += [(round(now - start, 9), r.kind, r.number) for r in rounds]
    return out


def test_defaults_are_keepalived_five_now_and_five_after_five_seconds() -> None:
    assert timeline(Garp(), until=100) == [(0, "master", n) for n in range(1, 6)] + [
        (5, "delayed", n) for n in range(1, 6)
    ]


def test_repeat_spaced_by_interval() -> None:
    g = Garp(repeat=3, interval=0.1, delay=0)
    assert timeline(g, until=100) == [(0, "master", 1), (0.1, "master", 2), (0.2, "master", 3)]


def test_delay_zero_means_no_second_burst() -> None:
    s = AnnounceSchedule(Garp(repeat=2, delay=0))
    s.start(10.0)
    assert [r.kind for r in s.due(10.0)] == ["master", "master"]
    assert s.deadline is None
    assert not s.active


def test_nothing_before_its_time() -> None:
    s = AnnounceSchedule(Garp(repeat=2, interval=0.5, delay=3))
    s.start(100.0)
    assert len(s.due(100.0)) == 1
    assert s.deadline == 100.5
    assert s.due(100.49) == []
    assert [r.number for r in s.due(100.5)] == [2]
    assert s.deadline == 103.0
    assert s.due(102.9) == []
    assert [(r.kind, r.number) for r in s.due(103.6)] == [("delayed", 1), ("delayed", 2)]


def test_refresh_every_period_while_master_one_round_each() -> None:
    g = Garp(repeat=2, interval=0.25, delay=1, refresh=3)
    assert timeline(g, until=9.5) == [
        (0, "master", 1),
        (0.25, "master", 2),
        (1, "delayed", 1),
        (1.25, "delayed", 2),
        (3, "refresh", 1),
        (6, "refresh", 1),
        (9, "refresh", 1),
    ]


def test_refresh_after_a_stall_sends_one_round_and_restarts_the_period() -> None:
    s = AnnounceSchedule(Garp(repeat=1, delay=0, refresh=2))
    s.start(0.0)
    s.due(0.0)
    assert s.deadline == 2.0
    rounds = s.due(11.0)  # the loop was stuck for five periods
    assert [(r.kind, r.at) for r in rounds] == [("refresh", 2.0)]
    assert s.deadline == 13.0


def test_overlapping_bursts_come_out_in_time_order() -> None:
    g = Garp(repeat=3, interval=1, delay=0.5)
    times = [t for t, _, _ in timeline(g, until=10)]
    assert times == sorted(times) == [0, 0.5, 1, 1.5, 2, 2.5]


def test_cancel_stops_everything_and_start_restarts() -> None:
    s = AnnounceSchedule(Garp(repeat=2, interval=1, delay=5, refresh=10))
    s.start(0.0)
    s.due(0.0)
    s.cancel()
    assert s.deadline is None
    assert not s.active
    assert s.due(1000.0) == []
    s.start(50.0)
    assert s.deadline == 50.0
    assert len(s.due(50.0)) == 1


# ---------------------------------------------------------------- the asyncio shell


@dataclass
class FakeTimer:
    when: float
    callback: Callable[[], None]
    cancelled: bool = False
    fired: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """Just what Announcer uses of an event loop: time() and call_at()."""

    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not (t.cancelled or t.fired)]

    def advance(self, to: float) -> None:
        while True:
            due = sorted((t for t in self.pending() if t.when <= to), key=lambda t: t.when)
            if not due:
                break
            self.now = due[0].when
            due[0].fired = True
            due[0].callback()
        self.now = to


@dataclass
class FakeSockets:
    sent: list[tuple[float, Frame]] = field(default_factory=list)
    loop: FakeLoop | None = None
    fail: OSError | None = None

    def send(self, frame: Frame) -> None:
        if self.fail is not None:
            raise self.fail
        assert self.loop is not None
        self.sent.append((self.loop.now, frame))


def make_announcer(garp: Garp) -> tuple[Announcer, FakeLoop, FakeSockets, list[Frame]]:
    loop = FakeLoop(now=1000.0)
    sockets = FakeSockets(loop=loop)
    frames = [build_frame(VIP4, LINK), build_frame(VIP6, LINK)]
    announcer = Announcer(frames, garp, sockets, name="VI_1", loop=loop)  # type: ignore[arg-type]
    return announcer, loop, sockets, frames


def test_announcer_sends_first_burst_at_once_then_on_its_single_timer() -> None:
    announcer, loop, sockets, frames = make_announcer(Garp(repeat=2, interval=0.5, delay=2))
    announcer.start()
    assert [(t, f.address) for t, f in sockets.sent] == [(1000.0, VIP4), (1000.0, VIP6)]
    assert [t.when for t in loop.pending()] == [1000.5]
    loop.advance(1010.0)
    assert [t for t, _ in sockets.sent] == [1000.0] * 2 + [1000.5] * 2 + [1002.0] * 2 + [1002.5] * 2
    assert loop.pending() == []
    assert not announcer.running
    assert (announcer.sent, announcer.rounds, announcer.errors) == (8, 4, 0)
    # Built once, sent as is: the very same bytes objects every time.
    assert all(f.data is frames[i % 2].data for i, (_, f) in enumerate(sockets.sent))
    # At most one timer was ever live at a time.
    assert len(loop.timers) == 3


def test_announcer_stop_cancels_the_timer() -> None:
    announcer, loop, sockets, _ = make_announcer(Garp(repeat=1, delay=5, refresh=1))
    announcer.start()
    assert len(loop.pending()) == 1
    announcer.stop()
    assert loop.pending() == []
    loop.advance(2000.0)
    assert len(sockets.sent) == 2
    assert not announcer.running


def test_announcer_restart_keeps_one_timer() -> None:
    announcer, loop, sockets, _ = make_announcer(Garp(repeat=1, delay=5))
    announcer.start()
    loop.advance(1001.0)
    announcer.start()  # master again (e.g. after a brief backup)
    assert [t.when for t in loop.pending()] == [1006.0]
    loop.advance(1100.0)
    assert [t for t, _ in sockets.sent] == [1000.0] * 2 + [1001.0] * 2 + [1006.0] * 2


def test_announcer_counts_send_errors_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    announcer, loop, sockets, _ = make_announcer(Garp(repeat=1, delay=1))
    sockets.fail = OSError(100, "Network is down")
    announcer.start()
    assert (announcer.sent, announcer.errors) == (0, 2)
    assert "VI_1: announcing failed" in caplog.text
    assert "Network is down" in caplog.text
    sockets.fail = None
    loop.advance(1001.0)
    assert (announcer.sent, announcer.errors) == (2, 2)


# ---------------------------------------------------------------- the runner-facing glue


def instance(**kw: object) -> Instance:
    fields: dict[str, object] = {
        "name": "VI_1",
        "interface": "eth0",
        "vrid": 51,
        "addresses": ["192.0.2.100/24", {"address": "198.51.100.1/24", "dev": "eth1"}],
        "garp": {"repeat": 2, "delay": "10s"},
    }
    fields.update(kw)
    return Instance.model_validate(fields)


class RecordingManager(FakeManager):
    """Stands in for VipManager; every call yields to the loop like a netlink round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fail: str | None = None

    async def _call(self, what: str) -> None:
        await asyncio.sleep(0)
        self.calls.append(what)
        if self.fail == what:
            raise AddressError(f"{what} failed")

    async def add(self, vips: list[Vip]) -> list[Vip]:
        await self._call("add")
        return vips

    async def remove(self, vips: list[Vip]) -> list[Vip]:
        await self._call("remove")
        return vips

    async def remove_leftovers(self, vips: list[Vip]) -> list[object]:
        await self._call("leftovers")
        return []


def test_instance_vips_are_the_configured_ones_on_their_devs() -> None:
    vips = InstanceVips(instance(), RecordingManager())  # type: ignore[arg-type]
    assert [(str(v.address), v.dev) for v in vips.vips] == [
        ("192.0.2.100/24", "eth0"),
        ("198.51.100.1/24", "eth1"),
    ]


def test_add_then_remove_at_once_ends_removed_without_interleaving() -> None:
    manager = RecordingManager()

    async def go() -> None:
        vips = InstanceVips(instance(), manager)  # type: ignore[arg-type]
        vips.add()
        vips.remove()  # before the add reached the kernel: only the last wish is applied
        await vips.settled()
        assert manager.calls == ["remove"]
        assert not vips.held
        vips.add()
        await vips.settled()
        vips.add()  # already held: nothing to do
        await vips.settled()
        assert manager.calls == ["remove", "add"]
        assert vips.held

    asyncio.run(go())


def test_a_failed_add_is_counted_and_retried_by_the_next_add() -> None:
    manager = RecordingManager()

    async def go() -> None:
        vips = InstanceVips(instance(), manager)  # type: ignore[arg-type]
        manager.fail = "add"
        vips.add()
        await vips.settled()
        assert (vips.errors, vips.held, vips.last_error) == (1, False, "add failed")
        manager.fail = None
        vips.add()
        await vips.settled()
        assert manager.calls == ["add", "add"]
        assert vips.held

    asyncio.run(go())


def test_address_owner_vips_are_never_touched() -> None:
    manager = RecordingManager()

    async def go() -> None:
        vips = InstanceVips(instance(address_owner=True, priority=255), manager)  # type: ignore[arg-type]
        vips.add()
        vips.remove()
        await vips.settled()
        assert await vips.remove_leftovers() == []

    asyncio.run(go())
    assert manager.calls == []


@dataclass
class LoopSockets:
    log: list[str]
    sent: list[Frame] = field(default_factory=list)

    def send(self, frame: Frame) -> None:
        self.log.append(f"send {frame.address}")
        self.sent.append(frame)


def test_instance_announcer_waits_for_the_vips_and_builds_frames_once() -> None:
    manager = RecordingManager()
    sockets = LoopSockets(manager.calls)

    async def go() -> None:
        vips = InstanceVips(instance(), manager)  # type: ignore[arg-type]
        ann = InstanceAnnouncer(instance(), vips, sockets)  # type: ignore[arg-type]
        vips.add()
        ann.start()  # the router's AddVips then Announce, in one go
        assert ann.running
        while not sockets.sent:
            await asyncio.sleep(0)
        # The first burst went out at once, after the VIPs were in the kernel.
        assert manager.calls == ["add"] + ["send 192.0.2.100", "send 198.51.100.1"] * 2
        assert ann.running  # the delayed burst is pending
        ann.stop()
        assert not ann.running
        ann.start()
        while len(sockets.sent) < 8:
            await asyncio.sleep(0)
        ann.stop()

    asyncio.run(go())
    assert manager.lookups == ["eth0", "eth1"]  # frames built once, on the first start


def test_instance_announcer_stop_before_it_started_sends_nothing() -> None:
    manager = RecordingManager()
    sockets = LoopSockets(manager.calls)

    async def go() -> None:
        vips = InstanceVips(instance(), manager)  # type: ignore[arg-type]
        ann = InstanceAnnouncer(instance(), vips, sockets)  # type: ignore[arg-type]
        vips.add()
        ann.start()
        ann.stop()  # became backup before the VIPs even settled
        await vips.settled()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not ann.running

    asyncio.run(go())
    assert sockets.sent == []
