"""Generic netlink and IPVS messages, encoded and decoded with `struct`. Pure: bytes in and out.

Layout (include/uapi/linux/netlink.h, genetlink.h, ip_vs.h): every message is an nlmsghdr
(len, type, flags, seq, pid) and a genlmsghdr (cmd, version, reserved), then attributes: a
4-byte (len, type) header and a payload padded to 4 bytes. Services, real servers and sync
daemons are nested attributes (IPVS_CMD_ATTR_SERVICE/DEST/DAEMON) without NLA_F_NESTED, as the
kernel and ipvsadm write them.

Byte orders follow the kernel, not a rule: ports (service, real server, tunnel) are big endian;
the IPv4 persistence netmask is the mask in network order while the IPv6 one is a prefix length
in host order (ip_vs_add_service casts the same 32 bits); the sync daemon's port is host order.

Encoding is plain `struct` rather than pyroute2's message classes: a cold apply of 10,000
services with 4 real servers each is 50,000 messages, and LAB.md measured the encoding alone at
about 2.5 s even this way.
"""

from __future__ import annotations

import errno as errnos
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from director.ipvs.model import (
    IP_VS_SVC_F_HASHED,
    SYNC_STATES,
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    SyncDaemon,
)
from director.ipvs.plan import AddDest, AddService, DelDest, DelService, Op, SetDest, SetService

# ---------------------------------------------------------------- netlink

NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors carry the failed request's header only, not its whole body
NETLINK_EXT_ACK = 11  # errors may carry the kernel's text (extended ack)

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300  # ROOT | MATCH
NLM_F_CAPPED = 0x100  # in an error: the request's body was left out
NLM_F_ACK_TLVS = 0x200  # in an error: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# ---------------------------------------------------------------- IPVS (ip_vs.h)

IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1

IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_NEW_DAEMON = 9
IPVS_CMD_DEL_DAEMON = 10
IPVS_CMD_GET_DAEMON = 11
IPVS_CMD_SET_CONFIG = 12
IPVS_CMD_GET_CONFIG = 13
IPVS_CMD_FLUSH = 17

IPVS_CMD_ATTR_SERVICE = 1
IPVS_CMD_ATTR_DEST = 2
IPVS_CMD_ATTR_DAEMON = 3
IPVS_CMD_ATTR_TIMEOUT_TCP = 4
IPVS_CMD_ATTR_TIMEOUT_TCP_FIN = 5
IPVS_CMD_ATTR_TIMEOUT_UDP = 6

IPVS_SVC_ATTR_AF = 1
IPVS_SVC_ATTR_PROTOCOL = 2
IPVS_SVC_ATTR_ADDR = 3
IPVS_SVC_ATTR_PORT = 4
IPVS_SVC_ATTR_FWMARK = 5
IPVS_SVC_ATTR_SCHED_NAME = 6
IPVS_SVC_ATTR_FLAGS = 7
IPVS_SVC_ATTR_TIMEOUT = 8
IPVS_SVC_ATTR_NETMASK = 9
IPVS_SVC_ATTR_STATS = 10
IPVS_SVC_ATTR_PE_NAME = 11
IPVS_SVC_ATTR_STATS64 = 12

IPVS_DEST_ATTR_ADDR = 1
IPVS_DEST_ATTR_PORT = 2
IPVS_DEST_ATTR_FWD_METHOD = 3
IPVS_DEST_ATTR_WEIGHT = 4
IPVS_DEST_ATTR_U_THRESH = 5
IPVS_DEST_ATTR_L_THRESH = 6
IPVS_DEST_ATTR_ACTIVE_CONNS = 7
IPVS_DEST_ATTR_INACT_CONNS = 8
IPVS_DEST_ATTR_PERSIST_CONNS = 9
IPVS_DEST_ATTR_STATS = 10
IPVS_DEST_ATTR_ADDR_FAMILY = 11
IPVS_DEST_ATTR_STATS64 = 12
IPVS_DEST_ATTR_TUN_TYPE = 13
IPVS_DEST_ATTR_TUN_PORT = 14
IPVS_DEST_ATTR_TUN_FLAGS = 15

IPVS_DAEMON_ATTR_STATE = 1
IPVS_DAEMON_ATTR_MCAST_IFN = 2
IPVS_DAEMON_ATTR_SYNC_ID = 3
IPVS_DAEMON_ATTR_SYNC_MAXLEN = 4
IPVS_DAEMON_ATTR_MCAST_GROUP = 5
IPVS_DAEMON_ATTR_MCAST_GROUP6 = 6
IPVS_DAEMON_ATTR_MCAST_PORT = 7
IPVS_DAEMON_ATTR_MCAST_TTL = 8

IP_VS_SCHEDNAME_MAXLEN = 16  # with the NUL
IP_VS_IFNAME_MAXLEN = 16
IP_VS_CONN_F_FWD_MASK = 0x7
_ALL_FLAGS = 0xFFFFFFFF

SYNC_STATE_NAMES = {v: k for k, v in SYNC_STATES.items()}

_HEADER = struct.Struct("=IHHIIBBH")  # nlmsghdr + genlmsghdr
_NLMSGHDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_U8 = struct.Struct("=HHB3x")
_U16 = struct.Struct("=HHH2x")
_U32 = struct.Struct("=HHI")
_FLAGS = struct.Struct("=HHII")  # struct ip_vs_flags {flags, mask}
_ERR = struct.Struct("=i")
_U16_VALUE = struct.Struct("=H")
_BE16_VALUE = struct.Struct(">H")
_U32_VALUE = struct.Struct("=I")
_BE32_VALUE = struct.Struct(">I")
_FLAGS_VALUE = struct.Struct("=II")
HEADER_SIZE = _HEADER.size  # 20
_ADDR_LEN = 16  # union nf_inet_addr


class NetlinkError(Exception):
    """The kernel refused one request: errno (positive) and the request's sequence number."""

    def __init__(self, errno: int, seq: int, text: str = "") -> None:
        super().__init__(errno, seq, text)
        self.errno = errno
        self.seq = seq
        self.text = text

    def __str__(self) -> str:
        base = f"{errnos.errorcode.get(self.errno, self.errno)}: {os.strerror(self.errno)}"
        return f"{base} ({self.text})" if self.text else base


class Message(NamedTuple):
    """One netlink message as received: header fields and the body after the nlmsghdr."""

    type: int
    flags: int
    seq: int
    body: bytes


class Timeouts(NamedTuple):
    """IPVS connection timeouts in seconds (ipvsadm --set tcp tcpfin udp)."""

    tcp: int
    tcpfin: int
    udp: int


@dataclass(frozen=True)
class Ack:
    """An NLMSG_ERROR message: errno 0 is an acknowledgement."""

    errno: int  # positive
    seq: int  # of the request it answers
    text: str = ""


# ---------------------------------------------------------------- encoding primitives


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _nest(kind: int, body: bytes) -> bytes:
    # Every attribute this module writes is padded, so a nest's body needs no more.
    return _NLA.pack(4 + len(body), kind) + body


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _be16(kind: int, value: int) -> bytes:
    return _U16.pack(6, kind, socket.htons(value))


def message(family: int, cmd: int, flags: int, seq: int, attrs: bytes = b"") -> bytes:
    """One generic netlink request."""
    return _HEADER.pack(HEADER_SIZE + len(attrs), family, flags, seq, 0, cmd, 1, 0) + attrs


@functools.lru_cache(maxsize=4096)
def _packed(family: int, address: str) -> bytes:
    try:
        raw = socket.inet_pton(family, address)
    except (OSError, ValueError) as exc:
        name = "IPv6" if family == socket.AF_INET6 else "IPv4"
        raise ValueError(f"{address!r} is not an {name} address") from exc
    return raw + b"\0" * (_ADDR_LEN - len(raw))


# A plan touches each service several times (the service, then each real server): its identity
# is encoded once.
@functools.lru_cache(maxsize=65536)
def service_id(key: ServiceKey) -> bytes:
    """The attributes that name a service (AF and FWMARK, or AF, PROTOCOL, ADDR and PORT)."""
    if key.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"service {key}: address family {key.family} is neither IPv4 nor IPv6")
    if key.fwmark:
        return _U16.pack(6, IPVS_SVC_ATTR_AF, key.family) + _U32.pack(
            8, IPVS_SVC_ATTR_FWMARK, key.fwmark
        )
    return (
        _U16.pack(6, IPVS_SVC_ATTR_AF, key.family)
        + _U16.pack(6, IPVS_SVC_ATTR_PROTOCOL, key.protocol)
        + _NLA.pack(4 + _ADDR_LEN, IPVS_SVC_ATTR_ADDR)
        + _packed(key.family, key.address)
        + _be16(IPVS_SVC_ATTR_PORT, key.port)
    )


def _netmask(family: int, netmask: int) -> bytes:
    if family == socket.AF_INET6:
        return _U32.pack(8, IPVS_SVC_ATTR_NETMASK, netmask)  # a prefix length, host order
    return _NLA.pack(8, IPVS_SVC_ATTR_NETMASK) + _BE32_VALUE.pack(netmask)


@functools.lru_cache(maxsize=65536)
def _service_ref(key: ServiceKey) -> bytes:
    return _nest(IPVS_CMD_ATTR_SERVICE, service_id(key))


def service_attrs(key: ServiceKey, spec: ServiceSpec | None = None) -> bytes:
    """IPVS_CMD_ATTR_SERVICE: the identity, and with spec every settable field."""
    if spec is None:
        return _service_ref(key)
    body = service_id(key)
    if spec is not None:
        if not 0 < len(spec.scheduler.encode()) < IP_VS_SCHEDNAME_MAXLEN:
            raise ValueError(f"service {key}: scheduler name {spec.scheduler!r} is not 1-15 bytes")
        body += (
            _string(IPVS_SVC_ATTR_SCHED_NAME, spec.scheduler)
            # mask ~0: the flags become exactly these (the kernel keeps HASHED itself)
            + _FLAGS.pack(12, IPVS_SVC_ATTR_FLAGS, spec.flags & ~IP_VS_SVC_F_HASHED, _ALL_FLAGS)
            + _U32.pack(8, IPVS_SVC_ATTR_TIMEOUT, spec.timeout)
            + _netmask(key.family, spec.netmask)
        )
    return _nest(IPVS_CMD_ATTR_SERVICE, body)


# The real server's attributes in one pack: ADDR, PORT, ADDR_FAMILY, and for a full entry
# FWD_METHOD, WEIGHT, U_THRESH, L_THRESH, TUN_TYPE, TUN_PORT, TUN_FLAGS (each with its header).
_DEST_ID = struct.Struct("=HHHH16sHHH2xHHH2x")
_DEST_FULL = struct.Struct("=HHHH16sHHH2xHHH2xHHIHHIHHIHHIHHB3xHHH2xHHH2x")


def dest_attrs(key: DestKey, spec: DestSpec | None = None) -> bytes:
    """IPVS_CMD_ATTR_DEST: the address and port, and with spec every settable field."""
    family = socket.AF_INET6 if ":" in key.address else socket.AF_INET
    address = _packed(family, key.address)
    if spec is None:
        return _DEST_ID.pack(
            _DEST_ID.size, IPVS_CMD_ATTR_DEST,
            20, IPVS_DEST_ATTR_ADDR, address,
            6, IPVS_DEST_ATTR_PORT, socket.htons(key.port),
            6, IPVS_DEST_ATTR_ADDR_FAMILY, family,
        )  # fmt: skip
    return _DEST_FULL.pack(
        _DEST_FULL.size, IPVS_CMD_ATTR_DEST,
        20, IPVS_DEST_ATTR_ADDR, address,
        6, IPVS_DEST_ATTR_PORT, socket.htons(key.port),
        6, IPVS_DEST_ATTR_ADDR_FAMILY, family,
        8, IPVS_DEST_ATTR_FWD_METHOD, spec.forwarding,
        8, IPVS_DEST_ATTR_WEIGHT, spec.weight,
        8, IPVS_DEST_ATTR_U_THRESH, spec.upper_threshold,
        8, IPVS_DEST_ATTR_L_THRESH, spec.lower_threshold,
        5, IPVS_DEST_ATTR_TUN_TYPE, spec.tun_type,
        6, IPVS_DEST_ATTR_TUN_PORT, socket.htons(spec.tun_port),
        6, IPVS_DEST_ATTR_TUN_FLAGS, spec.tun_flags,
    )  # fmt: skip


# ---------------------------------------------------------------- requests


def _add_service(op: AddService) -> tuple[int, bytes]:
    return IPVS_CMD_NEW_SERVICE, service_attrs(op.key, op.spec)


def _set_service(op: SetService) -> tuple[int, bytes]:
    return IPVS_CMD_SET_SERVICE, service_attrs(op.key, op.spec)


def _del_service(op: DelService) -> tuple[int, bytes]:
    return IPVS_CMD_DEL_SERVICE, service_attrs(op.key)


def _add_dest(op: AddDest) -> tuple[int, bytes]:
    return IPVS_CMD_NEW_DEST, _service_ref(op.service) + dest_attrs(op.key, op.spec)


def _set_dest(op: SetDest) -> tuple[int, bytes]:
    return IPVS_CMD_SET_DEST, _service_ref(op.service) + dest_attrs(op.key, op.spec)


def _del_dest(op: DelDest) -> tuple[int, bytes]:
    return IPVS_CMD_DEL_DEST, _service_ref(op.service) + dest_attrs(op.key)


# By exact type: a cold apply encodes tens of thousands of these.
_ENCODERS: dict[type, Callable[[Any], tuple[int, bytes]]] = {
    AddService: _add_service,
    SetService: _set_service,
    DelService: _del_service,
    AddDest: _add_dest,
    SetDest: _set_dest,
    DelDest: _del_dest,
}


def encode_op(op: Op, family: int, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    """The request for one planned operation. Raises ValueError for values the kernel's
    message cannot carry (an address of the wrong family, a number out of range, a scheduler
    name too long)."""
    encoder = _ENCODERS.get(type(op))
    if encoder is None:
        raise TypeError(f"not an IPVS operation: {op!r}")
    try:
        cmd, attrs = encoder(op)
    except (struct.error, OverflowError) as exc:  # htons raises the latter for a bad port
        raise ValueError(f"a field is out of range: {exc}") from exc
    return _HEADER.pack(HEADER_SIZE + len(attrs), family, flags, seq, 0, cmd, 1, 0) + attrs


def encode_get_family(seq: int, name: str = IPVS_GENL_NAME) -> bytes:
    attrs = _string(CTRL_ATTR_FAMILY_NAME, name)
    return message(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, NLM_F_REQUEST | NLM_F_ACK, seq, attrs)


def encode_dump_services(family: int, seq: int) -> bytes:
    return message(family, IPVS_CMD_GET_SERVICE, NLM_F_REQUEST | NLM_F_DUMP, seq)


def encode_dump_dests(family: int, seq: int, service: ServiceKey) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return message(family, IPVS_CMD_GET_DEST, flags, seq, service_attrs(service))


def encode_flush(family: int, seq: int) -> bytes:
    return message(family, IPVS_CMD_FLUSH, NLM_F_REQUEST | NLM_F_ACK, seq)


def encode_new_daemon(family: int, seq: int, daemon: SyncDaemon) -> bytes:
    """Start a sync daemon; fields left 0 or "" are not sent, so the kernel picks them."""
    state = SYNC_STATES.get(daemon.state)
    if state is None:
        raise ValueError(f"sync daemon state {daemon.state!r} is neither master nor backup")
    if not 0 < len(daemon.interface.encode()) < IP_VS_IFNAME_MAXLEN:
        raise ValueError(f"interface name {daemon.interface!r} is not 1-15 bytes")
    try:
        body = (
            _U32.pack(8, IPVS_DAEMON_ATTR_STATE, state)
            + _string(IPVS_DAEMON_ATTR_MCAST_IFN, daemon.interface)
            + _U32.pack(8, IPVS_DAEMON_ATTR_SYNC_ID, daemon.sync_id)
        )
        if daemon.maxlen:
            body += _U16.pack(6, IPVS_DAEMON_ATTR_SYNC_MAXLEN, daemon.maxlen)
        if daemon.group:
            group = ipaddress.ip_address(daemon.group)
            kind = (
                IPVS_DAEMON_ATTR_MCAST_GROUP6
                if group.version == 6
                else IPVS_DAEMON_ATTR_MCAST_GROUP
            )
            body += _attr(kind, group.packed)
        if daemon.port:
            body += _U16.pack(6, IPVS_DAEMON_ATTR_MCAST_PORT, daemon.port)
        if daemon.ttl:
            body += _U8.pack(5, IPVS_DAEMON_ATTR_MCAST_TTL, daemon.ttl)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"sync daemon: a field is out of range: {exc}") from exc
    flags = NLM_F_REQUEST | NLM_F_ACK
    return message(family, IPVS_CMD_NEW_DAEMON, flags, seq, _nest(IPVS_CMD_ATTR_DAEMON, body))


def encode_del_daemon(family: int, seq: int, state: str) -> bytes:
    value = SYNC_STATES.get(state)
    if value is None:
        raise ValueError(f"sync daemon state {state!r} is neither master nor backup")
    body = _nest(IPVS_CMD_ATTR_DAEMON, _U32.pack(8, IPVS_DAEMON_ATTR_STATE, value))
    return message(family, IPVS_CMD_DEL_DAEMON, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def encode_dump_daemons(family: int, seq: int) -> bytes:
    return message(family, IPVS_CMD_GET_DAEMON, NLM_F_REQUEST | NLM_F_DUMP, seq)


def encode_get_config(family: int, seq: int) -> bytes:
    return message(family, IPVS_CMD_GET_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq)


def encode_set_config(family: int, seq: int, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> bytes:
    """Set connection timeouts in seconds; 0 leaves one unchanged (as ipvsadm --set)."""
    attrs = b""
    for kind, value in (
        (IPVS_CMD_ATTR_TIMEOUT_TCP, tcp),
        (IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, tcpfin),
        (IPVS_CMD_ATTR_TIMEOUT_UDP, udp),
    ):
        if not 0 <= value < 2**31:
            raise ValueError(f"timeout {value} is out of range")
        if value:
            attrs += _U32.pack(8, kind, value)
    return message(family, IPVS_CMD_SET_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, attrs)


# ---------------------------------------------------------------- decoding


def parse_messages(data: bytes | bytearray | memoryview) -> Iterator[Message]:
    """The netlink messages in one datagram."""
    view = memoryview(data)
    offset = 0
    end = len(view)
    while end - offset >= _NLMSGHDR.size:
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            raise ValueError(f"truncated netlink message at offset {offset}: length {length}")
        yield Message(kind, flags, seq, bytes(view[offset + _NLMSGHDR.size : offset + length]))
        offset += (length + 3) & ~3


def parse_attrs(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """The attributes in data[start:end] by type (the last wins, as in the kernel's parser)."""
    stop = len(data) if end is None else end
    attrs: dict[int, bytes] = {}
    offset = start
    while stop - offset >= 4:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4 or offset + length > stop:
            raise ValueError(f"malformed attribute at offset {offset}: length {length}")
        attrs[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return attrs


def genl_attrs(body: bytes) -> dict[int, bytes]:
    """The top-level attributes of a generic netlink message body (after its genlmsghdr)."""
    return parse_attrs(body, 4)


def genl_cmd(body: bytes) -> int:
    return body[0]


def decode_error(msg: Message) -> Ack:
    """An NLMSG_ERROR message, with the kernel's extended-ack text if it sent one."""
    (error,) = _ERR.unpack_from(msg.body, 0)
    length, _kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(msg.body, 4)
    text = ""
    if msg.flags & NLM_F_ACK_TLVS:
        # After nlmsgerr: the request's body too, unless the kernel capped it.
        start = 4 + _NLMSGHDR.size
        if not msg.flags & NLM_F_CAPPED:
            start = 4 + ((length + 3) & ~3)
        try:
            tlvs = parse_attrs(msg.body, start)
        except ValueError:
            tlvs = {}
        raw = tlvs.get(NLMSGERR_ATTR_MSG, b"")
        text = raw.split(b"\0", 1)[0].decode(errors="replace")
    return Ack(-error, seq, text)


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw[:4])
    # ipaddress's spelling, as model.canonical (inet_ntop differs for IPv4-mapped addresses).
    return str(ipaddress.IPv6Address(raw[:16]))


def _u16(raw: bytes | None) -> int:
    return _U16_VALUE.unpack_from(raw)[0] if raw else 0


def _be16_value(raw: bytes | None) -> int:
    return _BE16_VALUE.unpack_from(raw)[0] if raw else 0


def _u32(raw: bytes | None) -> int:
    return _U32_VALUE.unpack_from(raw)[0] if raw else 0


def _nested(body: bytes, kind: int) -> dict[int, bytes]:
    top = genl_attrs(body)
    raw = top.get(kind)
    if raw is None:
        raise ValueError(f"message without attribute {kind}")
    return parse_attrs(raw)


def decode_service_attrs(attrs: dict[int, bytes]) -> tuple[ServiceKey, ServiceSpec]:
    """A service as the kernel describes it, in model terms: a fwmark service's key has no
    protocol, address or port; the kernel's HASHED flag is dropped."""
    family = _u16(attrs.get(IPVS_SVC_ATTR_AF))
    fwmark = _u32(attrs.get(IPVS_SVC_ATTR_FWMARK))
    if fwmark:
        key = ServiceKey(family, fwmark=fwmark)
    else:
        key = ServiceKey(
            family,
            _u16(attrs.get(IPVS_SVC_ATTR_PROTOCOL)),
            _address(family, attrs[IPVS_SVC_ATTR_ADDR]),
            _be16_value(attrs.get(IPVS_SVC_ATTR_PORT)),
        )
    flags = 0
    raw_flags = attrs.get(IPVS_SVC_ATTR_FLAGS)
    if raw_flags:
        flags = _FLAGS_VALUE.unpack_from(raw_flags)[0] & ~IP_VS_SVC_F_HASHED
    raw_mask = attrs.get(IPVS_SVC_ATTR_NETMASK)
    netmask = 0
    if raw_mask:
        netmask = (_U32_VALUE if family == socket.AF_INET6 else _BE32_VALUE).unpack_from(raw_mask)[
            0
        ]
    spec = ServiceSpec(
        scheduler=attrs.get(IPVS_SVC_ATTR_SCHED_NAME, b"").split(b"\0", 1)[0].decode(),
        flags=flags,
        timeout=_u32(attrs.get(IPVS_SVC_ATTR_TIMEOUT)),
        netmask=netmask,
    )
    return key, spec


# Decoded keys and specs are immutable and repeat from one resync to the next (and most real
# servers share a spec): they are memoized, each cache cleared when it reaches this size.
_CACHE_LIMIT = 1 << 18

# A service as ip_vs_genl_fill_service writes it: the nest header and AF, then PROTOCOL, ADDR and
# PORT (or FWMARK), SCHED_NAME, an optional PE_NAME, then FLAGS, TIMEOUT and NETMASK. Read with a
# few unpacks and memoized like real servers; anything else goes through the general parser.
_SVC_AF = struct.Struct("=HHHHH2xHH")  # nest, AF, and the next attribute's header
_SVC_ADDR = struct.Struct("=H2xHH16sHHH2x")  # PROTOCOL's value, ADDR, PORT
_SVC_TAIL = struct.Struct("=HHIIHHIHH4s")  # FLAGS, TIMEOUT, NETMASK
_SVC_TAIL_HEADERS = (12, IPVS_SVC_ATTR_FLAGS, 8, IPVS_SVC_ATTR_TIMEOUT, 8, IPVS_SVC_ATTR_NETMASK)
_service_keys: dict[tuple[Any, ...], ServiceKey] = {}
_service_specs: dict[tuple[Any, ...], ServiceSpec] = {}


def _service_fast(body: bytes) -> tuple[ServiceKey, ServiceSpec] | None:
    end = len(body)
    if end < 4 + _SVC_AF.size:
        return None
    nest_len, nest_type, af_len, af_type, family, next_len, next_type = _SVC_AF.unpack_from(body, 4)
    if nest_type != IPVS_CMD_ATTR_SERVICE or (af_len, af_type) != (6, IPVS_SVC_ATTR_AF):
        return None
    end = min(end, 4 + nest_len)
    pos = 4 + 12
    if next_type == IPVS_SVC_ATTR_PROTOCOL and next_len == 6 and pos + 8 + 28 <= end:
        protocol, addr_len, addr_type, raw, port_len, port_type, port = _SVC_ADDR.unpack_from(
            body, pos + 4
        )
        if (addr_len, addr_type, port_len, port_type) != (20, IPVS_SVC_ATTR_ADDR, 6, 4):
            return None
        ident: tuple[Any, ...] = (family, protocol, raw, port)
        pos += 36
    elif next_type == IPVS_SVC_ATTR_FWMARK and next_len == 8 and pos + 8 <= end:
        ident = (family, _U32_VALUE.unpack_from(body, pos + 4)[0])
        pos += 8
    else:
        return None
    if pos + 4 > end:
        return None
    name_len, name_type = _NLA.unpack_from(body, pos)
    if name_type != IPVS_SVC_ATTR_SCHED_NAME or name_len < 5 or pos + name_len > end:
        return None
    name = body[pos + 4 : pos + name_len]
    pos += (name_len + 3) & ~3
    if pos + 4 <= end and _NLA.unpack_from(body, pos)[1] == IPVS_SVC_ATTR_PE_NAME:
        pos += (_NLA.unpack_from(body, pos)[0] + 3) & ~3
    if pos + _SVC_TAIL.size > end:
        return None
    tail = _SVC_TAIL.unpack_from(body, pos)
    if (tail[0], tail[1], tail[4], tail[5], tail[7], tail[8]) != _SVC_TAIL_HEADERS:
        return None
    key = _service_keys.get(ident)
    if key is None:
        if len(ident) == 2:
            key = ServiceKey(family, fwmark=ident[1])
        else:
            key = ServiceKey(family, protocol, _address(family, raw), socket.ntohs(port))
        if len(_service_keys) >= _CACHE_LIMIT:
            _service_keys.clear()
        _service_keys[ident] = key
    spec_ident = (family, name, tail[2], tail[6], tail[9])
    spec = _service_specs.get(spec_ident)
    if spec is None:
        mask = (_U32_VALUE if family == socket.AF_INET6 else _BE32_VALUE).unpack(tail[9])[0]
        scheduler = name.split(b"\0", 1)[0].decode()
        spec = ServiceSpec(scheduler, tail[2] & ~IP_VS_SVC_F_HASHED, tail[6], mask)
        if len(_service_specs) >= _CACHE_LIMIT:
            _service_specs.clear()
        _service_specs[spec_ident] = spec
    return key, spec


def decode_service(body: bytes) -> tuple[ServiceKey, ServiceSpec]:
    """One message of a service dump (or a service request: the layout is the same)."""
    return _service_fast(body) or decode_service_attrs(_nested(body, IPVS_CMD_ATTR_SERVICE))


def decode_dest_attrs(attrs: dict[int, bytes], service_family: int) -> tuple[DestKey, DestSpec]:
    # Kernels before 4.x did not send ADDR_FAMILY: a real server then has the service's family.
    family = _u16(attrs.get(IPVS_DEST_ATTR_ADDR_FAMILY)) or service_family
    key = DestKey(
        _address(family, attrs[IPVS_DEST_ATTR_ADDR]), _be16_value(attrs.get(IPVS_DEST_ATTR_PORT))
    )
    tun_type = attrs.get(IPVS_DEST_ATTR_TUN_TYPE)
    spec = DestSpec(
        forwarding=_u32(attrs.get(IPVS_DEST_ATTR_FWD_METHOD)) & IP_VS_CONN_F_FWD_MASK,
        weight=_u32(attrs.get(IPVS_DEST_ATTR_WEIGHT)),
        upper_threshold=_u32(attrs.get(IPVS_DEST_ATTR_U_THRESH)),
        lower_threshold=_u32(attrs.get(IPVS_DEST_ATTR_L_THRESH)),
        tun_type=tun_type[0] if tun_type else 0,
        tun_port=_be16_value(attrs.get(IPVS_DEST_ATTR_TUN_PORT)),
        tun_flags=_u16(attrs.get(IPVS_DEST_ATTR_TUN_FLAGS)),
    )
    return key, spec


def decode_dest(body: bytes, service_family: int) -> tuple[DestKey, DestSpec]:
    """One message of a real-server dump (or a real-server request)."""
    return decode_dest_attrs(_nested(body, IPVS_CMD_ATTR_DEST), service_family)


# A real server as ip_vs_genl_fill_dest writes it (Linux 5.3 and later), up to ADDR_FAMILY: the
# nest header, then (len, type, value) for ADDR, PORT, FWD_METHOD, WEIGHT, TUN_TYPE, TUN_PORT,
# TUN_FLAGS, U_THRESH, L_THRESH, ACTIVE_CONNS, INACT_CONNS, PERSIST_CONNS, ADDR_FAMILY. One
# unpack reads it; a message laid out otherwise goes through the general parser. A resync dumps
# every real server, so this is the director's hottest decoding path.
_DEST_DUMP = struct.Struct("=HHHH16sHHH2xHHIHHIHHB3xHHH2xHHH2xHHIHHIHHIHHIHHIHHH2x")
_DEST_DUMP_LENS = (20, 6, 8, 8, 5, 6, 6, 8, 8, 8, 8, 8, 6)
_DEST_DUMP_TYPES = (
    IPVS_DEST_ATTR_ADDR,
    IPVS_DEST_ATTR_PORT,
    IPVS_DEST_ATTR_FWD_METHOD,
    IPVS_DEST_ATTR_WEIGHT,
    IPVS_DEST_ATTR_TUN_TYPE,
    IPVS_DEST_ATTR_TUN_PORT,
    IPVS_DEST_ATTR_TUN_FLAGS,
    IPVS_DEST_ATTR_U_THRESH,
    IPVS_DEST_ATTR_L_THRESH,
    IPVS_DEST_ATTR_ACTIVE_CONNS,
    IPVS_DEST_ATTR_INACT_CONNS,
    IPVS_DEST_ATTR_PERSIST_CONNS,
    IPVS_DEST_ATTR_ADDR_FAMILY,
)
# Memoized decoded values (see _CACHE_LIMIT).
_dest_keys: dict[tuple[bytes, int, int], DestKey] = {}
_dest_specs: dict[tuple[int, ...], DestSpec] = {}


def _dest_from_values(v: tuple[Any, ...], service_family: int) -> tuple[DestKey, DestSpec]:
    family = v[40] or service_family
    ident = (v[4], v[7], family)
    key = _dest_keys.get(ident)
    if key is None:
        key = DestKey(_address(family, v[4]), socket.ntohs(v[7]))
        if len(_dest_keys) >= _CACHE_LIMIT:
            _dest_keys.clear()
        _dest_keys[ident] = key
    fields = (v[10] & IP_VS_CONN_F_FWD_MASK, v[13], v[25], v[28], v[16], socket.ntohs(v[19]), v[22])
    spec = _dest_specs.get(fields)
    if spec is None:
        spec = DestSpec(*fields)
        if len(_dest_specs) >= _CACHE_LIMIT:
            _dest_specs.clear()
        _dest_specs[fields] = spec
    return key, spec


def decode_dest_dump(
    data: bytes | memoryview, seq: int, service_family: int, out: dict[DestKey, DestSpec]
) -> bool:
    """One datagram of a real-server dump answering request seq, decoded into out. True when
    it held the dump's end (NLMSG_DONE); raises NetlinkError if the kernel refused the dump."""
    offset = 0
    end = len(data)
    while end - offset >= _NLMSGHDR.size:
        length, kind, flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            raise ValueError(f"truncated netlink message at offset {offset}: length {length}")
        if mseq == seq:
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                body = bytes(data[offset + _NLMSGHDR.size : offset + length])
                ack = decode_error(Message(kind, flags, mseq, body))
                raise NetlinkError(ack.errno, mseq, ack.text)
            start = offset + HEADER_SIZE
            v: tuple[Any, ...] | None = None
            if length - HEADER_SIZE >= _DEST_DUMP.size:
                v = _DEST_DUMP.unpack_from(data, start)
                if not (
                    v[1] == IPVS_CMD_ATTR_DEST
                    and v[2:41:3] == _DEST_DUMP_LENS
                    and v[3:41:3] == _DEST_DUMP_TYPES
                ):
                    v = None
            if v is not None:
                key, spec = _dest_from_values(v, service_family)
            else:
                body = bytes(data[offset + _NLMSGHDR.size : offset + length])
                key, spec = decode_dest(body, service_family)
            out[key] = spec
        offset += (length + 3) & ~3
    return False


def decode_daemon(body: bytes) -> SyncDaemon:
    """One message of a sync-daemon dump."""
    attrs = _nested(body, IPVS_CMD_ATTR_DAEMON)
    state = _u32(attrs.get(IPVS_DAEMON_ATTR_STATE))
    name = SYNC_STATE_NAMES.get(state)
    if name is None:
        raise ValueError(f"unknown sync daemon state {state}")
    group = ""
    if IPVS_DAEMON_ATTR_MCAST_GROUP6 in attrs:
        group = str(ipaddress.IPv6Address(attrs[IPVS_DAEMON_ATTR_MCAST_GROUP6][:16]))
    elif IPVS_DAEMON_ATTR_MCAST_GROUP in attrs:
        group = socket.inet_ntoa(attrs[IPVS_DAEMON_ATTR_MCAST_GROUP][:4])
    ttl = attrs.get(IPVS_DAEMON_ATTR_MCAST_TTL)
    return SyncDaemon(
        state="master" if name == "master" else "backup",
        interface=attrs.get(IPVS_DAEMON_ATTR_MCAST_IFN, b"").split(b"\0", 1)[0].decode(),
        sync_id=_u32(attrs.get(IPVS_DAEMON_ATTR_SYNC_ID)),
        maxlen=_u16(attrs.get(IPVS_DAEMON_ATTR_SYNC_MAXLEN)),
        group=group,
        port=_u16(attrs.get(IPVS_DAEMON_ATTR_MCAST_PORT)),
        ttl=ttl[0] if ttl else 0,
    )


def decode_config(body: bytes) -> Timeouts:
    """The reply to IPVS_CMD_GET_CONFIG."""
    attrs = genl_attrs(body)
    return Timeouts(
        _u32(attrs.get(IPVS_CMD_ATTR_TIMEOUT_TCP)),
        _u32(attrs.get(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN)),
        _u32(attrs.get(IPVS_CMD_ATTR_TIMEOUT_UDP)),
    )


def decode_family_id(body: bytes) -> int:
    """The reply to CTRL_CMD_GETFAMILY."""
    raw = genl_attrs(body).get(CTRL_ATTR_FAMILY_ID)
    if raw is None:
        raise ValueError("family reply without CTRL_ATTR_FAMILY_ID")
    return _u16(raw)
