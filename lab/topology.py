"""Declarative description of the namespace lab: segments, nodes, addresses, routes.

Pure data, no kernel access: `lab.core` turns a `Topology` into namespaces. Only documentation
address ranges are used (RFC 5737, RFC 3849); they exist only inside the lab's namespaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Literal

Family = Literal[4, 6]
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Linux limit for interface names (IFNAMSIZ - 1).
IFNAMSIZ = 15
# Prefixes stay short and plain so every namespace name is readable and greppable.
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")
BRIDGE = "br0"

# --- Address plan --------------------------------------------------------------------------

LAN4 = IPv4Network("192.0.2.0/24")
LAN6 = IPv6Network("2001:db8:0:1::/64")
BACKEND4 = IPv4Network("198.51.100.0/24")
BACKEND6 = IPv6Network("2001:db8:0:2::/64")
REMOTE4 = IPv4Network("203.0.113.0/24")
REMOTE6 = IPv6Network("2001:db8:0:3::/64")

# The service VIP on the lan; later tests put it on the MASTER director. Never assigned by the lab.
VIP4 = IPv4Address("192.0.2.100")
VIP6 = IPv6Address("2001:db8:0:1::100")
# The NAT real server's gateway on the backend: a VRRP VIP of the directors, not assigned either.
BACKEND_GW4 = IPv4Address("198.51.100.1")
BACKEND_GW6 = IPv6Address("2001:db8:0:2::1")
# The router's lan address: next hop to the remote subnet (TUN real server).
ROUTER_LAN4 = IPv4Address("192.0.2.1")
ROUTER_LAN6 = IPv6Address("2001:db8:0:1::1")
ROUTER_REMOTE4 = IPv4Address("203.0.113.1")
ROUTER_REMOTE6 = IPv6Address("2001:db8:0:3::1")

# Host number of each node on each segment: .21 in v4 is ::21 in v6.
LAN_HOSTS = {"router": 1, "dir1": 2, "dir2": 3, "client": 10, "rs1": 21, "rs2": 22, "rs3": 23}
BACKEND_HOSTS = {"dir1": 2, "dir2": 3, "rsnat": 21}
REMOTE_HOSTS = {"router": 1, "rstun": 21}

DEFAULT_PREFIX = "dlab"


@dataclass(frozen=True)
class Segment:
    """An L2 segment: a bridge `br0` inside its own namespace `{prefix}-sw-{name}`."""

    name: str
    subnet4: IPv4Network
    subnet6: IPv6Network

    def subnet(self, family: Family) -> IPNetwork:
        return self.subnet4 if family == 4 else self.subnet6


@dataclass(frozen=True)
class Interface:
    """A node's veth end on a segment, with one v4 and one v6 address (with prefix length)."""

    segment: str
    ifname: str
    addr4: IPv4Interface
    addr6: IPv6Interface

    def addr(self, family: Family) -> IPv4Interface | IPv6Interface:
        return self.addr4 if family == 4 else self.addr6


@dataclass(frozen=True)
class Route:
    """A static route; `dst` 0.0.0.0/0 or ::/0 is a default route. `via` must be on-link."""

    dst: IPNetwork
    via: IPAddress

    @property
    def family(self) -> Family:
        return 4 if self.dst.version == 4 else 6


@dataclass(frozen=True)
class Node:
    """A host: one namespace `{prefix}-{name}`, its interfaces, static routes and sysctls."""

    name: str
    interfaces: tuple[Interface, ...]
    routes: tuple[Route, ...] = ()
    # Dotted sysctl keys (as `sysctl -w` takes them), applied before any interface exists.
    sysctls: tuple[tuple[str, str], ...] = ()

    def interface(self, segment: str) -> Interface:
        for iface in self.interfaces:
            if iface.segment == segment:
                return iface
        raise KeyError(f"node {self.name!r} has no interface on segment {segment!r}")

    def by_ifname(self, ifname: str) -> Interface:
        for iface in self.interfaces:
            if iface.ifname == ifname:
                return iface
        raise KeyError(f"node {self.name!r} has no interface {ifname!r}")


@dataclass(frozen=True)
class Topology:
    """A whole lab. Construction validates it, so an invalid topology never reaches the kernel."""

    prefix: str
    segments: tuple[Segment, ...]
    nodes: tuple[Node, ...]
    _segments: dict[str, Segment] = field(init=False, repr=False, compare=False)
    _nodes: dict[str, Node] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_segments", {s.name: s for s in self.segments})
        object.__setattr__(self, "_nodes", {n.name: n for n in self.nodes})
        problems = self.problems()
        if problems:
            raise ValueError("invalid topology: " + "; ".join(problems))

    # -- names ------------------------------------------------------------------------------

    def ns_name(self, node: str) -> str:
        """Namespace of a node (`dir1` -> `dlab-dir1`)."""
        self.node(node)
        return f"{self.prefix}-{node}"

    def switch_ns(self, segment: str) -> str:
        """Namespace holding a segment's bridge (`lan` -> `dlab-sw-lan`)."""
        self.segment(segment)
        return f"{self.prefix}-sw-{segment}"

    @staticmethod
    def port_name(node: str, segment: str) -> str:
        """Switch-side veth name inside the segment's namespace."""
        return f"{node}-{segment}"

    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the lab owns: switches first, then nodes."""
        return tuple(
            [self.switch_ns(s.name) for s in self.segments]
            + [self.ns_name(n.name) for n in self.nodes]
        )

    # -- lookups ----------------------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"no node {name!r} (nodes: {', '.join(self._nodes)})") from None

    def segment(self, name: str) -> Segment:
        try:
            return self._segments[name]
        except KeyError:
            raise KeyError(f"no segment {name!r} (segments: {', '.join(self._segments)})") from None

    def members(self, segment: str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if any(i.segment == segment for i in n.interfaces))

    def addr(self, node: str, segment: str, family: Family = 4) -> IPAddress:
        return self.node(node).interface(segment).addr(family).ip

    # -- validation -------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Everything wrong with this topology (empty when valid)."""
        out: list[str] = []
        if not PREFIX_RE.match(self.prefix):
            out.append(f"prefix {self.prefix!r} must match {PREFIX_RE.pattern}")
        seg_names = [s.name for s in self.segments]
        node_names = [n.name for n in self.nodes]
        for kind, names in (("segment", seg_names), ("node", node_names)):
            dups = sorted({x for x in names if names.count(x) > 1})
            if dups:
                out.append(f"duplicate {kind} names: {dups}")
            out += [
                f"{kind} name {x!r} must match {NAME_RE.pattern}"
                for x in names
                if not NAME_RE.match(x)
            ]
        for seg in self.segments:
            if seg.subnet4.version != 4 or seg.subnet6.version != 6:
                out.append(f"segment {seg.name}: subnet families are wrong")
        used: dict[tuple[str, IPAddress], str] = {}
        for node in self.nodes:
            out += self._node_problems(node, used)
        return out

    def _node_problems(self, node: Node, used: dict[tuple[str, IPAddress], str]) -> list[str]:
        out: list[str] = []
        ifnames = [i.ifname for i in node.interfaces]
        if len(set(ifnames)) != len(ifnames):
            out.append(f"node {node.name}: duplicate interface names {ifnames}")
        segs = [i.segment for i in node.interfaces]
        if len(set(segs)) != len(segs):
            out.append(f"node {node.name}: more than one interface on one segment {segs}")
        for iface in node.interfaces:
            where = f"node {node.name} {iface.ifname}"
            if len(iface.ifname) > IFNAMSIZ or iface.ifname in ("", "lo"):
                out.append(f"{where}: bad interface name")
            port = self.port_name(node.name, iface.segment)
            if len(port) > IFNAMSIZ:
                out.append(f"{where}: switch port name {port!r} is longer than {IFNAMSIZ}")
            seg = self._segments.get(iface.segment)
            if seg is None:
                out.append(f"{where}: unknown segment {iface.segment!r}")
                continue
            for fam in (4, 6):
                a = iface.addr4 if fam == 4 else iface.addr6
                net = seg.subnet(fam)
                if a.network != net:
                    out.append(f"{where}: {a} is not in {seg.name} subnet {net}")
                if a.ip in (net.network_address, net.broadcast_address):
                    out.append(f"{where}: {a} is the subnet's network or broadcast address")
                key = (seg.name, a.ip)
                if key in used:
                    out.append(f"{where}: {a.ip} already used by {used[key]}")
                used[key] = node.name
        for route in node.routes:
            if route.dst.version != route.via.version:
                out.append(f"node {node.name}: route {route.dst} via {route.via}: family mismatch")
            elif not any(_on_link(route.via, i) for i in node.interfaces):
                out.append(f"node {node.name}: gateway {route.via} is not on-link")
        return out


# --- The standard lab --------------------------------------------------------------------


def _iface(segment: Segment, ifname: str, host: int) -> Interface:
    return Interface(
        segment=segment.name,
        ifname=ifname,
        addr4=IPv4Interface(f"{segment.subnet4[host]}/{segment.subnet4.prefixlen}"),
        # Host 21 is ::21 (not ::15): the v6 address reads like the v4 one.
        addr6=IPv6Interface(f"{segment.subnet6[int(str(host), 16)]}/{segment.subnet6.prefixlen}"),
    )


def _route(dst: str, via: IPAddress | str) -> Route:
    net = ip_network(dst)
    gw = ip_address(via)
    return Route(dst=net, via=gw)


def default_topology(prefix: str = DEFAULT_PREFIX) -> Topology:
    """client, two directors, three DR real servers on `lan`; the directors and a NAT real
    server on `backend`; a router leading to `remote`, where the TUN real server lives."""
    lan = Segment("lan", LAN4, LAN6)
    backend = Segment("backend", BACKEND4, BACKEND6)
    remote = Segment("remote", REMOTE4, REMOTE6)
    to_remote = (_route(str(REMOTE4), ROUTER_LAN4), _route(str(REMOTE6), ROUTER_LAN6))

    nodes: list[Node] = []
    for name in ("client", "rs1", "rs2", "rs3"):
        nodes.append(Node(name, (_iface(lan, "eth0", LAN_HOSTS[name]),), to_remote))
    for name in ("dir1", "dir2"):
        ifaces = (
            _iface(lan, "eth0", LAN_HOSTS[name]),
            _iface(backend, "eth1", BACKEND_HOSTS[name]),
        )
        nodes.append(Node(name, ifaces, to_remote))
    # Its gateway is the directors' backend VIP, unassigned until VRRP runs: the route is valid
    # anyway because the gateway is inside eth0's prefix (on-link), so no `onlink` flag is needed.
    nodes.append(
        Node(
            "rsnat",
            (_iface(backend, "eth0", BACKEND_HOSTS["rsnat"]),),
            (_route("0.0.0.0/0", BACKEND_GW4), _route("::/0", BACKEND_GW6)),
        )
    )
    nodes.append(
        Node(
            "router",
            (
                _iface(lan, "eth0", LAN_HOSTS["router"]),
                _iface(remote, "eth1", REMOTE_HOSTS["router"]),
            ),
            sysctls=(("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")),
        )
    )
    nodes.append(
        Node(
            "rstun",
            (_iface(remote, "eth0", REMOTE_HOSTS["rstun"]),),
            (_route("0.0.0.0/0", ROUTER_REMOTE4), _route("::/0", ROUTER_REMOTE6)),
        )
    )
    return Topology(prefix=prefix, segments=(lan, backend, remote), nodes=tuple(nodes))


def _on_link(gw: IPAddress, iface: Interface) -> bool:
    if isinstance(gw, IPv4Address):
        return gw in iface.addr4.network
    return gw in iface.addr6.network
