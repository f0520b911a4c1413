"""The fou generic-netlink messages realserver sends, byte for byte as iproute2 sends them.

`ip fou add port 5555 gue` puts FOU_ATTR_PORT (be16), FOU_ATTR_AF (u8) and FOU_ATTR_TYPE (u8,
2 = gue) in a generic netlink message of version 1 (include/uapi/linux/fou.h). The kernel side
is exercised in tests/vm (gue traffic decapsulated through the port).
"""

from __future__ import annotations

import socket
import struct

from realserver.fou import FOU_CMD_ADD, FOU_ENCAP_GUE, FouMessage


def attrs(data: bytes) -> dict[int, bytes]:
    """Netlink attributes after the 16-byte header and the 4-byte genl header."""
    out: dict[int, bytes] = {}
    offset = 20
    while offset < len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        out[kind] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def test_add_gue_port_encodes_like_iproute2() -> None:
    msg = FouMessage()
    msg["cmd"] = FOU_CMD_ADD
    msg["version"] = 1
    msg["attrs"] = [
        ("FOU_ATTR_PORT", 5555),
        ("FOU_ATTR_AF", socket.AF_INET6),
        ("FOU_ATTR_TYPE", FOU_ENCAP_GUE),
    ]
    msg.encode()
    data = bytes(msg.data)
    assert data[16:18] == bytes([FOU_CMD_ADD, 1])  # genl cmd and version
    assert attrs(data) == {
        1: struct.pack("!H", 5555),  # network byte order, as `ip fou` sends it
        2: bytes([socket.AF_INET6]),
        4: bytes([2]),
    }


def test_dump_reply_decodes_port_and_family() -> None:
    msg = FouMessage()
    msg["cmd"] = 3
    msg["version"] = 1
    msg["attrs"] = [("FOU_ATTR_PORT", 6080), ("FOU_ATTR_AF", socket.AF_INET)]
    msg.encode()
    back = FouMessage(bytes(msg.data))
    back.decode()
    assert back.get_attr("FOU_ATTR_PORT") == 6080
    assert back.get_attr("FOU_ATTR_AF") == socket.AF_INET
