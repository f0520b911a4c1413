"""Raw VRRP sockets on the asyncio loop: one per (interface, family), shared by its instances.

- Bound to the interface (SO_BINDTODEVICE). IPv4 sends on IPPROTO_RAW with our own IP header
  (source, TTL 255, TOS 0xc0), as keepalived does; IPv6 sets the source per packet
  (IPV6_PKTINFO). Multicast loop off; our own packets are also ignored by source.
- Multicast: the group (224.0.0.18 / ff02::12) is joined on that interface only. Unicast: the
  same socket sends to each peer; the receive checks accept only the configured peers.
- IPv4 receive hands over the IP header (TTL, addresses); IPv6 gets hop limit and destination
  from ancillary data. The checksum is ours in both families (no IPV6_CHECKSUM), so a bad one is
  counted instead of silently dropped by the kernel.
- AH (VRRPv2 only) receives protocol 51; its packets are built whole by auth.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable

from director.vrrp.packet import MCAST4, MCAST6, PROTO_VRRP, IPAddress
from director.vrrp.receive import PROTO_AH

log = logging.getLogger("director.vrrp")

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
TOS_NETWORK_CONTROL = 0xC0  # as keepalived: adverts are network control traffic
RECV_BUFFER = 65535
# The kernel queues this much per socket: enough for bursts of 255 instances at 10 ms.
SOCKET_BUFFER = 4 * 1024 * 1024
ANCILLARY = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4)

# (payload or IPv4 packet, source, destination, hop limit or None for IPv4) -> None
Receiver = Callable[[bytes, IPAddress, IPAddress, int | None], None]


class TransportError(Exception):
    pass


def if_index(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise TransportError(f"interface {ifname!r} does not exist") from None


def ipv4_header(src: IPAddress, dst: IPAddress, proto: int, payload_len: int) -> bytes:
    """The IP header of an advert sent on IPPROTO_RAW: TOS network control, TTL 255; the
    kernel fills in the id and the header checksum."""
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        TOS_NETWORK_CONTROL,
        20 + payload_len,
        0,
        0,
        255,
        proto,
        0,
        src.packed,
        dst.packed,
    )


class Channel:
    """VRRP on one interface and address family, for one source address."""

    def __init__(
        self,
        ifname: str,
        source: IPAddress,
        *,
        multicast: bool,
        receiver: Receiver,
        ah: bool = False,
    ) -> None:
        self.ifname = ifname
        self.ifindex = if_index(ifname)
        self.source = source
        self.family = socket.AF_INET if source.version == 4 else socket.AF_INET6
        self.group: IPAddress = MCAST4 if source.version == 4 else MCAST6
        self.multicast = multicast
        self.receiver = receiver
        self.ah = ah
        self._socks: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.send_errors = 0
        try:
            if self.family == socket.AF_INET:
                # Not bound to an address: a bound raw IPv4 socket would miss the multicast.
                self.sock = self._open4(PROTO_AH if ah else PROTO_VRRP)
                self.out = self._open_raw_out()
            else:
                self.sock = self._open6()
                self.out = self.sock
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------ sockets

    def _new(self, family: int, proto: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        self._socks.append(sock)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, self.ifname.encode())
        return sock

    def _open4(self, proto: int) -> socket.socket:
        sock = self._new(socket.AF_INET, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        if self.multicast:
            mreqn = struct.pack("=4s4si", MCAST4.packed, self.source.packed, self.ifindex)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        return sock

    def _open_raw_out(self) -> socket.socket:
        # IPPROTO_RAW: we write the IP header (source, TTL 255, TOS) and never receive here.
        sock = self._new(socket.AF_INET, socket.IPPROTO_RAW)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        mreqn = struct.pack("=4s4si", MCAST4.packed, self.source.packed, self.ifindex)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        return sock

    def _open6(self) -> socket.socket:
        sock = self._new(socket.AF_INET6, PROTO_VRRP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_NETWORK_CONTROL)
        if self.multicast:
            mreq = MCAST6.packed + struct.pack("=I", self.ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        return sock

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self._loop is not None and self._socks:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._socks[0].fileno())
        for sock in self._socks:
            sock.close()
        self._socks.clear()

    # ------------------------------------------------------------ I/O

    def destinations(self, peers: Iterable[IPAddress]) -> list[IPAddress]:
        return [self.group] if self.multicast else list(peers)

    def frame(self, message: bytes, dst: IPAddress) -> bytes:
        """What `send` takes for an encoded VRRP message: IPv4 goes out on IPPROTO_RAW with our
        own header, IPv6 as it is. Callers keep the result; it only depends on `dst`."""
        if self.family == socket.AF_INET:
            return ipv4_header(self.source, dst, PROTO_VRRP, len(message)) + message
        return message

    def send(self, packet: bytes, dst: IPAddress) -> None:
        """Send one framed advert (see `frame`; with AH, a whole IPv4 packet) to `dst`."""
        try:
            if self.family == socket.AF_INET:
                self.out.sendto(packet, (str(dst), 0))
            else:
                info = self.source.packed + struct.pack("=I", self.ifindex)
                scope = self.ifindex if dst.is_link_local or dst.is_multicast else 0
                self.out.sendmsg(
                    [packet],
                    [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)],
                    0,
                    (str(dst), 0, 0, scope),
                )
        except OSError as exc:
            # A cut link (ENETDOWN, ENETUNREACH) must not stop the daemon; it is counted.
            self.send_errors += 1
            if exc.errno not in (errno.ENETDOWN, errno.ENETUNREACH, errno.EAGAIN):
                log.warning("%s: sending to %s failed: %s", self.ifname, dst, exc)

    def _readable(self) -> None:
        # Drain what is queued, bounded so one busy socket cannot starve the loop.
        for _ in range(64):
            try:
                data, ancdata, _, addr = self.sock.recvmsg(RECV_BUFFER, ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: receive failed: %s", self.ifname, exc)
                return
            if self.family == socket.AF_INET:
                if len(data) < 20:
                    continue
                src: IPAddress = ipaddress.IPv4Address(data[12:16])
                if src == self.source:
                    continue  # our own packet
                self.receiver(data, src, ipaddress.IPv4Address(data[16:20]), None)
            else:
                src = ipaddress.IPv6Address(addr[0].split("%")[0])
                if src == self.source:
                    continue
                dst: IPAddress = self.group
                hop_limit = -1
                for level, kind, value in ancdata:
                    if level != socket.IPPROTO_IPV6:
                        continue
                    if kind == IPV6_PKTINFO and len(value) >= 16:
                        dst = ipaddress.IPv6Address(value[:16])
                    elif kind == IPV6_HOPLIMIT and len(value) >= 4:
                        hop_limit = struct.unpack("=i", value[:4])[0]
                self.receiver(data, src, dst, hop_limit)
