"""Config (+ health) -> the IPVS table the kernel should hold. Pure.

A service group expands to one kernel service per VIP and per fwmark, all with the same
definition. Health decides, per real server, its weight or its absence; when a service has lost
quorum its sorry server takes the new connections.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import replace

from director.config.models import RealServer, Service, Tunnel
from director.ipvs.model import (
    FORWARDING,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    PROTOCOLS,
    SCHEDULER_FLAGS,
    TUNNEL_CSUM,
    TUNNEL_TYPES,
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
)
from director.ipvs.model import Service as KernelService

# (service name, real server) -> its weight now, or None when health has taken it out.
Weights = Mapping[tuple[str, DestKey], int | None]
SORRY_WEIGHT = 1


def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def service_keys(svc: Service) -> list[ServiceKey]:
    """Every kernel service of one configured service (a group gives several)."""
    keys = [
        ServiceKey(_family(a.version), PROTOCOLS[svc.protocol], str(a), svc.port or 0)
        for a in svc.addresses
    ]
    family = _family(svc.addresses[0].version if svc.addresses else svc.family or 4)
    keys += [ServiceKey(family, fwmark=mark) for mark in svc.marks]
    return keys


def service_spec(svc: Service) -> ServiceSpec:
    flags = 0
    timeout = 0
    v6 = bool(svc.addresses and svc.addresses[0].version == 6) or svc.family == 6
    netmask = 128 if v6 else 0xFFFFFFFF
    if svc.persistence is not None:
        flags |= IP_VS_SVC_F_PERSISTENT
        timeout = max(1, round(svc.persistence.timeout))
        if svc.persistence.netmask is not None:
            netmask = _netmask(svc.persistence.netmask, v6)
    if svc.one_packet:
        flags |= IP_VS_SVC_F_ONEPACKET
    for flag in svc.scheduler_flags:
        flags |= SCHEDULER_FLAGS[flag]
    return ServiceSpec(svc.scheduler, flags, timeout, netmask)


def _netmask(value: str | int, v6: bool) -> int:
    if v6:
        return int(value)
    return int(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask)


def dest_key(svc: Service, rs: RealServer) -> DestKey:
    port = rs.port if rs.port is not None else svc.port
    return DestKey(str(rs.address), port or 0)


def dest_spec(svc: Service, rs: RealServer, weight: int) -> DestSpec:
    forwarding = rs.forwarding or svc.forwarding
    tunnel = rs.tunnel or svc.tunnel or Tunnel()
    return DestSpec(
        forwarding=FORWARDING[forwarding],
        weight=weight,
        upper_threshold=rs.upper_threshold,
        lower_threshold=rs.lower_threshold,
        tun_type=TUNNEL_TYPES[tunnel.type] if forwarding == "tun" else 0,
        tun_port=(tunnel.port or 0) if forwarding == "tun" else 0,
        tun_flags=TUNNEL_CSUM[tunnel.checksum] if forwarding == "tun" else 0,
    )


def real_servers(svc: Service, weights: Weights) -> dict[DestKey, DestSpec]:
    out: dict[DestKey, DestSpec] = {}
    for rs in svc.real_servers:
        key = dest_key(svc, rs)
        weight = weights.get((svc.name, key), rs.weight)
        if weight is not None:
            out[key] = dest_spec(svc, rs, weight)
    return out


def sorry_dest(svc: Service) -> tuple[DestKey, DestSpec] | None:
    if svc.sorry_server is None:
        return None
    sorry = svc.sorry_server
    key = DestKey(str(sorry.address), sorry.port if sorry.port is not None else svc.port or 0)
    # keepalived sends to the sorry server with the service's own forwarding method.
    forwarding = svc.forwarding
    return key, DestSpec(forwarding=FORWARDING[forwarding], weight=SORRY_WEIGHT)


def desired_table(
    services: list[Service],
    weights: Weights | None = None,
    sorry: frozenset[str] = frozenset(),
) -> dict[ServiceKey, KernelService]:
    """`weights` overrides configured weights (health); services named in `sorry` have lost
    quorum: their sorry server takes the new connections."""
    out: dict[ServiceKey, KernelService] = {}
    for svc in services:
        spec = service_spec(svc)
        dests = real_servers(svc, weights or {})
        extra = sorry_dest(svc) if svc.name in sorry else None
        if extra is not None:
            # New connections go to the sorry server; the real servers stay at weight 0 so
            # that established connections carry on (keepalived deletes them instead).
            dests = {key: replace(spec, weight=0) for key, spec in dests.items()}
            dests[extra[0]] = extra[1]
        for key in service_keys(svc):
            out[key] = KernelService(key, spec, dests)
    return out
