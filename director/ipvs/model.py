"""IPVS state as plain values: what the kernel holds, or what it should hold.

These are the kernel's own terms (numeric protocol, forwarding method, flag bits), so that a dump
and a desired state built from the config compare with `==`. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

# include/uapi/linux/ip_vs.h
IP_VS_SVC_F_PERSISTENT = 0x0001
IP_VS_SVC_F_HASHED = 0x0002  # set by the kernel, never by us
IP_VS_SVC_F_ONEPACKET = 0x0004
IP_VS_SVC_F_SCHED1 = 0x0008  # sh-fallback / mh-fallback
IP_VS_SVC_F_SCHED2 = 0x0010  # sh-port / mh-port
IP_VS_SVC_F_SCHED3 = 0x0020
# The flags the director manages; others (HASHED) are the kernel's business.
SVC_FLAGS_MASK = (
    IP_VS_SVC_F_PERSISTENT
    | IP_VS_SVC_F_ONEPACKET
    | IP_VS_SVC_F_SCHED1
    | IP_VS_SVC_F_SCHED2
    | IP_VS_SVC_F_SCHED3
)

FWD_MASQ = 0  # nat
FWD_LOCALNODE = 1
FWD_TUNNEL = 2
FWD_DROUTE = 3
FORWARDING = {"nat": FWD_MASQ, "tun": FWD_TUNNEL, "dr": FWD_DROUTE}
FORWARDING_NAMES = {v: k for k, v in FORWARDING.items()} | {FWD_LOCALNODE: "local"}

TUN_IPIP = 0
TUN_GUE = 1
TUN_GRE = 2
TUNNEL_TYPES = {"ipip": TUN_IPIP, "gue": TUN_GUE, "gre": TUN_GRE}
TUN_FLAG_NOCSUM = 0
TUN_FLAG_CSUM = 0x1
TUN_FLAG_REMCSUM = 0x2
TUNNEL_CSUM = {"none": TUN_FLAG_NOCSUM, "csum": TUN_FLAG_CSUM, "remcsum": TUN_FLAG_REMCSUM}

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items()}

SCHEDULER_FLAGS = {
    "sh-fallback": IP_VS_SVC_F_SCHED1,
    "sh-port": IP_VS_SVC_F_SCHED2,
    "mh-fallback": IP_VS_SVC_F_SCHED1,
    "mh-port": IP_VS_SVC_F_SCHED2,
}


def canonical(address: str) -> str:
    """One spelling per address, so that kernel dumps and config compare equal."""
    return str(ipaddress.ip_address(address))


@dataclass(frozen=True, order=True)
class ServiceKey:
    """What identifies a virtual service: (family, protocol, address, port) or (family, fwmark)."""

    family: int  # socket.AF_INET or socket.AF_INET6
    protocol: int = 0  # IPPROTO_*; 0 for a fwmark service
    address: str = ""  # canonical; "" for a fwmark service
    port: int = 0
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == socket.AF_INET6 else "")
        proto = PROTOCOL_NAMES.get(self.protocol, str(self.protocol)).upper()
        host = f"[{self.address}]" if self.family == socket.AF_INET6 else self.address
        return f"{proto} {host}:{self.port}"


@dataclass(frozen=True)
class ServiceSpec:
    """A service's settable attributes."""

    scheduler: str = "wlc"
    flags: int = 0  # IP_VS_SVC_F_*, within SVC_FLAGS_MASK
    timeout: int = 0  # persistence, seconds
    netmask: int = 0xFFFFFFFF  # IPv4: the mask as an integer; IPv6: the prefix length


@dataclass(frozen=True, order=True)
class DestKey:
    address: str  # canonical
    port: int

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.family == socket.AF_INET6 else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class DestSpec:
    """A real server's settable attributes."""

    forwarding: int = FWD_MASQ
    weight: int = 1
    upper_threshold: int = 0
    lower_threshold: int = 0
    tun_type: int = TUN_IPIP
    tun_port: int = 0  # network order on the wire; here a plain port
    tun_flags: int = TUN_FLAG_NOCSUM


def _frozen(dests: Mapping[DestKey, DestSpec]) -> Mapping[DestKey, DestSpec]:
    return MappingProxyType(dict(dests))


@dataclass(frozen=True)
class Service:
    key: ServiceKey
    spec: ServiceSpec = ServiceSpec()
    dests: Mapping[DestKey, DestSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dests", _frozen(self.dests))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Service):
            return NotImplemented
        return (self.key, self.spec, dict(self.dests)) == (other.key, other.spec, dict(other.dests))

    def __hash__(self) -> int:
        return hash((self.key, self.spec, frozenset(self.dests.items())))


# The whole table, as desired or as dumped.
Table = Mapping[ServiceKey, Service]


def table(services: list[Service] | tuple[Service, ...]) -> dict[ServiceKey, Service]:
    return {s.key: s for s in services}


# IPVS connection-sync daemon states (IP_VS_STATE_*)
IP_VS_STATE_MASTER = 0x1
IP_VS_STATE_BACKUP = 0x2
SYNC_STATES = {"master": IP_VS_STATE_MASTER, "backup": IP_VS_STATE_BACKUP}


@dataclass(frozen=True)
class SyncDaemon:
    """One of the kernel's connection-sync daemons (at most a master and a backup per netns).

    To start one, 0 and "" ask for the kernel's default (maxlen from the interface's MTU, group
    224.0.0.81, port 8848, ttl 1); as read back, every field holds the value in effect."""

    state: Literal["master", "backup"]
    interface: str
    sync_id: int
    maxlen: int = 0
    group: str = ""  # multicast group, IPv4 or IPv6; canonical
    port: int = 0
    ttl: int = 0
