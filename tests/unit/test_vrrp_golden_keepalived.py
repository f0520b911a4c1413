"""Golden adverts: keepalived 2.2.7's captured packets, scapy's VRRP/VRRPv3 layers and our codec.

tests/data/keepalived-2.2.7-vrrp-v3.json holds VRRPv3 adverts captured from keepalived in the lab
(IPv4 multicast and unicast, IPv6 multicast and unicast, two VIPs, and the priority-0 advert of
each sent on SIGTERM); re-capture with `python -m lab.keepalived golden-v3 FILE` (root).
tests/data/keepalived-2.2.7-vrrp-auth.json holds the VRRPv2 `pass` and `ah` ones.

For every capture: `decode` gives the fields its keepalived.conf implies, scapy reads the same
fields, `encode` of the decoded advert with the same source and destination gives the captured
bytes back exactly, scapy's layer built from those fields gives them too, and the receive checks
of an instance configured like the peer accept the whole packet.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3

from director.vrrp.auth import password_field
from director.vrrp.packet import MCAST4, MCAST6, PROTO_VRRP, Advert, AuthType, decode, encode
from director.vrrp.receive import PROTO_AH, Expect, check_ipv4, check_ipv6

DATA = Path(__file__).resolve().parent.parent / "data"
V3 = json.loads((DATA / "keepalived-2.2.7-vrrp-v3.json").read_text())["packets"]
V2 = json.loads((DATA / "keepalived-2.2.7-vrrp-auth.json").read_text())["packets"]
V3_BY_NAME: dict[str, dict[str, Any]] = {p["name"]: p for p in V3}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
VIP = "192.0.2.100"  # the v2 captures' VIP (192.0.2.101 for the unicast one)


def split(raw: bytes) -> tuple[IPAddress, IPAddress, int, bytes]:
    """(src, dst, TTL or hop limit, VRRP message) of a captured IPv4/IPv6 packet (AH skipped)."""
    if raw[0] >> 4 == 4:
        ihl = (raw[0] & 0x0F) * 4
        src4, dst4 = ipaddress.IPv4Address(raw[12:16]), ipaddress.IPv4Address(raw[16:20])
        at = ihl + ((raw[ihl + 1] + 2) * 4 if raw[9] == PROTO_AH else 0)
        return src4, dst4, raw[8], raw[at:]
    assert raw[6] == PROTO_VRRP
    src6, dst6 = ipaddress.IPv6Address(raw[8:24]), ipaddress.IPv6Address(raw[24:40])
    return src6, dst6, raw[7], raw[40:]


def vips(config: dict[str, Any]) -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_interface(v).ip for v in config["virtual_ipaddress"])


@pytest.fixture(params=[p["name"] for p in V3])
def v3(request: pytest.FixtureRequest) -> dict[str, Any]:
    packet: dict[str, Any] = V3_BY_NAME[request.param]
    return packet


def test_the_captures_cover_what_the_issue_asks() -> None:
    kinds = {(p["src"].count(":") > 0, p["dst"] in (str(MCAST4), str(MCAST6))) for p in V3}
    assert kinds == {(False, True), (False, False), (True, True), (True, False)}
    assert {p["priority"] == 0 for p in V3} == {True, False}
    assert all(bytes.fromhex(p["hex"]) for p in V3)


# -- VRRPv3 ------------------------------------------------------------------------------------


def test_v3_ip_header_as_keepalived_sends_it(v3: dict[str, Any]) -> None:
    raw = bytes.fromhex(v3["hex"])
    src, dst, ttl, _ = split(raw)
    assert (str(src), str(dst), ttl) == (v3["src"], v3["dst"], v3["ttl"])
    if src.version == 4:
        assert raw[1] == 0xC0 and raw[9] == PROTO_VRRP  # TOS network control
        assert ttl == 255  # multicast and unicast alike
    else:
        assert ((raw[0] & 0x0F) << 4 | raw[1] >> 4) == 0xC0  # traffic class
        # Multicast leaves with hop limit 255, unicast with the kernel's default 64.
        assert ttl == (255 if dst.is_multicast else 64)
        assert src.is_link_local == dst.is_multicast  # multicast from the link-local address


def test_v3_decodes_to_the_configured_fields(v3: dict[str, Any]) -> None:
    src, dst, _, message = split(bytes.fromhex(v3["hex"]))
    cfg = v3["config"]
    advert = decode(message, src, dst)
    assert advert == Advert(
        version=3,
        vrid=cfg["virtual_router_id"],
        priority=v3["priority"],
        interval_cs=round(cfg["advert_int"] * 100),
        addresses=vips(cfg),
    )
    assert advert.priority in (cfg["priority"], 0)


def test_v3_reencodes_byte_for_byte(v3: dict[str, Any]) -> None:
    src, dst, _, message = split(bytes.fromhex(v3["hex"]))
    assert encode(decode(message, src, dst), src, dst) == message


def test_v3_scapy_reads_the_same_fields(v3: dict[str, Any]) -> None:
    raw = bytes.fromhex(v3["hex"])
    src, dst, _, message = split(raw)
    layer = (IP(raw) if src.version == 4 else IPv6(raw))[VRRPv3]
    ours = decode(message, src, dst)
    assert (layer.version, layer.type, layer.res) == (3, 1, 0)
    assert (layer.vrid, layer.priority, layer.adv) == (ours.vrid, ours.priority, ours.interval_cs)
    assert layer.ipcount == len(ours.addresses)
    assert [ipaddress.ip_address(a) for a in layer.addrlist] == list(ours.addresses)
    assert layer.chksum == int.from_bytes(message[6:8], "big")


def test_v3_scapy_builds_the_same_bytes(v3: dict[str, Any]) -> None:
    src, dst, _, message = split(bytes.fromhex(v3["hex"]))
    ours = decode(message, src, dst)
    vrrp = VRRPv3(
        vrid=ours.vrid,
        priority=ours.priority,
        ipcount=len(ours.addresses),
        adv=ours.interval_cs,
        addrlist=[str(a) for a in ours.addresses],
    )
    if src.version == 4:
        built = bytes(IP(src=str(src), dst=str(dst), ttl=255) / vrrp)[20:]
    else:
        built = bytes(IPv6(src=str(src), dst=str(dst), hlim=255) / vrrp)[40:]
    assert built == message  # scapy's checksum over the pseudo-header agrees with keepalived's
    assert encode(ours, src, dst) == built


def test_v3_passes_the_receive_checks_of_a_peer_configured_alike(v3: dict[str, Any]) -> None:
    raw = bytes.fromhex(v3["hex"])
    src, dst, ttl, message = split(raw)
    cfg = v3["config"]
    unicast = not dst.is_multicast
    expect = {
        cfg["virtual_router_id"]: Expect(
            version=3,
            vrid=cfg["virtual_router_id"],
            interval_cs=round(cfg["advert_int"] * 100),
            addresses=frozenset(vips(cfg)),
            peers=frozenset({src}) if unicast else None,
        )
    }
    if src.version == 4:
        got = check_ipv4(raw, expect)
    else:
        # keepalived's IPv6 unicast hop limit is 64: accepted, as keepalived accepts it.
        got = check_ipv6(message, src, dst, ttl, expect)
    assert (got.src, got.dst, got.advert.priority) == (src, dst, v3["priority"])


def test_v3_priority0_differs_only_in_priority_checksum_and_ip_id() -> None:
    for zero in (p for p in V3 if p["priority"] == 0):
        live = V3_BY_NAME[zero["name"].removesuffix("-priority0")]
        a, b = bytes.fromhex(live["hex"]), bytes.fromhex(zero["hex"])
        sa, da, _, ma = split(a)
        sb, db, _, mb = split(b)
        assert (sa, da) == (sb, db) and len(ma) == len(mb)
        assert ma[:2] + ma[3:6] + ma[8:] == mb[:2] + mb[3:6] + mb[8:]
        assert mb[2] == 0 and ma[2] == live["config"]["priority"]


# -- VRRPv2 (pass, and the VRRP message inside AH) ---------------------------------------------


@pytest.mark.parametrize("p", V2, ids=[p["name"] for p in V2])
def test_v2_decodes_reencodes_and_matches_scapy(p: dict[str, Any]) -> None:
    raw = bytes.fromhex(p["hex"])
    src, dst, ttl, message = split(raw)
    assert ttl == 255
    advert = decode(message, src, dst)
    auth = AuthType[p["auth_type"]]
    assert (advert.version, advert.priority, advert.interval_cs) == (2, p["priority"], 100)
    assert advert.vrid == (52 if p["unicast"] else 51)
    assert advert.addresses == (ipaddress.IPv4Address("192.0.2.101" if p["unicast"] else VIP),)
    assert advert.auth_type is auth
    # PASS carries the password (first 8 bytes, zero padded); AH 8 zero bytes.
    expected_data = password_field(p["auth_pass"]) if auth is AuthType.PASS else bytes(8)
    assert advert.auth_data == expected_data
    assert encode(advert, src, dst) == message

    vrrp = VRRP(
        vrid=advert.vrid,
        priority=advert.priority,
        ipcount=1,
        authtype=int(auth),
        adv=1,
        addrlist=[str(a) for a in advert.addresses],
        auth1=int.from_bytes(advert.auth_data[:4], "big"),
        auth2=int.from_bytes(advert.auth_data[4:], "big"),
    )
    assert bytes(vrrp) == message
    if auth is AuthType.PASS:
        parsed = IP(raw)[VRRP]
        assert (parsed.vrid, parsed.priority, parsed.authtype, parsed.adv) == (51, 100, 1, 1)
        assert parsed.chksum == int.from_bytes(message[6:8], "big")
