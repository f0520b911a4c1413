"""VIPs added, read back and removed by director.net.addresses in a lab node's namespace.

The code runs in a child process inside dir1's namespace (`ip netns exec`), as the daemon does,
and the result is read back with iproute2, an independent view of the kernel.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from typing import Any

import pytest

from director.net.addresses import Vip
from lab.core import Lab

DRIVER = r"""
import asyncio, ipaddress, json, sys
from director.net.addresses import AddressError, Vip, VipManager

def vip(d):
    return Vip(ipaddress.ip_interface(d["address"]), d["dev"], d.get("label"),
               d.get("scope", "global"))

async def main(op, vips):
    async with VipManager() as m:
        try:
            if op == "add":
                out = [str(v.address) for v in await m.add(vips)]
            elif op == "remove":
                out = [str(v.address) for v in await m.remove(vips)]
            elif op == "present":
                out = sorted(str(v.address) for v in await m.present(vips))
            elif op == "leftovers":
                out = sorted(str(a.address) for a in await m.remove_leftovers(vips))
            elif op == "concurrent":  # instances sharing one manager, all at once
                await asyncio.gather(*(m.add([v]) for v in vips))
                seen = await asyncio.gather(*(m.present(vips) for _ in range(10)))
                out = sorted({str(v.address) for s in seen for v in s})
            else:  # "hold": a daemon that added its VIPs, then is killed
                await m.add(vips)
                print("ready", flush=True)
                await asyncio.Event().wait()
        except AddressError as e:
            return {"error": str(e), "failed": [str(v.address) for v, _ in e.failed]}
    return {"result": out}

print(json.dumps(asyncio.run(main(sys.argv[1], [vip(d) for d in json.loads(sys.argv[2])]))))
"""

V4 = {"address": "192.0.2.100/24", "dev": "eth0", "label": "eth0:vip"}
V6 = {"address": "2001:db8:0:1::100/64", "dev": "eth0"}
V4_LINK = {"address": "192.0.2.101/32", "dev": "eth0", "scope": "link"}


def drive(lab: Lab, op: str, vips: list[dict[str, str]]) -> dict[str, Any]:
    r = lab.run(
        "dir1",
        [sys.executable, "-c", DRIVER, op, json.dumps(vips)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def addrs(lab: Lab, dev: str = "eth0") -> dict[str, dict[str, Any]]:
    """`ip -j addr` of dir1's `dev`, keyed by address/prefix."""
    r = lab.run(
        "dir1", ["ip", "-j", "addr", "show", "dev", dev], capture_output=True, text=True, check=True
    )
    (link,) = json.loads(r.stdout)
    return {f"{a['local']}/{a['prefixlen']}": a for a in link["addr_info"]}


def ip(lab: Lab, *args: str) -> None:
    lab.run("dir1", ["ip", *args], check=True, capture_output=True)


def test_add_with_prefix_label_scope_and_no_dad(lab: Lab) -> None:
    assert drive(lab, "add", [V4, V6, V4_LINK]) == {
        "result": ["192.0.2.100/24", "2001:db8:0:1::100/64", "192.0.2.101/32"]
    }
    have = addrs(lab)
    v4 = have["192.0.2.100/24"]
    assert v4["family"] == "inet"
    assert v4["label"] == "eth0:vip"
    assert v4["scope"] == "global"
    assert v4.get("secondary") is True  # beside dir1's own 192.0.2.2/24
    assert have["192.0.2.101/32"]["scope"] == "link"
    v6 = have["2001:db8:0:1::100/64"]
    assert v6["family"] == "inet6"
    assert v6["scope"] == "global"
    assert v6.get("nodad") is True
    assert not v6.get("tentative") and not v6.get("dadfailed")
    # Usable at once: the client reaches the v6 VIP with no DAD wait.
    assert lab.ping("client", "2001:db8:0:1::100")
    assert lab.ping("client", "192.0.2.100")


def test_add_is_idempotent(lab: Lab) -> None:
    assert drive(lab, "add", [V4, V6])["result"] == ["192.0.2.100/24", "2001:db8:0:1::100/64"]
    assert drive(lab, "add", [V4, V6]) == {"result": []}  # already there: not an error
    have = addrs(lab)
    assert "192.0.2.100/24" in have
    assert "2001:db8:0:1::100/64" in have
    listed = [a for a in have if a.startswith(("192.0.2.100/", "2001:db8:0:1::100/"))]
    assert len(listed) == 2


def test_remove_only_ours_and_absent_is_not_an_error(lab: Lab) -> None:
    ip(lab, "addr", "add", "192.0.2.77/24", "dev", "eth0")  # somebody else's address
    drive(lab, "add", [V4, V6])
    assert drive(lab, "remove", [V4, V6]) == {"result": ["192.0.2.100/24", "2001:db8:0:1::100/64"]}
    have = addrs(lab)
    assert "192.0.2.100/24" not in have
    assert "2001:db8:0:1::100/64" not in have
    for kept in ("192.0.2.77/24", "192.0.2.2/24", "2001:db8:0:1::2/64"):
        assert kept in have, kept
    assert drive(lab, "remove", [V4, V6]) == {"result": []}


def test_present_reads_the_kernel_back(lab: Lab) -> None:
    missing_dev = {"address": "192.0.2.102/24", "dev": "eth9"}
    assert drive(lab, "present", [V4, V6, missing_dev]) == {"result": []}
    drive(lab, "add", [V4])
    ip(lab, "addr", "add", "2001:db8:0:1::100/64", "dev", "eth0", "nodad")  # added by hand
    assert drive(lab, "present", [V4, V6, missing_dev]) == {
        "result": ["192.0.2.100/24", "2001:db8:0:1::100/64"]
    }
    # Another prefix is another address: not the configured VIP.
    other_prefix = {"address": "192.0.2.100/32", "dev": "eth0"}
    assert drive(lab, "present", [other_prefix]) == {"result": []}


def test_one_manager_shared_by_concurrent_callers(lab: Lab) -> None:
    # One netlink socket runs one dump at a time: the manager must queue its callers.
    assert drive(lab, "concurrent", [V4, V6, V4_LINK]) == {
        "result": ["192.0.2.100/24", "192.0.2.101/32", "2001:db8:0:1::100/64"]
    }


def test_missing_interface_is_named_and_the_other_vips_still_go_in(lab: Lab) -> None:
    out = drive(lab, "add", [{"address": "192.0.2.102/24", "dev": "eth9"}, V4])
    assert out["failed"] == ["192.0.2.102/24"]
    assert "no interface 'eth9'" in out["error"]
    assert "192.0.2.100/24" in addrs(lab)
    # Removing from an interface that does not exist: nothing there, nothing to do.
    assert drive(lab, "remove", [{"address": "192.0.2.102/24", "dev": "eth9"}]) == {"result": []}


def test_remove_leftovers_after_a_crash(lab: Lab) -> None:
    ip(lab, "addr", "add", "192.0.2.77/24", "dev", "eth0")  # not a VIP: must stay
    holder = lab.popen(
        "dir1",
        [sys.executable, "-c", DRIVER, "hold", json.dumps([V4, V6])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the VIPs stay in the kernel
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
    # An older config had the VIP as a /32: that copy is a leftover too.
    ip(lab, "addr", "add", "192.0.2.100/32", "dev", "eth0")
    have = addrs(lab)
    assert {"192.0.2.100/24", "192.0.2.100/32", "2001:db8:0:1::100/64"} <= set(have)

    assert drive(lab, "leftovers", [V4, V6]) == {
        "result": ["192.0.2.100/24", "192.0.2.100/32", "2001:db8:0:1::100/64"]
    }
    have = addrs(lab)
    assert not [a for a in have if a.startswith(("192.0.2.100/", "2001:db8:0:1::100/"))]
    for kept in ("192.0.2.77/24", "192.0.2.2/24", "2001:db8:0:1::2/64"):
        assert kept in have, kept
    assert drive(lab, "leftovers", [V4, V6]) == {"result": []}


# ---------------------------------------------------------------- no kernel needed


def test_vip_refuses_an_ipv6_label() -> None:
    with pytest.raises(ValueError, match="labels exist only for IPv4"):
        Vip(ipaddress.ip_interface("2001:db8::1/64"), "eth0", "eth0:x")
