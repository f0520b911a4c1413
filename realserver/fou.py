"""Foo-over-UDP receive ports (what `ip fou add port N gue` does), over generic netlink.

pyroute2 has no FOU client, so this is a small one on its generic netlink socket. The kernel's
uapi (include/uapi/linux/fou.h) defines the family "fou", version 1, and the attributes below.
The port travels in network byte order, as iproute2 sends it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

FOU_GENL_NAME = "fou"
FOU_GENL_VERSION = 1
FOU_CMD_ADD, FOU_CMD_DEL, FOU_CMD_GET = 1, 2, 3
FOU_ENCAP_DIRECT, FOU_ENCAP_GUE = 1, 2
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


class FouMessage(genlmsg):  # type: ignore[misc]  # pyroute2 is untyped
    prefix = "FOU_ATTR_"
    nla_map = (
        ("FOU_ATTR_UNSPEC", "none"),
        ("FOU_ATTR_PORT", "be16"),
        ("FOU_ATTR_AF", "uint8"),
        ("FOU_ATTR_IPPROTO", "uint8"),
        ("FOU_ATTR_TYPE", "uint8"),
        ("FOU_ATTR_REMCSUM_NOPARTIAL", "flag"),
        ("FOU_ATTR_LOCAL_V4", "ip4addr"),
        ("FOU_ATTR_LOCAL_V6", "ip6addr"),
        ("FOU_ATTR_PEER_V4", "ip4addr"),
        ("FOU_ATTR_PEER_V6", "ip6addr"),
        ("FOU_ATTR_PEER_PORT", "be16"),
        ("FOU_ATTR_IFINDEX", "int32"),
    )


class FouUnavailable(RuntimeError):
    """The kernel has no "fou" generic netlink family (module fou not loaded or missing)."""


@contextmanager
def fou_socket() -> Iterator[Any]:
    sock = GenericNetlinkSocket()
    try:
        try:
            sock.bind(FOU_GENL_NAME, FouMessage)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                raise FouUnavailable("the kernel has no fou support (module fou)") from None
            raise
        yield sock
    finally:
        sock.close()


def _request(sock: Any, cmd: int, flags: int, attrs: list[tuple[str, Any]]) -> list[Any]:
    msg = FouMessage()
    msg["cmd"] = cmd
    msg["version"] = FOU_GENL_VERSION
    msg["attrs"] = attrs
    return list(sock.nlm_request(msg, msg_type=sock.prid, msg_flags=flags))


def list_ports(sock: Any) -> frozenset[tuple[int, int]]:
    """(port, family 4|6) of every fou/gue receive port in this network namespace."""
    out: set[tuple[int, int]] = set()
    for msg in _request(sock, FOU_CMD_GET, NLM_F_REQUEST | NLM_F_DUMP, []):
        af = msg.get_attr("FOU_ATTR_AF")
        port = msg.get_attr("FOU_ATTR_PORT")
        family = 6 if af == socket.AF_INET6 else 4
        if port is not None:
            out.add((int(port), family))
    return frozenset(out)


def add_gue_port(sock: Any, port: int, family: int) -> None:
    attrs = [
        ("FOU_ATTR_PORT", port),
        ("FOU_ATTR_AF", FAMILIES[family]),
        ("FOU_ATTR_TYPE", FOU_ENCAP_GUE),
    ]
    _request(sock, FOU_CMD_ADD, NLM_F_REQUEST | NLM_F_ACK, attrs)


def del_port(sock: Any, port: int, family: int) -> None:
    attrs = [("FOU_ATTR_PORT", port), ("FOU_ATTR_AF", FAMILIES[family])]
    _request(sock, FOU_CMD_DEL, NLM_F_REQUEST | NLM_F_ACK, attrs)
