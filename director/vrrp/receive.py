"""Receive checks (RFC 5798 7.1, RFC 3768 7.1), pure: raw bytes in, an advert or a drop reason out.

IPv4 raw sockets hand us the IP header; IPv6 ones do not, so the caller passes the hop limit and
the destination from ancillary data. Every refusal names a `Drop` reason for its counter.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from director.vrrp.packet import (
    PROTO_VRRP,
    Advert,
    AuthType,
    DecodeError,
    Drop,
    IPAddress,
    decode,
)

PROTO_AH = 51
TTL_REQUIRED = 255
_IPV4 = struct.Struct("!BBHHHBBH4s4s")


@dataclass(frozen=True)
class Expect:
    """What one instance accepts (built once from its config)."""

    version: int
    vrid: int
    interval_cs: int
    addresses: frozenset[IPAddress]
    auth_type: AuthType = AuthType.NONE
    password: bytes = b""  # 8 bytes, zero padded (v2 pass and AH key)
    peers: frozenset[IPAddress] | None = None  # unicast: only these sources
    # AH: verifies the ICV of the whole IPv4 packet; None when not AH.
    ah_check: Callable[[bytes, int], bool] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Received:
    src: IPAddress
    dst: IPAddress
    advert: Advert


class Refused(Exception):
    def __init__(self, reason: Drop, detail: str, vrid: int | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.vrid = vrid


def parse_ipv4(packet: bytes) -> tuple[IPAddress, IPAddress, int, int, bytes, int]:
    """(src, dst, ttl, protocol, payload, header length) of a raw IPv4 packet."""
    if len(packet) < 20:
        raise Refused(Drop.LENGTH, "shorter than an IPv4 header")
    vihl, _, total, _, _, ttl, proto, _, src, dst = _IPV4.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or len(packet) < ihl:
        raise Refused(Drop.LENGTH, "malformed IPv4 header")
    if total != len(packet):
        raise Refused(Drop.LENGTH, f"IP total length {total} but {len(packet)} bytes received")
    return (
        ipaddress.IPv4Address(src),
        ipaddress.IPv4Address(dst),
        ttl,
        proto,
        packet[ihl:],
        ihl,
    )


def check_ipv4(packet: bytes, instances: Mapping[int, Expect]) -> Received:
    src, dst, ttl, proto, payload, ihl = parse_ipv4(packet)
    ah_len = 0
    if proto == PROTO_AH:
        if len(payload) < 24 or payload[0] != PROTO_VRRP:
            raise Refused(Drop.AH, "AH header missing or not carrying VRRP")
        ah_len = (payload[1] + 2) * 4
        payload = payload[ah_len:]
    elif proto != PROTO_VRRP:
        raise Refused(Drop.TYPE, f"IP protocol {proto}")
    received = _check(payload, src, dst, ttl, instances, ah=proto == PROTO_AH)
    expect = instances[received.advert.vrid]
    if proto == PROTO_AH and (expect.ah_check is None or not expect.ah_check(packet, ihl)):
        raise Refused(Drop.AH, "AH authentication failed", received.advert.vrid)
    return received


def check_ipv6(
    payload: bytes, src: IPAddress, dst: IPAddress, hop_limit: int, instances: Mapping[int, Expect]
) -> Received:
    return _check(payload, src, dst, hop_limit, instances, ah=False)


def _check(
    payload: bytes,
    src: IPAddress,
    dst: IPAddress,
    ttl: int,
    instances: Mapping[int, Expect],
    *,
    ah: bool,
) -> Received:
    try:
        advert = decode(payload, src, dst)
    except DecodeError as exc:
        raise Refused(exc.reason, exc.detail) from None
    # Multicast only, as keepalived: its IPv6 unicast adverts leave with hop limit 64 (captured,
    # tests/data/keepalived-2.2.7-vrrp-v3.json), and unicast is limited to the configured peers.
    # Checked after decoding so that the drop counts against its instance.
    if dst.is_multicast and ttl != TTL_REQUIRED:
        raise Refused(Drop.TTL, f"TTL/hop limit {ttl}, not 255", advert.vrid)
    expect = instances.get(advert.vrid)
    if expect is None:
        raise Refused(Drop.VRID, f"no instance with VRID {advert.vrid}", advert.vrid)
    vrid = advert.vrid
    if advert.version != expect.version:
        raise Refused(Drop.VERSION, f"version {advert.version}, expected {expect.version}", vrid)
    if expect.peers is not None and src not in expect.peers:
        raise Refused(Drop.ADDRESS_LIST, f"source {src} is not a unicast peer", vrid)
    if advert.version == 2:
        _check_auth(advert, expect, ah)
        if advert.interval_cs != expect.interval_cs:
            raise Refused(
                Drop.INTERVAL,
                f"interval {advert.interval:g}s, configured {expect.interval_cs / 100:g}s",
                vrid,
            )
    # RFC 5798 7.1: a mismatched address list is dropped unless it comes from the owner.
    if advert.priority != 255 and set(advert.addresses) != expect.addresses:
        raise Refused(Drop.ADDRESS_LIST, "addresses differ from the configured VIPs", vrid)
    return Received(src, dst, advert)


def _check_auth(advert: Advert, expect: Expect, ah: bool) -> None:
    vrid = advert.vrid
    if advert.auth_type != expect.auth_type or ah != (expect.auth_type is AuthType.AH):
        raise Refused(
            Drop.AUTH_TYPE,
            f"authentication {advert.auth_type.name}, configured {expect.auth_type.name}",
            vrid,
        )
    if expect.auth_type is AuthType.PASS and not hmac.compare_digest(
        advert.auth_data, expect.password
    ):
        raise Refused(Drop.AUTH, "wrong password", vrid)
