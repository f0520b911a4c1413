"""VRRPv2 authentication (director.vrrp.auth) against packets captured from keepalived 2.2.7.

tests/data/keepalived-2.2.7-vrrp-auth.json holds the captures (how they were made is in the file);
tests/lab/test_ah_keepalived.py checks the other direction against a live keepalived.
scapy's IPsec AH (RFC 4302 rules: the TTL is mutable) is the independent oracle for the ICV:
it agrees with keepalived's unicast adverts and disagrees with its multicast ones, which keep
the TTL inside the ICV.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.ipsec import AH, SecurityAssociation

from director.vrrp.auth import (
    AH_LEN,
    ICV_LEN,
    PROTO_AH,
    SEQ_LAST,
    AhCheck,
    AhSequence,
    build_ah_packet,
    icv,
    next_ip_id,
    password_field,
    verify_ah,
)
from director.vrrp.packet import MCAST4, Advert, AuthType, Drop, checksum, encode
from director.vrrp.receive import Expect, Refused, check_ipv4

DATA = Path(__file__).resolve().parent.parent / "data" / "keepalived-2.2.7-vrrp-auth.json"
GOLDEN: dict[str, dict[str, Any]] = {p["name"]: p for p in json.loads(DATA.read_text())["packets"]}
AH_GOLDEN = [name for name, p in GOLDEN.items() if p["auth_type"] == "AH"]
KEY = password_field("s3cret")
SRC = ipaddress.IPv4Address("192.0.2.3")
PEER = ipaddress.IPv4Address("192.0.2.2")
VIP = ipaddress.IPv4Address("192.0.2.100")
# Bytes of the IPv4 header left out of the ICV: tos, flags + fragment offset, checksum (and the
# TTL, byte 8, for unicast only).
MUTABLE = frozenset({1, 6, 7, 10, 11})


def golden(name: str) -> tuple[bytes, bytes, bool]:
    p = GOLDEN[name]
    return bytes.fromhex(p["hex"]), password_field(p["auth_pass"]), p["unicast"]


def ah_advert(priority: int = 200, addresses: tuple[Any, ...] = (VIP,)) -> Advert:
    return Advert(2, 51, priority, 100, addresses, AuthType.AH, bytes(8))


def ours(dst: ipaddress.IPv4Address = MCAST4, seq: int = 1, ip_id: int = 1) -> bytes:
    return build_ah_packet(SRC, dst, encode(ah_advert(), SRC, dst), KEY, seq, ip_id)


def expect(check: Any) -> dict[int, Expect]:
    return {
        51: Expect(
            version=2,
            vrid=51,
            interval_cs=100,
            addresses=frozenset({VIP}),
            auth_type=AuthType.AH,
            password=KEY,
            ah_check=check,
        )
    }


# -- password field ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "field"),
    [
        ("s3cret", b"s3cret\0\0"),
        ("12345678", b"12345678"),
        ("s3cretpassword", b"s3cretpa"),  # keepalived: "Truncating auth_pass to 8 characters"
        ("", bytes(8)),
        ("pä", "pä".encode() + bytes(5)),
    ],
)
def test_password_field(password: str, field: bytes) -> None:
    assert password_field(password) == field
    assert len(field) == 8


# -- keepalived's packets ----------------------------------------------------------------------


@pytest.mark.parametrize("name", AH_GOLDEN)
def test_golden_packets_verify(name: str) -> None:
    packet, key, unicast = golden(name)
    assert verify_ah(packet, 20, key, unicast) == GOLDEN[name]["seq"]
    assert verify_ah(packet, 20, password_field("s3creT"), unicast) is None
    # TTL in the ICV for multicast, out of it for unicast: the other reading fails
    assert verify_ah(packet, 20, key, not unicast) is None


def test_golden_long_password_is_keyed_with_its_first_8_bytes() -> None:
    packet, _, _ = golden("ah-multicast-long-password")
    assert verify_ah(packet, 20, b"s3cretpa", False) == 1
    assert verify_ah(packet, 20, password_field("s3cret"), False) is None


@pytest.mark.parametrize("name", AH_GOLDEN)
def test_golden_packets_are_what_our_sender_builds(name: str) -> None:
    packet, key, _ = golden(name)
    src = ipaddress.IPv4Address(packet[12:16])
    dst = ipaddress.IPv4Address(packet[16:20])
    seq = int.from_bytes(packet[28:32], "big")
    ip_id = int.from_bytes(packet[4:6], "big")
    assert (seq, ip_id) == (GOLDEN[name]["seq"], GOLDEN[name]["ip_id"])
    # byte for byte, IP checksum included
    assert build_ah_packet(src, dst, packet[20 + AH_LEN :], key, seq, ip_id) == packet


@pytest.mark.parametrize("name", AH_GOLDEN)
def test_golden_packet_layout(name: str) -> None:
    packet, _, unicast = golden(name)
    p = IP(packet)
    assert (p.tos, p.ttl, p.proto, p.flags, p.frag, p.len) == (0xC0, 255, PROTO_AH, 0, 0, 64)
    assert p.id == GOLDEN[name]["ip_id"] != 0
    assert (p[AH].nh, p[AH].payloadlen, p[AH].reserved) == (112, 4, 0)
    assert p[AH].spi == int(ipaddress.IPv4Address(p.src))  # SPI = source address
    assert ipaddress.IPv4Address(p.dst).is_multicast != unicast
    vrrp = packet[20 + AH_LEN :]
    assert vrrp[4] == AuthType.AH and vrrp[-8:] == bytes(8)  # VRRP auth type 2, zero data
    assert vrrp[2] == GOLDEN[name]["priority"]


@pytest.mark.parametrize("name", AH_GOLDEN)
def test_scapy_agrees_for_unicast_only(name: str) -> None:
    """RFC 4302 zeroes the TTL: scapy accepts keepalived's unicast ICV, not its multicast one."""
    packet, key, unicast = golden(name)
    sa = SecurityAssociation(
        AH, spi=int.from_bytes(packet[12:16], "big"), auth_algo="HMAC-MD5-96", auth_key=key
    )
    if unicast:
        sa.decrypt(IP(packet))
    else:
        with pytest.raises(Exception, match="icv"):
            sa.decrypt(IP(packet))


@pytest.mark.parametrize("name", AH_GOLDEN)
def test_golden_packets_pass_the_receive_checks(name: str) -> None:
    packet, key, unicast = golden(name)
    vrrp = packet[20 + AH_LEN :]
    vrid, vip = vrrp[1], ipaddress.IPv4Address(vrrp[8:12])
    check = AhCheck(key, unicast, AhSequence())
    instances = {
        vrid: Expect(
            version=2,
            vrid=vrid,
            interval_cs=100,
            addresses=frozenset({vip}),
            auth_type=AuthType.AH,
            password=key,
            peers=frozenset({SRC}) if unicast else None,
            ah_check=check,
        )
    }
    received = check_ipv4(packet, instances)
    assert received.advert.priority == GOLDEN[name]["priority"]
    with pytest.raises(Refused) as replay:
        check_ipv4(packet, instances)  # the same sequence number again
    assert replay.value.reason is Drop.AH
    assert (check.icv_failures, check.replays) == (0, 1)


def test_golden_pass_packet() -> None:
    packet, key, _ = golden("pass-multicast")
    assert packet[20 + 4] == AuthType.PASS and packet[-8:] == key == b"s3cret\0\0"
    instances = {51: Expect(2, 51, 100, frozenset({VIP}), auth_type=AuthType.PASS, password=key)}
    assert check_ipv4(packet, instances).advert.auth_data == key
    instances[51] = Expect(
        2, 51, 100, frozenset({VIP}), auth_type=AuthType.PASS, password=password_field("s3creT")
    )
    with pytest.raises(Refused) as wrong:
        check_ipv4(packet, instances)
    assert wrong.value.reason is Drop.AUTH


# -- tampering and mutable fields --------------------------------------------------------------


@pytest.mark.parametrize("name", AH_GOLDEN)
def test_every_covered_byte_is_covered(name: str) -> None:
    """Flip any bit outside the mutable fields (IP header incl. id, length, addresses; all of
    AH; all of VRRP) and the ICV fails."""
    packet, key, unicast = golden(name)
    mutable = MUTABLE | ({8} if unicast else set())
    for at in range(len(packet)):
        if at in mutable:
            continue
        for bit in (0x01, 0x80):
            bad = bytearray(packet)
            bad[at] ^= bit
            assert verify_ah(bytes(bad), 20, key, unicast) is None, (at, bit)


@pytest.mark.parametrize("name", AH_GOLDEN)
@pytest.mark.parametrize(
    ("at", "value"),
    [
        (1, b"\x00"),
        (1, b"\xff"),
        (6, b"\x40\x00"),
        (6, b"\x1f\xff"),
        (10, b"\x00\x00"),
        (10, b"\xbe\xef"),
    ],
)
def test_mutable_fields_do_not_matter(name: str, at: int, value: bytes) -> None:
    packet, key, unicast = golden(name)
    changed = packet[:at] + value + packet[at + len(value) :]
    assert verify_ah(changed, 20, key, unicast) == GOLDEN[name]["seq"]


@pytest.mark.parametrize("ttl", [0, 1, 64, 254])
def test_ttl_is_mutable_for_unicast_only(ttl: int) -> None:
    for name in AH_GOLDEN:
        packet, key, unicast = golden(name)
        changed = packet[:8] + bytes([ttl]) + packet[9:]
        result = verify_ah(changed, 20, key, unicast)
        assert (result is not None) == unicast, name


# -- our sender --------------------------------------------------------------------------------


def test_built_packet_layout_and_checksum() -> None:
    packet = ours(seq=77, ip_id=9)
    assert checksum(packet[:20]) == 0  # a valid IP checksum (the kernel recomputes it anyway)
    p = IP(packet)
    assert (p.tos, p.ttl, p.proto, p.id, p.len, p.frag) == (0xC0, 255, 51, 9, len(packet), 0)
    assert (p[AH].nh, p[AH].payloadlen, p[AH].spi, p[AH].seq) == (112, 4, int(SRC), 77)
    assert verify_ah(packet, 20, KEY, False) == 77
    assert verify_ah(packet, 20, KEY, True) is None


def test_built_unicast_packet_has_the_ttl_outside_the_icv_as_scapy_computes_it() -> None:
    packet = ours(dst=PEER, seq=3)
    assert verify_ah(packet, 20, KEY, True) == 3
    assert verify_ah(packet, 20, KEY, False) is None
    sa = SecurityAssociation(AH, spi=int(SRC), auth_algo="HMAC-MD5-96", auth_key=KEY)
    sa.decrypt(IP(packet))  # raises on a bad ICV


def test_icv_ignores_the_icv_field() -> None:
    packet = ours()
    garbage = packet[:32] + b"\xff" * ICV_LEN + packet[44:]
    assert icv(garbage, KEY, unicast=False) == packet[32:44]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ip_id": 0}, "IP id"),
        ({"ip_id": 0x10000}, "IP id"),
        ({"seq": -1}, "sequence"),
        ({"seq": 1 << 32}, "sequence"),
        ({"key": b"s3cret"}, "8-byte"),
        ({"vrrp": encode(Advert(3, 51, 100, 100, (VIP,)), SRC, MCAST4)}, "VRRPv2"),
        ({"vrrp": encode(Advert(2, 51, 100, 100, (VIP,), AuthType.PASS, KEY), SRC, MCAST4)}, "AH"),
    ],
)
def test_build_refuses(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "src": SRC,
        "dst": MCAST4,
        "vrrp": encode(ah_advert(), SRC, MCAST4),
        "key": KEY,
        "seq": 1,
        "ip_id": 1,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        build_ah_packet(**args)


def test_next_ip_id_never_zero() -> None:
    assert [next_ip_id(i) for i in (0, 1, 65534, 65535)] == [1, 2, 65535, 1]


# -- what verify_ah refuses besides the ICV ----------------------------------------------------


def resign(packet: bytearray, unicast: bool = False) -> bytes:
    packet[32:44] = icv(bytes(packet), KEY, unicast=unicast)
    return bytes(packet)


def test_spi_must_be_the_source_address_even_with_a_valid_icv() -> None:
    bad = bytearray(ours())
    bad[24:28] = PEER.packed
    assert verify_ah(resign(bad), 20, KEY, False) is None


def test_ah_must_carry_vrrp_in_24_bytes() -> None:
    for at, value in ((20, 17), (21, 5)):  # next header, payload length
        bad = bytearray(ours())
        bad[at] = value
        assert verify_ah(resign(bad), 20, KEY, False) is None


def test_ip_options_and_short_packets_are_refused() -> None:
    packet = ours()
    assert verify_ah(packet, 24, KEY, False) is None
    assert verify_ah(packet[:43], 20, KEY, False) is None
    assert verify_ah(b"", 20, KEY, False) is None


def test_key_must_be_the_8_byte_field() -> None:
    with pytest.raises(ValueError, match="8-byte"):
        verify_ah(ours(), 20, b"s3cret", False)


@given(st.binary(max_size=120), st.booleans())
def test_verify_never_raises_on_received_bytes(data: bytes, unicast: bool) -> None:
    assert verify_ah(data, 20, KEY, unicast) is None or len(data) >= 44


# -- sequence numbers (keepalived's ipsecah_counter) -------------------------------------------


def test_sender_counts_from_one() -> None:
    seq = AhSequence()
    assert [seq.next_send() for _ in range(3)] == [1, 2, 3]


def test_receiver_accepts_only_strictly_greater() -> None:
    seq = AhSequence()
    assert seq.accept(5)
    assert not seq.accept(5)  # keepalived 2.2.7: "sequence number 5 already processed"
    assert not seq.accept(4)
    assert seq.accept(6)
    assert seq.accept(1000)  # gaps are fine (lost adverts)
    assert seq.counter == 1000


def test_one_counter_for_both_directions() -> None:
    """A backup that becomes master goes on from the master's last number (checked live)."""
    seq = AhSequence()
    for n in range(1000, 1010):
        assert seq.accept(n)
    seq.become_master()
    assert seq.next_send() == 1010
    # ... and a master's own count raises the bar for what it accepts
    assert not seq.accept(1010)


def test_master_syncs_above_a_lower_priority_advert() -> None:
    seq = AhSequence(counter=10)
    seq.lower_priority_seen(500)
    assert seq.next_send() == 502


def test_counter_cycles_and_restarts_on_becoming_master() -> None:
    seq = AhSequence(counter=SEQ_LAST - 1)
    assert seq.next_send() == SEQ_LAST
    assert seq.next_send() == SEQ_LAST and seq.cycled  # stops counting
    seq.become_master()
    assert (seq.counter, seq.cycled) == (0, False)
    assert seq.next_send() == 1


def test_become_master_keeps_the_counter_unless_cycled() -> None:
    seq = AhSequence(counter=42)
    seq.become_master()
    assert seq.next_send() == 43


def test_an_accepted_advert_clears_the_cycle_flag() -> None:
    seq = AhSequence(counter=SEQ_LAST, cycled=True)
    assert seq.accept(SEQ_LAST + 1)
    seq.become_master()
    assert seq.counter == SEQ_LAST + 1


def test_ah_check_counts_icv_failures_and_replays_separately() -> None:
    check = AhCheck(KEY, False, AhSequence())
    first, second = ours(seq=1), ours(seq=2)
    assert check(first, 20)
    assert not check(first, 20)
    tampered = bytearray(second)
    tampered[-9] ^= 1
    assert not check(bytes(tampered), 20)
    assert check(second, 20)
    assert (check.icv_failures, check.replays, check.sequence.counter) == (1, 1, 2)


def test_receive_checks_drop_a_wrong_key_as_ah() -> None:
    check = AhCheck(password_field("other"), False, AhSequence())
    with pytest.raises(Refused) as caught:
        check_ipv4(ours(), expect(check))
    assert caught.value.reason is Drop.AH
    assert check.icv_failures == 1
