"""UDP echo probes for failover measurements: who answers a VIP, and when.

Three parts:

- `serve()`: an asyncio echo responder bound to 0.0.0.0:PORT (and [::]:PORT) in a node's
  namespace. It answers each probe from the address the probe was sent to (IP_PKTINFO), so a
  reply to a VIP comes from the VIP, and appends its own name, so every reply says which node
  answered.
- `run_prober()`: a sequence-numbered probe every `interval` seconds to one address, recording
  send time, reply time and responder of every probe; bounded by a count and a duration, and
  stoppable early (SIGTERM/SIGINT in the CLI).
- `analyse()`, `vrrp_timeline()`: the pure part. Blackout = from an instant (an externally
  given cut, or the last reply from the old responder) to the first reply from the new one;
  probes lost; replies per responder; the largest gap between replies. With `--watch-vrrp`
  the prober also records the VRRP adverts its node hears, which splits a blackout into
  failure detection (last advert of the old master -> first advert of the new one) and
  announcement (-> first reply).

Times are CLOCK_MONOTONIC seconds (`time.monotonic()`). Network namespaces do not change clocks,
so an orchestrator's cut instant compares directly with the prober's timestamps. Replies and
adverts carry the kernel's receive time (SO_TIMESTAMPNS, moved onto the monotonic clock), not the
moment the prober got round to reading them.

Wire format: a probe is MAGIC + sequence number (8 bytes, big endian); a reply is the probe's 12
bytes followed by the responder's name in UTF-8.

Command line (run each in a node's namespace, e.g. through `Lab.popen`):

    python -m lab.probe respond --name dir1 --port 9999        # prints "ready ..." once bound
    python -m lab.probe probe --to 192.0.2.100:9999 --interval 0.002 --duration 8 --json OUT \
        [--watch-vrrp eth0]

The prober prints `started T` when its first probe leaves and `first-reply NAME T` the first
time each responder answers (T in monotonic seconds), then writes its record as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import select
import signal
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"DPRB"
HEADER = struct.Struct("!4sQ")  # magic, sequence number
DEFAULT_PORT = 9999
MAX_NAME = 64
RECV_BUFFER = 2048
# Linux values; Python's socket module lacks IP_PKTINFO.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
# Kernel receive timestamps (CLOCK_REALTIME, struct timespec): Linux SO_TIMESTAMPNS(_OLD).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("=qq")
STAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
ANCILLARY = socket.CMSG_SPACE(max(IN_PKTINFO.size, IN6_PKTINFO.size))
# Bounds on what a prober may be asked to do (the CLI refuses more).
MAX_PROBES = 1_000_000
MAX_DURATION = 3600.0
MIN_INTERVAL = 0.0005


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe: when it left, and when and from whom its first reply came (None: lost)."""

    seq: int
    sent: float
    received: float | None = None
    responder: str | None = None


@dataclass(frozen=True, slots=True)
class AdvertSeen:
    """A VRRP advertisement the prober's node received (with `vrrp_ifname`)."""

    at: float
    src: str
    vrid: int
    priority: int
    version: int


@dataclass(frozen=True)
class ProbeRecord:
    """What a prober saw. `probes` is in sequence order; times are monotonic seconds."""

    target: str
    interval: float
    started: float
    ended: float
    probes: tuple[Probe, ...]
    duplicates: int = 0
    send_errors: int = 0
    stray: int = 0  # datagrams that were not a reply to one of our probes
    adverts: tuple[AdvertSeen, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "clock": "CLOCK_MONOTONIC",
            "target": self.target,
            "interval": self.interval,
            "started": self.started,
            "ended": self.ended,
            "duplicates": self.duplicates,
            "send_errors": self.send_errors,
            "stray": self.stray,
            # Compact rows: [seq, sent, received or null, responder or null].
            "probes": [[p.seq, p.sent, p.received, p.responder] for p in self.probes],
            "adverts": [[a.at, a.src, a.vrid, a.priority, a.version] for a in self.adverts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeRecord:
        probes = tuple(
            Probe(
                int(seq),
                float(sent),
                None if received is None else float(received),
                None if responder is None else str(responder),
            )
            for seq, sent, received, responder in data["probes"]
        )
        return cls(
            target=str(data["target"]),
            interval=float(data["interval"]),
            started=float(data["started"]),
            ended=float(data["ended"]),
            probes=probes,
            duplicates=int(data.get("duplicates", 0)),
            send_errors=int(data.get("send_errors", 0)),
            stray=int(data.get("stray", 0)),
            adverts=tuple(
                AdvertSeen(float(at), str(src), int(vrid), int(prio), int(version))
                for at, src, vrid, prio, version in data.get("adverts", [])
            ),
        )

    @classmethod
    def load(cls, path: Path) -> ProbeRecord:
        data: dict[str, Any] = json.loads(path.read_text())
        return cls.from_json(data)


# ---------------------------------------------------------------- analysis (pure)


@dataclass(frozen=True)
class Analysis:
    """A switch-over from responder `old` to responder `new`, as the client saw it.

    `start` is the cut instant when one was given, else the last reply from `old` before the
    first reply from `new` (`start_kind` says which). `blackout` = `first_new` - `start`.
    """

    new: str
    old: str | None
    start: float | None
    start_kind: str  # "cut" or "last-old-reply" (or "none" when neither is known)
    first_new: float | None
    last_old: float | None
    blackout: float | None
    sent: int
    answered: int
    lost: int
    lost_after_start: int  # probes sent at or after `start` that got no reply
    per_responder: dict[str, int] = field(default_factory=dict)
    max_gap: float | None = None  # largest interval between consecutive replies
    max_gap_at: float | None = None  # receive time of the reply that ended it

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def replies_in_order(probes: Iterable[Probe]) -> list[Probe]:
    """The answered probes, in the order their replies arrived."""
    return sorted(
        (p for p in probes if p.received is not None),
        key=lambda p: (p.received, p.seq),
    )


def max_reply_gap(
    probes: Iterable[Probe], *, since: float | None = None, until: float | None = None
) -> tuple[float | None, float | None]:
    """The largest interval between consecutive replies arriving in [since, until], and the
    receive time of the reply that closed it; (None, None) with fewer than two replies."""
    times = [
        p.received
        for p in replies_in_order(probes)
        if p.received is not None
        and (since is None or p.received >= since)
        and (until is None or p.received <= until)
    ]
    best: tuple[float | None, float | None] = (None, None)
    for before, after in itertools.pairwise(times):
        gap = after - before
        if best[0] is None or gap > best[0]:
            best = (gap, after)
    return best


def analyse(
    probes: Sequence[Probe],
    *,
    new: str,
    old: str | None = None,
    cut: float | None = None,
) -> Analysis:
    """Blackout and losses of a switch-over to `new`.

    With `cut`: blackout = first reply from `new` received at or after `cut`, minus `cut`.
    Without: the first reply from `new` that follows a reply from `old` (from any other
    responder when `old` is None), minus the last such reply before it.
    """
    ordered = replies_in_order(probes)
    timed = [(p.received, p) for p in ordered if p.received is not None]

    def is_old(p: Probe) -> bool:
        return p.responder != new if old is None else p.responder == old

    first_new: float | None = None
    if cut is not None:
        first_new = next((t for t, p in timed if p.responder == new and t >= cut), None)
    else:
        heard_old = False
        for t, p in timed:
            if p.responder == new and heard_old:
                first_new = t
                break
            heard_old = heard_old or is_old(p)
    last_old = max(
        (t for t, p in timed if is_old(p) and (first_new is None or t < first_new)),
        default=None,
    )
    start: float | None
    if cut is not None:
        start, kind = cut, "cut"
    elif first_new is not None and last_old is not None:
        start, kind = last_old, "last-old-reply"
    else:
        start, kind = None, "none"
    per: dict[str, int] = {}
    for p in ordered:
        name = p.responder if p.responder is not None else "?"
        per[name] = per.get(name, 0) + 1
    lost = [p for p in probes if p.received is None]
    lost_after = [p for p in lost if start is not None and p.sent >= start]
    gap, gap_at = max_reply_gap(probes)
    return Analysis(
        new=new,
        old=old,
        start=start,
        start_kind=kind,
        first_new=first_new,
        last_old=last_old,
        blackout=None if first_new is None or start is None else first_new - start,
        sent=len(probes),
        answered=len(ordered),
        lost=len(lost),
        lost_after_start=len(lost_after),
        per_responder=dict(sorted(per.items())),
        max_gap=gap,
        max_gap_at=gap_at,
    )


@dataclass(frozen=True)
class VrrpTimeline:
    """The adverts around an instant `at` (a cut or a stop), for one VRID.

    - `first_new`: the new master's first advert after `at` (it took over on the wire);
    - `last_old`: the old master's last advert before `first_new` (or at or before `at` when
      the new master never spoke). Not "before `at`": a cut takes effect a little after the
      instant taken just before it, and an advert can still pass in between; the backup's
      timer runs from the last advert it heard;
    - `old_zero`: the old master's first priority-0 advert after `at` (a planned stop).
    """

    last_old: float | None
    old_zero: float | None
    first_new: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def vrrp_timeline(
    adverts: Iterable[AdvertSeen], *, vrid: int, old_src: str, new_src: str, at: float
) -> VrrpTimeline:
    mine = sorted((a for a in adverts if a.vrid == vrid), key=lambda a: a.at)
    first_new = next(
        (a.at for a in mine if a.src == new_src and a.at > at and a.priority > 0), None
    )
    until = at if first_new is None else first_new
    last_old = max(
        (a.at for a in mine if a.src == old_src and a.priority > 0 and a.at <= until),
        default=None,
    )
    old_zero = next(
        (a.at for a in mine if a.src == old_src and a.priority == 0 and a.at > at), None
    )
    return VrrpTimeline(last_old, old_zero, first_new)


def summary(values: Sequence[float]) -> dict[str, float] | None:
    """median, min, max of a sample (None when empty)."""
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


# ---------------------------------------------------------------- responder (asyncio)


def _reply_source(family: int, ancdata: list[tuple[int, int, bytes]]) -> tuple[bytes, int] | None:
    """The local destination address of a received datagram (and its ifindex), from PKTINFO."""
    for level, kind, data in ancdata:
        if family == socket.AF_INET:
            if (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO) and len(data) >= IN_PKTINFO.size:
                ifindex, _spec_dst, addr = IN_PKTINFO.unpack_from(data)
                return addr, ifindex
        elif (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO) and len(data) >= IN6_PKTINFO.size:
            addr, ifindex = IN6_PKTINFO.unpack_from(data)
            return addr, ifindex
    return None


def reply_for(payload: bytes, name: bytes) -> bytes | None:
    """The reply to a probe, or None if `payload` is not one."""
    if len(payload) < HEADER.size or payload[:4] != MAGIC:
        return None
    return payload[: HEADER.size] + name


class Responder:
    """Echo responder sockets on one port, answering on the running event loop."""

    def __init__(self, name: str, port: int, families: Sequence[int] = (4, 6)) -> None:
        encoded = name.encode()
        if not encoded or len(encoded) > MAX_NAME:
            raise ValueError(f"responder name must be 1-{MAX_NAME} bytes")
        self.name = name
        self.port = port
        self.families = tuple(families)
        self.replies = 0
        self.errors = 0
        self._name = encoded
        self._socks: list[tuple[socket.socket, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Bind the sockets (raises OSError); nothing is answered before `attach`."""
        try:
            for family in self.families:
                if family == 4:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    self._socks.append((sock, socket.AF_INET))
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                    sock.bind(("0.0.0.0", self.port))
                elif family == 6:
                    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                    self._socks.append((sock, socket.AF_INET6))
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                    sock.bind(("::", self.port))
                else:
                    raise ValueError(f"family must be 4 or 6, got {family}")
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for sock, family in self._socks:
            loop.add_reader(sock.fileno(), self._readable, sock, family)

    def close(self) -> None:
        for sock, _ in self._socks:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()

    def _readable(self, sock: socket.socket, family: int) -> None:
        for _ in range(64):  # drain, bounded so one socket cannot starve the loop
            try:
                data, ancdata, _flags, addr = sock.recvmsg(RECV_BUFFER, ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                return
            reply = reply_for(data, self._name)
            if reply is None:
                continue
            local = _reply_source(family, ancdata)
            cmsg: list[tuple[int, int, bytes]] = []
            if local is not None and not ipaddress.ip_address(local[0]).is_multicast:
                # Answer from the address that was asked (a VIP), not the primary address.
                if family == socket.AF_INET:
                    cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, local[0], bytes(4)))]
                else:
                    cmsg = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(*local))]
            try:
                sock.sendmsg([reply], cmsg, 0, addr)
            except OSError:
                self.errors += 1
            else:
                self.replies += 1


async def serve(
    name: str,
    port: int,
    *,
    families: Sequence[int] = (4, 6),
    max_seconds: float = MAX_DURATION,
    on_ready: Callable[[Responder], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Responder:
    """Answer probes until `stop` is set or `max_seconds` pass; returns the responder (counts)."""
    responder = Responder(name, port, families)
    responder.open()
    try:
        responder.attach(asyncio.get_running_loop())
        if on_ready is not None:
            on_ready(responder)
        stop = stop if stop is not None else asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    finally:
        responder.close()
    return responder


# ---------------------------------------------------------------- prober (blocking, one thread)


def parse_target(text: str) -> tuple[str, int]:
    """`192.0.2.100:9999` or `[2001:db8::100]:9999`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected ADDRESS:PORT, got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    ipaddress.ip_address(host)
    value = int(port)
    if not 0 < value < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, value


def run_prober(
    host: str,
    port: int,
    *,
    interval: float = 0.002,
    duration: float = 10.0,
    count: int | None = None,
    linger: float = 0.2,
    should_stop: Callable[[], bool] | None = None,
    on_event: Callable[[str], None] | None = None,
    vrrp_ifname: str | None = None,
) -> ProbeRecord:
    """Probe `host:port` every `interval` s for at most `duration` s and `count` probes.

    After the last probe (or once `should_stop()` is true) it waits `linger` s for late
    replies. Sends are paced on an absolute schedule; after a stall one probe goes at once and
    the schedule restarts from then (no catch-up burst). `on_event` gets "started T" and
    "first-reply NAME T" lines. With `vrrp_ifname`, the IPv4 VRRP adverts arriving on that
    interface are recorded too (receive time, source, VRID, priority): needs CAP_NET_RAW.
    """
    if interval < MIN_INTERVAL or not 0 < duration <= MAX_DURATION:
        raise ValueError("interval or duration out of bounds")
    limit = MAX_PROBES if count is None else min(count, MAX_PROBES)
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sent: list[float] = []
    received: dict[int, tuple[float, str]] = {}
    seen: set[str] = set()
    duplicates = send_errors = stray = 0
    adverts: list[AdvertSeen] = []
    vrrp: socket.socket | None = None
    try:
        vrrp = open_vrrp_watch(vrrp_ifname) if vrrp_ifname is not None else None
        watched = [sock] if vrrp is None else [sock, vrrp]
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.connect((host, port))
        sock.setblocking(False)
        started = time.monotonic()
        send_until = started + duration
        next_send = started
        sending = True
        stop_at: float | None = None  # when sending ended: lingering until stop_at + linger
        while True:  # bounded: sending ends by `duration` (<= MAX_DURATION), then `linger`
            now = time.monotonic()
            if sending and (
                len(sent) >= limit or now >= send_until or (should_stop and should_stop())
            ):
                sending = False
                stop_at = now
            if not sending and stop_at is not None and now >= stop_at + linger:
                break
            if sending and now >= next_send:
                seq = len(sent)
                sent.append(now)
                try:
                    sock.send(HEADER.pack(MAGIC, seq))
                except OSError:
                    send_errors += 1  # ECONNREFUSED from an earlier ICMP, ENETUNREACH...
                if seq == 0 and on_event is not None:
                    on_event(f"started {now:.6f}")
                next_send += interval
                if next_send < now:
                    next_send = now + interval
            wake = next_send if sending else (stop_at or now) + linger
            timeout = max(0.0, min(wake - time.monotonic(), interval))
            readable, _, _ = select.select(watched, [], [], timeout)
            if vrrp is not None and vrrp in readable:
                read_adverts(vrrp, adverts)
            if sock not in readable:
                continue
            for _ in range(256):  # drain what is queued, bounded
                try:
                    data, at = recv_stamped(sock)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # ICMP error reported on the connected socket
                if len(data) < HEADER.size or data[:4] != MAGIC:
                    stray += 1
                    continue
                seq = HEADER.unpack_from(data)[1]
                if seq >= len(sent):
                    stray += 1
                    continue
                if seq in received:
                    duplicates += 1
                    continue
                name = data[HEADER.size :].decode(errors="replace")
                received[seq] = (at, name)
                if name not in seen:
                    seen.add(name)
                    if on_event is not None:
                        on_event(f"first-reply {name} {at:.6f}")
        ended = time.monotonic()
    finally:
        sock.close()
        if vrrp is not None:
            vrrp.close()
    probes = tuple(
        Probe(seq, t, *received[seq]) if seq in received else Probe(seq, t)
        for seq, t in enumerate(sent)
    )
    return ProbeRecord(
        target=f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}",
        interval=interval,
        started=started,
        ended=ended,
        probes=probes,
        duplicates=duplicates,
        send_errors=send_errors,
        stray=stray,
        adverts=tuple(adverts),
    )


VRRP_PROTO = 112
VRRP_GROUP4 = socket.inet_aton("224.0.0.18")
MAX_ADVERTS = 200_000


def open_vrrp_watch(ifname: str) -> socket.socket:
    """A raw socket receiving the IPv4 VRRP adverts on `ifname` (joins 224.0.0.18 there)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        mreqn = struct.pack("=4s4si", VRRP_GROUP4, bytes(4), socket.if_nametoindex(ifname))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def parse_advert(packet: bytes, at: float) -> AdvertSeen | None:
    """An IPv4 packet carrying VRRP (header included, as raw sockets deliver it)."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    src = socket.inet_ntoa(packet[12:16])
    head = packet[ihl:]
    return AdvertSeen(at, src, head[1], head[2], head[0] >> 4)


def recv_stamped(sock: socket.socket) -> tuple[bytes, float]:
    """One datagram and when the kernel received it, in monotonic seconds.

    The kernel stamps it in CLOCK_REALTIME (SO_TIMESTAMPNS); how long ago that was is taken off
    the monotonic clock now. So a prober that wakes late (a busy 2-core machine) still records
    when the packet arrived, and two packets read in one go keep their own times. (The kernel
    turns stamping on lazily: the first datagrams after a socket asks for it may carry the read
    time; the benchmark's probes start well before the instants it measures.)
    """
    data, ancdata, _flags, _addr = sock.recvmsg(RECV_BUFFER, STAMP_SPACE)
    mono = time.monotonic()
    real_ns = time.time_ns()
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(value)
            age = (real_ns - (sec * 1_000_000_000 + nsec)) / 1e9
            if 0 <= age < 10:  # otherwise the wall clock moved: keep the read time
                return data, mono - age
    return data, mono


def read_adverts(sock: socket.socket, into: list[AdvertSeen]) -> None:
    for _ in range(256):  # drain, bounded
        try:
            packet, at = recv_stamped(sock)
        except (BlockingIOError, InterruptedError):
            return
        advert = parse_advert(packet, at)
        if advert is not None and len(into) < MAX_ADVERTS:
            into.append(advert)


# ---------------------------------------------------------------- command line


def _print(line: str) -> None:
    print(line, flush=True)


def _respond(args: argparse.Namespace) -> int:
    families = (4, 6) if args.family == "both" else (int(args.family),)

    async def main() -> Responder:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(
            args.name,
            args.port,
            families=families,
            max_seconds=args.max_seconds,
            on_ready=lambda r: _print(f"ready {r.name} {r.port}"),
            stop=stop,
        )

    try:
        responder = asyncio.run(main())
    except OSError as e:
        print(f"cannot bind port {args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    _print(f"stopped {responder.name} replies={responder.replies} errors={responder.errors}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    host, port = parse_target(args.to)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    record = run_prober(
        host,
        port,
        interval=args.interval,
        duration=args.duration,
        count=args.count,
        linger=args.linger,
        should_stop=lambda: stopping,
        on_event=_print,
        vrrp_ifname=args.watch_vrrp,
    )
    text = json.dumps(record.to_json())
    if args.json == "-":
        _print(text)
    else:
        tmp = Path(args.json + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.json)  # the file appears whole or not at all
    if not args.quiet:
        a = analyse(record.probes, new="")
        print(
            f"done sent={a.sent} answered={a.answered} lost={a.lost} "
            f"per_responder={json.dumps(a.per_responder)}",
            file=sys.stderr,
            flush=True,
        )
    return 0


def _positive(kind: type[int] | type[float], bound: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not 0 < value <= bound or (isinstance(value, float) and math.isnan(value)):
            raise argparse.ArgumentTypeError(f"must be in (0, {bound:g}]")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.probe", description="UDP echo probes for failover measurements"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("respond", help="answer probes, naming this node in every reply")
    r.add_argument("--name", required=True)
    r.add_argument("--port", type=int, default=DEFAULT_PORT)
    r.add_argument("--family", choices=["4", "6", "both"], default="both")
    r.add_argument(
        "--max-seconds", type=_positive(float, 7 * 86400), default=MAX_DURATION, help="bound"
    )
    p = sub.add_parser("probe", help="probe ADDRESS:PORT, write the record as JSON")
    p.add_argument("--to", required=True, metavar="ADDRESS:PORT")
    p.add_argument("--interval", type=float, default=0.002)
    p.add_argument("--duration", type=_positive(float, MAX_DURATION), default=10.0)
    p.add_argument("--count", type=_positive(int, MAX_PROBES), default=None)
    p.add_argument("--linger", type=float, default=0.2, help="wait for late replies (s)")
    p.add_argument("--json", default="-", help="output file ('-': stdout)")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.add_argument(
        "--watch-vrrp", metavar="IFNAME", default=None, help="also record VRRP adverts on IFNAME"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "respond":
        return _respond(args)
    if args.interval < MIN_INTERVAL:
        parser.error(f"--interval must be at least {MIN_INTERVAL}")
    if not 0 <= args.linger <= 10:
        parser.error("--linger must be in [0, 10]")
    try:
        parse_target(args.to)
    except ValueError as e:
        parser.error(str(e))
    return _probe(args)


if __name__ == "__main__":
    sys.exit(main())
