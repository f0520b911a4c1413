"""Receive checks on whole packets built by scapy (the independent oracle)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3

from director.vrrp.packet import AuthType, Drop
from director.vrrp.receive import Expect, Refused, check_ipv4, check_ipv6

VIP = ipaddress.IPv4Address("192.0.2.100")
VIP6 = ipaddress.IPv6Address("2001:db8:0:1::100")
PEER = "192.0.2.3"

V3 = {51: Expect(version=3, vrid=51, interval_cs=10, addresses=frozenset({VIP}))}
V2_PASS = {
    51: Expect(
        version=2,
        vrid=51,
        interval_cs=100,
        addresses=frozenset({VIP}),
        auth_type=AuthType.PASS,
        password=b"s3cret\0\0",
    )
}


def v3(ttl: int = 255, vrid: int = 51, prio: int = 100, addrs: Any = None, **kw: Any) -> bytes:
    addrs = addrs or [str(VIP)]
    return bytes(
        IP(src=PEER, dst="224.0.0.18", ttl=ttl)
        / VRRPv3(vrid=vrid, priority=prio, ipcount=len(addrs), addrlist=addrs, adv=10, **kw)
    )


def v2(password: bytes = b"s3cret\0\0", adv: int = 1, authtype: int = 1) -> bytes:
    return bytes(
        IP(src=PEER, dst="224.0.0.18", ttl=255)
        / VRRP(
            vrid=51,
            priority=100,
            ipcount=1,
            addrlist=[str(VIP)],
            authtype=authtype,
            adv=adv,
            auth1=int.from_bytes(password[:4], "big"),
            auth2=int.from_bytes(password[4:], "big"),
        )
    )


def refused(packet: bytes, instances: Any = V3) -> Drop:
    with pytest.raises(Refused) as caught:
        check_ipv4(packet, instances)
    return caught.value.reason


def test_valid_v3_and_v2_pass() -> None:
    got = check_ipv4(v3(), V3)
    assert (got.src, got.advert.vrid, got.advert.priority) == (ipaddress.IPv4Address(PEER), 51, 100)
    assert check_ipv4(v2(), V2_PASS).advert.auth_type is AuthType.PASS


@pytest.mark.parametrize(
    ("packet", "instances", "reason"),
    [
        (v3(ttl=254), V3, Drop.TTL),
        (v3(vrid=52), V3, Drop.VRID),
        (v3()[:-1], V3, Drop.LENGTH),
        (v3(chksum=0x1234), V3, Drop.CHECKSUM),
        (v3(addrs=["192.0.2.101"]), V3, Drop.ADDRESS_LIST),
        (v3(addrs=[str(VIP), "192.0.2.101"]), V3, Drop.ADDRESS_LIST),
        (v2(), V3, Drop.VERSION),
        (v2(password=b"guess\0\0\0"), V2_PASS, Drop.AUTH),
        (v2(authtype=0), V2_PASS, Drop.AUTH_TYPE),
        (v2(adv=2), V2_PASS, Drop.INTERVAL),
        (bytes(IP(src=PEER, dst="224.0.0.18", ttl=255, proto=17) / (b"x" * 8)), V3, Drop.TYPE),
        (b"\x45\x00", V3, Drop.LENGTH),
    ],
    ids=[
        "ttl",
        "vrid",
        "length",
        "checksum",
        "address",
        "count",
        "version",
        "password",
        "auth-type",
        "interval",
        "protocol",
        "short-ip",
    ],
)
def test_each_check_refuses_with_its_reason(packet: bytes, instances: Any, reason: Drop) -> None:
    assert refused(packet, instances) is reason


def test_owner_may_advertise_other_addresses() -> None:
    got = check_ipv4(v3(prio=255, addrs=["192.0.2.101"]), V3)
    assert got.advert.priority == 255


def test_unicast_accepts_only_peers() -> None:
    only = {
        51: Expect(
            version=3,
            vrid=51,
            interval_cs=10,
            addresses=frozenset({VIP}),
            peers=frozenset({ipaddress.IPv4Address("192.0.2.9")}),
        )
    }
    assert refused(v3(), only) is Drop.ADDRESS_LIST


def test_ipv6_hop_limit_and_checksum() -> None:
    six = {51: Expect(version=3, vrid=51, interval_cs=10, addresses=frozenset({VIP6}))}
    src, dst = ipaddress.IPv6Address("fe80::3"), ipaddress.IPv6Address("ff02::12")
    payload = bytes(
        IPv6(src=str(src), dst=str(dst))
        / VRRPv3(vrid=51, priority=100, ipcount=1, addrlist=[str(VIP6)], adv=10)
    )[40:]
    assert check_ipv6(payload, src, dst, 255, six).advert.addresses == (VIP6,)
    with pytest.raises(Refused) as caught:
        check_ipv6(payload, src, dst, 1, six)
    assert caught.value.reason is Drop.TTL
