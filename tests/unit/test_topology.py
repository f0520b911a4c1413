"""The lab's declarative topology: pure checks, no root, no kernel."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Interface, IPv6Interface, ip_network

import pytest

from lab import topology as t
from lab.topology import Interface, Node, Route, Segment, Topology, default_topology

DOC_RANGES = [ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
DOC_RANGE6 = ip_network("2001:db8::/32")
NODES = {"client", "dir1", "dir2", "rs1", "rs2", "rs3", "rsnat", "router", "rstun"}


@pytest.fixture(scope="module")
def topo() -> Topology:
    return default_topology()


def test_default_has_the_nodes_and_segments(topo: Topology) -> None:
    assert {n.name for n in topo.nodes} == NODES
    assert [s.name for s in topo.segments] == ["lan", "backend", "remote"]
    assert {n.name for n in topo.members("lan")} == {
        "client",
        "dir1",
        "dir2",
        "rs1",
        "rs2",
        "rs3",
        "router",
    }
    assert {n.name for n in topo.members("backend")} == {"dir1", "dir2", "rsnat"}
    assert {n.name for n in topo.members("remote")} == {"router", "rstun"}


def test_namespace_names_carry_the_prefix_and_are_unique(topo: Topology) -> None:
    names = topo.namespaces()
    assert len(names) == len(set(names)) == len(NODES) + 3
    assert all(n.startswith("dlab-") for n in names)
    assert topo.ns_name("dir1") == "dlab-dir1"
    assert topo.switch_ns("lan") == "dlab-sw-lan"
    assert all(n.startswith("xy-") for n in default_topology("xy").namespaces())


@pytest.mark.parametrize("prefix", ["dlab", "a123456789"])
def test_interface_names_fit_ifnamsiz(prefix: str) -> None:
    topo = default_topology(prefix)
    for node in topo.nodes:
        for iface in node.interfaces:
            assert 0 < len(iface.ifname) <= 15
            assert len(topo.port_name(node.name, iface.segment)) <= 15
    ports = [topo.port_name(n.name, i.segment) for n in topo.nodes for i in n.interfaces]
    assert len(ports) == len(set(ports))


def test_addresses_are_in_their_subnet_unique_and_documentation_only(topo: Topology) -> None:
    seen: set[str] = set()
    for node in topo.nodes:
        for iface in node.interfaces:
            seg = topo.segment(iface.segment)
            assert iface.addr4.network == seg.subnet4
            assert iface.addr6.network == seg.subnet6
            assert any(iface.addr4.ip in r for r in DOC_RANGES)
            assert iface.addr6.ip in DOC_RANGE6
            for a in (str(iface.addr4.ip), str(iface.addr6.ip)):
                assert a not in seen
                seen.add(a)
            # v4 .21 is v6 ::21
            assert str(iface.addr6.ip).endswith("::" + str(iface.addr4.ip).split(".")[-1])


def test_address_plan(topo: Topology) -> None:
    assert str(topo.addr("client", "lan")) == "192.0.2.10"
    assert str(topo.addr("dir1", "lan")) == "192.0.2.2"
    assert str(topo.addr("dir2", "backend", 6)) == "2001:db8:0:2::3"
    assert str(topo.addr("rs3", "lan", 6)) == "2001:db8:0:1::23"
    assert str(topo.addr("rsnat", "backend")) == "198.51.100.21"
    assert str(topo.addr("rstun", "remote")) == "203.0.113.21"
    assert topo.addr("router", "lan") == t.ROUTER_LAN4
    assert topo.addr("router", "lan", 6) == t.ROUTER_LAN6
    assert topo.addr("router", "remote") == t.ROUTER_REMOTE4
    assert topo.node("dir1").interface("lan").ifname == "eth0"
    assert topo.node("dir1").interface("backend").ifname == "eth1"


def test_vips_and_the_backend_gateway_are_not_assigned(topo: Topology) -> None:
    assigned = {i.addr4.ip for n in topo.nodes for i in n.interfaces} | {
        i.addr6.ip for n in topo.nodes for i in n.interfaces
    }
    for vip in (t.VIP4, t.VIP6, t.BACKEND_GW4, t.BACKEND_GW6):
        assert vip not in assigned
    assert t.VIP4 in t.LAN4 and t.VIP6 in t.LAN6
    assert t.BACKEND_GW4 in t.BACKEND4 and t.BACKEND_GW6 in t.BACKEND6


def test_routes(topo: Topology) -> None:
    for name in ("client", "dir1", "dir2", "rs1", "rs2", "rs3"):
        routes = set(topo.node(name).routes)
        assert Route(t.REMOTE4, t.ROUTER_LAN4) in routes
        assert Route(t.REMOTE6, t.ROUTER_LAN6) in routes
    assert set(topo.node("rstun").routes) == {
        Route(ip_network("0.0.0.0/0"), t.ROUTER_REMOTE4),
        Route(ip_network("::/0"), t.ROUTER_REMOTE6),
    }
    assert set(topo.node("rsnat").routes) == {
        Route(ip_network("0.0.0.0/0"), t.BACKEND_GW4),
        Route(ip_network("::/0"), t.BACKEND_GW6),
    }
    assert topo.node("router").routes == ()


def test_only_the_router_forwards(topo: Topology) -> None:
    assert dict(topo.node("router").sysctls) == {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
    }
    assert all(not n.sysctls for n in topo.nodes if n.name != "router")


def test_topology_is_frozen(topo: Topology) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.prefix = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        topo.nodes[0].name = "other"  # type: ignore[misc]


def test_unknown_names_raise(topo: Topology) -> None:
    with pytest.raises(KeyError, match="no node 'nope'"):
        topo.node("nope")
    with pytest.raises(KeyError, match="no segment"):
        topo.switch_ns("nope")
    with pytest.raises(KeyError):
        topo.node("client").interface("backend")


# --- validation: a broken topology cannot be built ------------------------------------------

LAN = Segment("lan", t.LAN4, t.LAN6)


def _iface(addr4: str, addr6: str, ifname: str = "eth0", segment: str = "lan") -> Interface:
    return Interface(segment, ifname, IPv4Interface(addr4), IPv6Interface(addr6))


GOOD = _iface("192.0.2.5/24", "2001:db8:0:1::5/64")


def test_minimal_custom_topology_is_valid() -> None:
    topo = Topology("x", (LAN,), (Node("a", (GOOD,)),))
    assert topo.namespaces() == ("x-sw-lan", "x-a")


@pytest.mark.parametrize(
    ("prefix", "segments", "nodes", "message"),
    [
        ("Bad-Prefix", (LAN,), (Node("a", (GOOD,)),), "prefix"),
        ("x" * 11, (LAN,), (Node("a", (GOOD,)),), "prefix"),
        ("x", (LAN,), (Node("a", (GOOD,)), Node("a", ())), "duplicate node"),
        ("x", (LAN, LAN), (), "duplicate segment"),
        ("x", (LAN,), (Node("a", (_iface("192.0.3.5/24", "2001:db8:0:1::5/64"),)),), "not in"),
        ("x", (LAN,), (Node("a", (_iface("192.0.2.5/25", "2001:db8:0:1::5/64"),)),), "not in"),
        ("x", (LAN,), (Node("a", (_iface("192.0.2.5/24", "2001:db8:0:9::5/64"),)),), "not in"),
        ("x", (LAN,), (Node("a", (_iface("192.0.2.0/24", "2001:db8:0:1::5/64"),)),), "network"),
        ("x", (LAN,), (Node("a", (GOOD,)), Node("b", (GOOD,))), "already used"),
        (
            "x",
            (LAN,),
            (Node("a", (_iface("192.0.2.5/24", "2001:db8:0:1::5/64", "x" * 16),)),),
            "bad",
        ),
        ("x", (LAN,), (Node("averyverylongname", (GOOD,)),), "longer than 15"),
        (
            "x",
            (LAN,),
            (Node("a", (_iface("192.0.2.5/24", "2001:db8:0:1::5/64", segment="wan"),)),),
            "unknown",
        ),
        (
            "x",
            (LAN,),
            (Node("a", (GOOD,), (Route(ip_network("0.0.0.0/0"), t.ROUTER_REMOTE4),)),),
            "not on-link",
        ),
        (
            "x",
            (LAN,),
            (Node("a", (GOOD, _iface("192.0.2.6/24", "2001:db8:0:1::6/64", "eth1"))),),
            "more than one interface",
        ),
    ],
)
def test_invalid_topologies_are_rejected(
    prefix: str, segments: tuple[Segment, ...], nodes: tuple[Node, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Topology(prefix, segments, nodes)
