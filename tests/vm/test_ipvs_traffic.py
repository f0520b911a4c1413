"""Real traffic through IPVS programmed by `director apply --once`: client -> VIP -> real
servers answering over HTTP with their names (lab.web), in the VM lab.

One lab for the module; each test applies its own config and flushes it afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.core import Lab
from lab.lvs import (
    BACKEND_GW,
    VIP,
    backends,
    director,
    fetch,
    ipvs_stats,
    ipvsadm,
    prepare_dr,
    prepare_tun,
    replies_seen,
    run,
    settled_stats,
    web_service,
    write_config,
)

URL = f"http://{VIP}/"
SERVICE = f"TCP {VIP}:80"
GUE_PORT = 6080
FRONT = {"name": "VI_1", "interface": "eth0", "vrid": 51, "addresses": [f"{VIP}/24"]}
GATEWAY = {"name": "VI_GW", "interface": "eth1", "vrid": 52, "addresses": [f"{BACKEND_GW}/24"]}


@pytest.fixture(scope="module")
def lvs(lab_module: Lab) -> Iterator[Lab]:
    lab = lab_module
    for node in ("rs1", "rs2", "rs3"):
        prepare_dr(lab, node)
    specs = [(n, n, ["0.0.0.0:80"]) for n in ("rs1", "rs2", "rs3", "rstun")]
    specs += [("rsnat", "nat-a", ["0.0.0.0:8081"]), ("rsnat", "nat-b", ["0.0.0.0:8082"])]
    with backends(lab, specs):
        yield lab


class Applied:
    """`director apply --once` in dir1 with a config written here; flushed afterwards."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp, self.path = lab, tmp, tmp / "dir1.yaml"
        self.vips: list[tuple[str, str]] = []

    def write(self, services: list[dict[str, Any]], *instances: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"vrrp": {"instances": list(instances)}} if instances else {}
        write_config(self.path, "dir1", services, **extra)

    def apply(self, services: list[dict[str, Any]], *instances: dict[str, Any]) -> str:
        self.write(services, *instances)
        self.vips = [(inst["interface"], inst["addresses"][0]) for inst in instances]
        return director(self.lab, "dir1", "apply", "-c", str(self.path), "--once", "--with-vips")

    def plan(self) -> str:
        return director(self.lab, "dir1", "plan", "-c", str(self.path))

    def close(self) -> None:
        # ipvsadm -C rather than `director flush` (tested on its own below): a Python start-up
        # costs seconds under the VM's emulation.
        run(self.lab, "dir1", ["ipvsadm", "-C"])
        shutil.rmtree(self.tmp / "dir1-state", ignore_errors=True)
        for dev, address in self.vips:
            run(self.lab, "dir1", ["ip", "addr", "del", address, "dev", dev])


@pytest.fixture
def dir1(lvs: Lab, tmp_path: Path) -> Iterator[Applied]:
    applied = Applied(lvs, tmp_path)
    try:
        yield applied
    finally:
        applied.close()


RS1, RS2, RS3 = ({"address": f"192.0.2.{n}"} for n in (21, 22, 23))


def test_dr_replies_bypass_the_director(dir1: Applied) -> None:
    dir1.write([web_service("dr", [RS1, RS2])], FRONT)
    planned = dir1.plan()
    assert "+ service TCP 192.0.2.100:80 rr" in planned
    assert "TCP" not in ipvsadm(dir1.lab, "dir1"), "plan changes nothing in the kernel"
    out = dir1.apply([web_service("dr", [RS1, RS2])], FRONT)
    assert "+ service TCP 192.0.2.100:80 rr" in out
    with replies_seen(dir1.lab, "dir1", dir1.lab.addr("client", "lan")) as replies:
        got = fetch(dir1.lab, URL, 8)
        assert replies() == 0, "in DR, no reply to the client passes through the director"
    assert got["names"] == {"rs1": 4, "rs2": 4}, got
    assert got["servers"] == [VIP], "DR real servers answer from the VIP itself"
    conns, inpkts, outpkts = settled_stats(dir1.lab, "dir1", SERVICE, 8)
    assert conns >= 8 and inpkts > 0
    assert outpkts == 0, "IPVS saw no reply either"
    assert "# 0 change(s)" in dir1.plan(), "after apply, plan finds nothing to do"


def test_nat_replies_pass_through_the_director_and_keep_the_client_address(
    dir1: Applied,
) -> None:
    reals = [{"address": "198.51.100.21", "port": p} for p in (8081, 8082)]
    out = dir1.apply([web_service("nat", reals)], FRONT, GATEWAY)
    assert "+ real server 198.51.100.21:8082" in out
    with replies_seen(dir1.lab, "dir1", dir1.lab.addr("client", "lan")) as replies:
        got = fetch(dir1.lab, URL, 6)
        # The counter's positive control: in NAT, every reply comes back through dir1.
        assert replies() >= 6, "NAT replies pass through the director"
    assert got["names"] == {"nat-a": 3, "nat-b": 3}, got
    assert got["clients"] == [dir1.lab.addr("client", "lan")], "the real server sees the client"
    _, inpkts, outpkts = settled_stats(dir1.lab, "dir1", SERVICE, 6)
    assert inpkts > 0 and outpkts > 0, "NAT replies come back through the director"


@pytest.mark.parametrize("kind", ["ipip", "gue", "gre"])
def test_tun_real_server_decapsulates_and_answers_directly(dir1: Applied, kind: str) -> None:
    prepare_tun(dir1.lab, "rstun", kind, gue_port=GUE_PORT)
    tunnel: dict[str, Any] = {"type": kind}
    if kind == "gue":
        tunnel["port"] = GUE_PORT
    reals = [{"address": "203.0.113.21", "tunnel": tunnel}]
    dir1.apply([web_service("tun", reals)], FRONT)
    with replies_seen(dir1.lab, "dir1", dir1.lab.addr("client", "lan")) as replies:
        got = fetch(dir1.lab, URL, 4)
        assert replies() == 0, f"{kind}: no reply to the client passes through the director"
    assert got["names"] == {"rstun": 4}, got
    assert got["clients"] == [dir1.lab.addr("client", "lan")]
    _, inpkts, outpkts = settled_stats(dir1.lab, "dir1", SERVICE, 4)
    assert inpkts > 0 and outpkts == 0, f"{kind}: replies bypass the director"


def test_wrr_weights_shape_the_distribution(dir1: Applied) -> None:
    reals = [{**RS1, "weight": 3}, {**RS2, "weight": 1}]
    dir1.apply([web_service("dr", reals, scheduler="wrr")], FRONT)
    got = fetch(dir1.lab, URL, 12)
    assert got["names"] == {"rs1": 9, "rs2": 3}, got


@pytest.mark.parametrize("scheduler", ["sh", "mh"])
def test_source_hashing_pins_each_client_to_one_server(dir1: Applied, scheduler: str) -> None:
    lab = dir1.lab
    sources = [f"192.0.2.{n}" for n in range(31, 39)]
    for address in sources:
        run(lab, "client", ["ip", "addr", "replace", f"{address}/24", "dev", "eth0"])
    try:
        dir1.apply([web_service("dr", [RS1, RS2, RS3], scheduler=scheduler)], FRONT)
        chosen: dict[str, str] = {}
        for address in sources:
            got = fetch(lab, URL, 2, source=address)
            assert len(got["names"]) == 1, f"{address} moved between servers: {got}"
            chosen[address] = next(iter(got["names"]))
        assert len(set(chosen.values())) > 1, f"one server took every client: {chosen}"
    finally:
        for address in sources:
            run(lab, "client", ["ip", "addr", "del", f"{address}/24", "dev", "eth0"])


def test_a_real_server_removed_from_the_config_gets_no_new_connections(dir1: Applied) -> None:
    dir1.apply([web_service("dr", [RS1, RS2])], FRONT)
    assert fetch(dir1.lab, URL, 4)["names"] == {"rs1": 2, "rs2": 2}
    out = dir1.apply([web_service("dr", [RS1])], FRONT)
    assert "- real server 192.0.2.22:80 in TCP 192.0.2.100:80" in out
    assert "+ service" not in out, "the change is one real server, not a rebuilt service"
    assert fetch(dir1.lab, URL, 6)["names"] == {"rs1": 6}


def test_services_not_owned_are_left_alone_and_flush_removes_only_owned(dir1: Applied) -> None:
    lab = dir1.lab
    run(lab, "dir1", ["ipvsadm", "-A", "-t", "192.0.2.200:443", "-s", "rr"])
    dir1.apply([web_service("dr", [RS1])], FRONT)
    assert "192.0.2.200:443" in ipvsadm(lab, "dir1")
    assert "not owned, left alone" in dir1.plan()
    out = director(lab, "dir1", "flush", "-c", str(dir1.path))
    assert "- service TCP 192.0.2.100:80" in out
    assert list(ipvs_stats(lab, "dir1")) == ["TCP 192.0.2.200:443"], "only the foreign one stays"
