"""VRRPv2 authentication as keepalived 2.2.7 does it on the wire: `pass` and IPsec AH.

Pure: bytes in, bytes or a verdict out. The only state, the AH sequence counter, lives in
`AhSequence`, one per VRRP instance, owned by the caller.

`pass` is the 8-byte zero-padded password in the VRRPv2 authentication data (`password_field`;
`packet.encode` puts it there and `receive.check_ipv4` compares it).

AH (RFC 2402 framing, keepalived's own keying), checked against keepalived 2.2.7 in the lab
(tests/lab/test_ah_keepalived.py) and against packets captured from it (tests/data/):

    IPv4 header  tos 0xc0, id = a per-instance counter that starts at 1 and skips 0, frag 0,
                 TTL 255, protocol 51
    AH (24 B)    next header 112, payload length 4, reserved 0, SPI = the IPv4 source address,
                 sequence number, 12-byte ICV
    VRRPv2       auth type 2 (AH), 8 zero bytes of authentication data

    ICV = HMAC-MD5(key = the 8-byte password field,
                   IP header with tos, frag_off and checksum zeroed (TTL also zeroed for unicast)
                   + AH with the ICV zeroed + VRRP message)[:12]

The IP id is inside the ICV, so it must not be 0: with IP_HDRINCL Linux fills a zero id on send,
after the ICV was computed (keepalived counts its id from 1 and skips 0 on wrap). The checksum is
left out (the kernel recomputes it on send) and tot_len is the real length either way.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from director.vrrp.packet import AUTH_DATA_LEN, PROTO_VRRP, AuthType, checksum

PROTO_AH = 51
AH_LEN = 24
AH_PAYLOAD_LEN = AH_LEN // 4 - 2  # RFC 2402: length in 32-bit words, minus 2
ICV_LEN = 12  # HMAC-MD5-96
IPV4_HEADER_LEN = 20
TOS_NETWORK_CONTROL = 0xC0  # what keepalived sends (outside the ICV)
TTL = 255
# keepalived stops counting here and flags the counter as cycled (vrrp_update_pkt)
SEQ_LAST = 0xFFFFFFFE

_IP = struct.Struct("!BBHHHBBH4s4s")
_AH_HEAD = struct.Struct("!BBHII")  # next header, payload length, reserved, SPI, sequence
_ICV_AT = _AH_HEAD.size  # offset of the ICV inside the AH header


def password_field(password: str) -> bytes:
    """The 8-byte VRRPv2 authentication data (`pass`) and AH key, as keepalived builds it.

    UTF-8, zero padded; longer passwords are cut to 8 bytes (keepalived logs "Truncating
    auth_pass to 8 characters" and uses the first 8)."""
    return password.encode()[:AUTH_DATA_LEN].ljust(AUTH_DATA_LEN, b"\0")


def _check_key(key: bytes) -> None:
    if len(key) != AUTH_DATA_LEN:
        raise ValueError(f"the AH key is the 8-byte password field, got {len(key)} bytes")


def _hmac_md5_96(key: bytes, data: bytes) -> bytes:
    mac = crypto_hmac.HMAC(key, hashes.MD5())
    mac.update(data)
    return mac.finalize()[:ICV_LEN]


def icv(packet: bytes, key: bytes, *, unicast: bool) -> bytes:
    """The 12-byte ICV of a whole IPv4 + AH + VRRP packet (20-byte IP header), as keepalived
    computes it: tos, frag_off and checksum zeroed, TTL zeroed too when unicast, and the AH
    ICV field zeroed. Every other byte (id, tot_len, addresses, SPI, sequence) is covered."""
    _check_key(key)
    if len(packet) < IPV4_HEADER_LEN + AH_LEN:
        raise ValueError("shorter than an IPv4 header and an AH header")
    data = bytearray(packet)
    data[1] = 0  # tos
    data[6:8] = b"\0\0"  # flags + fragment offset
    data[10:12] = b"\0\0"  # header checksum
    if unicast:
        data[8] = 0  # TTL
    at = IPV4_HEADER_LEN + _ICV_AT
    data[at : at + ICV_LEN] = bytes(ICV_LEN)
    return _hmac_md5_96(key, bytes(data))


def next_ip_id(ip_id: int) -> int:
    """The IP id after `ip_id`, never 0 (keepalived: "kernel will fill in ID if left to 0")."""
    return ip_id % 0xFFFF + 1


def build_ah_packet(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    vrrp: bytes,
    key: bytes,
    seq: int,
    ip_id: int,
    *,
    ttl: int = TTL,
) -> bytes:
    """The complete IPv4 + AH + VRRPv2 packet for an IPPROTO_RAW / IP_HDRINCL socket.

    `vrrp` is `packet.encode(...)` of a v2 advert with auth type AH and 8 zero bytes of auth data.
    Unicast (TTL outside the ICV) or multicast follows from `dst`, as in keepalived, where a
    unicast peer list is what both zeroes the TTL and sets a unicast destination.
    The IP checksum is filled in (the kernel recomputes it anyway)."""
    _check_key(key)
    if not 1 <= ip_id <= 0xFFFF:
        raise ValueError("the IP id is inside the ICV: 1-65535 (the kernel rewrites 0)")
    if not 0 <= seq <= 0xFFFFFFFF:
        raise ValueError(f"AH sequence number out of range: {seq}")
    if len(vrrp) < 8 or vrrp[0] >> 4 != 2 or vrrp[4] != AuthType.AH:
        raise ValueError("AH carries a VRRPv2 message with authentication type 2 (AH)")
    total = IPV4_HEADER_LEN + AH_LEN + len(vrrp)
    header = _IP.pack(
        0x45, TOS_NETWORK_CONTROL, total, ip_id, 0, ttl, PROTO_AH, 0, src.packed, dst.packed
    )
    ah = _AH_HEAD.pack(PROTO_VRRP, AH_PAYLOAD_LEN, 0, int(src), seq) + bytes(ICV_LEN)
    unsigned = header + ah + vrrp
    mac = icv(unsigned, key, unicast=not dst.is_multicast)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + ah[:_ICV_AT] + mac + vrrp


def verify_ah(packet: bytes, ihl: int, key: bytes, unicast: bool) -> int | None:
    """The AH sequence number of a received IPv4 + AH + VRRP packet if its ICV is valid, else None.

    `unicast` is the receiving instance's configuration (keepalived zeroes the TTL in the ICV
    when it has unicast peers). Also refused: IP options (neither keepalived nor we send them,
    and their mutable-field rules are not implemented), an AH that does not carry VRRP in 24
    bytes, and an SPI other than the source address (keepalived's rule). The sequence number is
    only reported: replay is `AhSequence.accept`'s business."""
    _check_key(key)
    if ihl != IPV4_HEADER_LEN or len(packet) < ihl + AH_LEN:
        return None
    next_header, payload_len, _, spi, seq = _AH_HEAD.unpack_from(packet, ihl)
    if next_header != PROTO_VRRP or payload_len != AH_PAYLOAD_LEN:
        return None
    if spi != int.from_bytes(packet[12:16], "big"):
        return None
    received = packet[ihl + _ICV_AT : ihl + _ICV_AT + ICV_LEN]
    if not hmac.compare_digest(received, icv(packet, key, unicast=unicast)):
        return None
    return int(seq)


@dataclass(slots=True)
class AhSequence:
    """keepalived's per-instance AH counter (`ipsecah_counter`): ONE number for both directions.

    - Sending: each advert takes `next_send()`; the first is 1.
    - Receiving: an advert whose ICV is valid is accepted only if its sequence number is
      strictly greater than the counter, which then takes that number (keepalived: "sequence
      number %u already processed. Packet dropped."). Per instance, not per source.
    - So a backup tracks the master's numbers, and when it becomes master it goes on from the
      last number it saw: the counter is not reset. It restarts at 0 on becoming master only
      when it had cycled (reached 0xFFFFFFFE, 136 years at 1 s adverts), and an accepted advert
      clears that flag.
    - A master that receives a valid lower-priority advert jumps to its number + 1 ("Syncing
      seq_num - Increment seq"), so its own next advert is above the newcomer's.
    """

    counter: int = 0
    cycled: bool = False

    def next_send(self) -> int:
        if self.counter >= SEQ_LAST:
            self.cycled = True
        else:
            self.counter += 1
        return self.counter

    def accept(self, seq: int) -> bool:
        """Anti-replay for an advert whose ICV verified: True to obey it, False to drop it."""
        if seq <= self.counter:
            return False
        self.counter = seq
        self.cycled = False
        return True

    def lower_priority_seen(self, seq: int) -> None:
        """As master, after accepting a lower-priority advert carrying `seq`."""
        self.counter = min(seq + 1, 0xFFFFFFFF)
        self.cycled = False

    def become_master(self) -> None:
        if self.cycled:
            self.counter = 0
            self.cycled = False


@dataclass(slots=True)
class AhCheck:
    """`receive.Expect.ah_check` for one instance: ICV (`verify_ah`), then anti-replay.

    Counts why it refused, so `director status` can tell a wrong key from a replay."""

    key: bytes
    unicast: bool
    sequence: AhSequence
    icv_failures: int = 0
    replays: int = 0

    def __call__(self, packet: bytes, ihl: int) -> bool:
        seq = verify_ah(packet, ihl, self.key, self.unicast)
        if seq is None:
            self.icv_failures += 1
            return False
        if not self.sequence.accept(seq):
            self.replays += 1
            return False
        return True
