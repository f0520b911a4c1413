"""The standard lab on the host kernel: connectivity, isolation, switch and node settings.

These tests only read, so they share one lab per module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.core import Lab
from lab.host import ip_netns_list, root_link_names
from lab.topology import Family

pytestmark = pytest.mark.lab


def test_every_namespace_exists_and_status_is_up(lab_module: Lab) -> None:
    assert set(lab_module.namespaces()) <= ip_netns_list()
    assert lab_module.prefix != "dlab"  # the fixture never touches a hand-made lab
    st = lab_module.status()
    assert st.up, st
    assert Path(f"/run/{lab_module.prefix}-lab/state.json").exists()


def test_no_lab_interface_in_the_root_namespace(lab_module: Lab) -> None:
    topo = lab_module.topology
    lab_names = {"br0"} | {
        topo.port_name(n.name, i.segment) for n in topo.nodes for i in n.interfaces
    }
    assert not lab_names & root_link_names()


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(
    ("src", "dst", "segment"),
    [
        ("client", "dir1", "lan"),
        ("client", "rs1", "lan"),
        ("dir2", "rs3", "lan"),
        ("dir1", "rsnat", "backend"),
        ("dir2", "rsnat", "backend"),
        ("client", "rstun", "remote"),
        ("rs2", "rstun", "remote"),
    ],
)
def test_reachability(lab_module: Lab, src: str, dst: str, segment: str, family: Family) -> None:
    assert lab_module.ping(src, lab_module.addr(dst, segment, family))


@pytest.mark.parametrize("family", [4, 6])
def test_remote_is_one_routed_hop_away(lab_module: Lab, family: Family) -> None:
    dst = lab_module.addr("rstun", "remote", family)
    r = lab_module.run(
        "client", ["ping", "-n", "-c", "1", "-W", "1", dst], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # Replies start at 64 and cross the router once.
    assert "ttl=63" in r.stdout  # iputils prints ttl= for the v6 hop limit too
    route = lab_module.run(
        "client", ["ip", f"-{family}", "route", "get", dst], capture_output=True, text=True
    )
    assert f"via {lab_module.addr('router', 'lan', family)}" in route.stdout


@pytest.mark.parametrize(
    ("src", "dst", "segment"),
    [("client", "rsnat", "backend"), ("rs1", "dir1", "backend"), ("rsnat", "rstun", "remote")],
)
def test_segments_are_isolated(lab_module: Lab, src: str, dst: str, segment: str) -> None:
    assert not lab_module.ping(src, lab_module.addr(dst, segment))


def test_ipv6_addresses_are_never_tentative(lab_module: Lab) -> None:
    for node in lab_module.topology.nodes:
        r = lab_module.run(
            node.name, ["ip", "-6", "addr", "show", "tentative"], capture_output=True, text=True
        )
        assert r.returncode == 0
        assert r.stdout.strip() == "", (node.name, r.stdout)


def _read(lab: Lab, node: str, path: str) -> str:
    r = lab.run(node, ["cat", path], capture_output=True, text=True, check=True)
    return str(r.stdout).strip()


def test_bridges_flood_multicast_and_forward_at_once(lab_module: Lab) -> None:
    for seg in lab_module.topology.segments:
        sw = f"sw-{seg.name}"
        assert _read(lab_module, sw, "/sys/class/net/br0/bridge/multicast_snooping") == "0"
        assert _read(lab_module, sw, "/sys/class/net/br0/bridge/forward_delay") == "0"
        assert _read(lab_module, sw, "/sys/class/net/br0/bridge/stp_state") == "0"


def test_only_the_router_forwards(lab_module: Lab) -> None:
    for node in ("router", "dir1", "client"):
        want = "1" if node == "router" else "0"
        assert _read(lab_module, node, "/proc/sys/net/ipv4/ip_forward") == want
        assert _read(lab_module, node, "/proc/sys/net/ipv6/conf/all/forwarding") == want


# Joins 224.0.0.18 (VRRP) on eth0, says "ready", prints the source of the first proto-112 packet.
RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton("224.0.0.18") + socket.inet_aton(sys.argv[1]))
s.settimeout(5)
print("ready", flush=True)
data, (src, _) = s.recvfrom(2048)
print(src, flush=True)
"""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in range(3):
    s.sendto(b"\\x31\\x33\\x64\\x01\\x00\\x01\\x00\\x00", ("224.0.0.18", 0))
"""


def test_vrrp_multicast_reaches_the_other_director(lab_module: Lab) -> None:
    dir1, dir2 = lab_module.addr("dir1", "lan"), lab_module.addr("dir2", "lan")
    rx = lab_module.popen(
        "dir2", [sys.executable, "-c", RECEIVER, dir2], stdout=subprocess.PIPE, text=True
    )
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        lab_module.run("dir1", [sys.executable, "-c", SENDER, dir1], check=True)
        out, _ = rx.communicate(timeout=10)
        assert rx.returncode == 0
        assert out.strip() == dir1
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait(timeout=5)
