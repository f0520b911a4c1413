"""VRRP codec against scapy's VRRP/VRRPv3 layers (an independent implementation), and fuzzed."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3

from director.vrrp.packet import (
    MCAST4,
    MCAST6,
    Advert,
    AuthType,
    DecodeError,
    Drop,
    checksum,
    decode,
    encode,
)

SRC4 = ipaddress.IPv4Address("192.0.2.2")
SRC6 = ipaddress.IPv6Address("fe80::2")

v4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
vrids = st.integers(1, 255)
prios = st.integers(0, 255)


@settings(max_examples=200, deadline=None)
@given(
    vrids,
    prios,
    st.integers(1, 255),
    st.lists(v4, min_size=1, max_size=20),
    st.binary(min_size=8, max_size=8),
)
def test_v2_matches_scapy(
    vrid: int, prio: int, secs: int, addrs: list[ipaddress.IPv4Address], auth: bytes
) -> None:
    theirs = bytes(
        IP(src=str(SRC4), dst=str(MCAST4))
        / VRRP(
            vrid=vrid,
            priority=prio,
            ipcount=len(addrs),
            addrlist=[str(a) for a in addrs],
            authtype=1,
            adv=secs,
            auth1=int.from_bytes(auth[:4], "big"),
            auth2=int.from_bytes(auth[4:], "big"),
        )
    )[20:]
    ours = Advert(2, vrid, prio, secs * 100, tuple(addrs), AuthType.PASS, auth)
    assert encode(ours, SRC4, MCAST4) == theirs
    assert decode(theirs, SRC4, MCAST4) == ours


@settings(max_examples=200, deadline=None)
@given(vrids, prios, st.integers(1, 4095), st.lists(v4, min_size=1, max_size=20))
def test_v3_ipv4_matches_scapy(
    vrid: int, prio: int, cs: int, addrs: list[ipaddress.IPv4Address]
) -> None:
    theirs = bytes(
        IP(src=str(SRC4), dst=str(MCAST4))
        / VRRPv3(
            vrid=vrid, priority=prio, ipcount=len(addrs), adv=cs, addrlist=[str(a) for a in addrs]
        )
    )[20:]
    ours = Advert(3, vrid, prio, cs, tuple(addrs))
    assert encode(ours, SRC4, MCAST4) == theirs
    assert decode(theirs, SRC4, MCAST4) == ours


@settings(max_examples=200, deadline=None)
@given(vrids, prios, st.integers(1, 4095), st.lists(v6, min_size=1, max_size=10), v6)
def test_v3_ipv6_matches_scapy(
    vrid: int, prio: int, cs: int, addrs: list[ipaddress.IPv6Address], dst: ipaddress.IPv6Address
) -> None:
    theirs = bytes(
        IPv6(src=str(SRC6), dst=str(dst))
        / VRRPv3(
            vrid=vrid, priority=prio, ipcount=len(addrs), adv=cs, addrlist=[str(a) for a in addrs]
        )
    )[40:]
    ours = Advert(3, vrid, prio, cs, tuple(addrs))
    assert encode(ours, SRC6, dst) == theirs
    assert decode(theirs, SRC6, dst) == ours


def _v3(count: int = 1) -> bytes:
    addrs = tuple(ipaddress.IPv4Address(f"192.0.2.{100 + i}") for i in range(count))
    return encode(Advert(3, 51, 100, 100, addrs), SRC4, MCAST4)


def _recsum(data: bytes, v3: bool = True) -> bytes:
    data = data[:6] + b"\0\0" + data[8:]
    cover = data
    if v3:
        cover = SRC4.packed + MCAST4.packed + struct.pack("!BBH", 0, 112, len(data)) + data
    return data[:6] + struct.pack("!H", checksum(cover)) + data[8:]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x31\x33", Drop.LENGTH),
        (_recsum(b"\x41" + _v3()[1:]), Drop.VERSION),
        (_recsum(b"\x32" + _v3()[1:]), Drop.TYPE),
        (_v3()[:6] + b"\xde\xad" + _v3()[8:], Drop.CHECKSUM),
        (_recsum(_v3()[:3] + b"\x00" + _v3()[4:]), Drop.ADDRESS_COUNT),
        (_recsum(_v3()[:3] + b"\x02" + _v3()[4:]), Drop.LENGTH),
        (_v3() + b"\0\0\0\0", Drop.LENGTH),
        (_recsum(_v3()[:4] + b"\x00\x00" + _v3()[6:]), Drop.INTERVAL),
    ],
    ids=["short", "version", "type", "checksum", "count0", "count-long", "trailing", "interval0"],
)
def test_each_malformation_has_its_reason(data: bytes, reason: Drop) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data, SRC4, MCAST4)
    assert caught.value.reason is reason


def test_v3_checksum_covers_the_pseudo_header() -> None:
    data = _v3()
    decode(data, SRC4, MCAST4)
    with pytest.raises(DecodeError) as caught:
        decode(data, ipaddress.IPv4Address("192.0.2.3"), MCAST4)
    assert caught.value.reason is Drop.CHECKSUM


def test_v2_over_ipv6_and_bad_auth_type() -> None:
    v2 = encode(Advert(2, 1, 100, 100, (ipaddress.IPv4Address("192.0.2.1"),)), SRC4, MCAST4)
    with pytest.raises(DecodeError) as caught:
        decode(v2, SRC6, MCAST6)
    assert caught.value.reason is Drop.FAMILY
    bad_auth = _recsum(v2[:4] + b"\x07" + v2[5:], v3=False)
    with pytest.raises(DecodeError) as caught:
        decode(bad_auth, SRC4, MCAST4)
    assert caught.value.reason is Drop.AUTH_TYPE


@pytest.mark.parametrize(
    "advert",
    [
        Advert(2, 1, 100, 150, (ipaddress.IPv4Address("192.0.2.1"),)),  # 1.5 s in v2
        Advert(2, 1, 100, 25600, (ipaddress.IPv4Address("192.0.2.1"),)),  # 256 s
        Advert(3, 1, 100, 4096, (ipaddress.IPv4Address("192.0.2.1"),)),
        Advert(4, 1, 100, 100, (ipaddress.IPv4Address("192.0.2.1"),)),
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(advert: Advert) -> None:
    with pytest.raises(ValueError):
        encode(advert, SRC4, MCAST4)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([(SRC4, MCAST4), (SRC6, MCAST6)]))
def test_decoder_never_raises_anything_else(data: bytes, ends: tuple[object, object]) -> None:
    src, dst = ends
    with contextlib.suppress(DecodeError):
        decode(data, src, dst)  # type: ignore[arg-type]


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, 19), st.integers(0, 255))
def test_any_single_byte_change_is_caught_or_decodes(pos: int, value: int) -> None:
    data = bytearray(_v3(3))
    original = bytes(data)
    data[pos % len(data)] = value
    try:
        got = decode(bytes(data), SRC4, MCAST4)
    except DecodeError:
        return
    # Only a change the checksum cannot see (none for one byte) or no change at all decodes.
    assert bytes(data) == original
    assert got == decode(original, SRC4, MCAST4)
