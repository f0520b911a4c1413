"""Gratuitous ARP and unsolicited NA from dir1, seen by the client's kernel and on the wire.

The sender is the runner-facing glue (InstanceVips + InstanceAnnouncer) in a child process in
dir1's namespace, as in the daemon. Frames only ever leave dir1's lab interface.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from lab.core import Lab

VIP4 = "192.0.2.100"
VIP6 = "2001:db8:0:1::100"
OTHER_MAC = "02:00:00:00:00:99"

SENDER = r"""
import asyncio, json, sys
from director.config.models import Instance
from director.net.addresses import InstanceVips
from director.vrrp.announce import InstanceAnnouncer, PacketSockets

async def main(cfg):
    inst = Instance.model_validate(cfg)
    sockets = PacketSockets()
    vips = InstanceVips(inst)
    ann = InstanceAnnouncer(inst, vips, sockets)
    vips.add()   # what the router's AddVips, then Announce, do on becoming master
    ann.start()
    await asyncio.wait_for(ann.wait_idle(), 20)
    a = ann.announcer
    frames = [f.data.hex() for f in a.frames]
    await vips.aclose()
    sockets.close()
    return {"sent": a.sent, "errors": a.errors, "rounds": a.rounds, "frames": frames}

print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
"""

# Captures ARP and NA frames for the VIPs on eth0 with the kernel's receive timestamps, until it
# has `count` of them or `seconds` pass; prints "ready" once the socket is bound.
CAPTURE = r"""
import json, select, socket, struct, sys, time
count, seconds = int(sys.argv[1]), float(sys.argv[2])
vip4, vip6 = socket.inet_aton(sys.argv[3]), socket.inet_pton(socket.AF_INET6, sys.argv[4])
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.bind(("eth0", 0x0003))
print("ready", flush=True)
got, end = [], time.monotonic() + seconds
while len(got) < count:
    left = end - time.monotonic()
    if left <= 0 or not select.select([s], [], [], left)[0]:
        break
    data, anc, _, addr = s.recvmsg(65535, 64)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    kind = int.from_bytes(data[12:14], "big")
    arp = kind == 0x0806 and data[28:32] == vip4
    na = kind == 0x86DD and data[20] == 58 and data[54] == 136 and data[62:78] == vip6
    if not (arp or na):
        continue
    stamp = next(struct.unpack("qq", d[:16]) for l, t, d in anc if t == SO_TIMESTAMPNS)
    got.append({"t": stamp[0] + stamp[1] / 1e9, "hex": data.hex()})
print(json.dumps(got), flush=True)
"""


def instance(garp: dict[str, Any], *addresses: str) -> dict[str, Any]:
    return {
        "name": "VI_1",
        "interface": "eth0",
        "vrid": 51,
        "addresses": list(addresses),
        "garp": garp,
    }


def send(lab: Lab, cfg: dict[str, Any]) -> dict[str, Any]:
    r = lab.run(
        "dir1", [sys.executable, "-c", SENDER, json.dumps(cfg)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def mac_of(lab: Lab, node: str, dev: str = "eth0") -> str:
    r = lab.run(node, ["ip", "-j", "link", "show", dev], capture_output=True, text=True, check=True)
    return str(json.loads(r.stdout)[0]["address"])


def link_local_of(lab: Lab, node: str, dev: str = "eth0") -> str:
    r = lab.run(
        node,
        ["ip", "-j", "-6", "addr", "show", "dev", dev, "scope", "link"],
        capture_output=True,
        text=True,
        check=True,
    )
    # iproute2 leaves an empty object for each address the filter skipped.
    (found,) = [a["local"] for a in json.loads(r.stdout)[0]["addr_info"] if "local" in a]
    return str(found)


def neigh(lab: Lab, node: str, address: str) -> dict[str, Any] | None:
    r = lab.run(
        node,
        ["ip", "-j", "neigh", "show", address, "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = json.loads(r.stdout or "[]")
    return entries[0] if entries else None


def wait_neigh_mac(lab: Lab, node: str, address: str, mac: str, timeout: float = 3.0) -> Any:
    """Poll the kernel's neighbour table (bounded) until `address` maps to `mac`."""
    deadline = time.monotonic() + timeout
    while True:
        entry = neigh(lab, node, address)
        if entry is not None and entry.get("lladdr") == mac:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"{node}: {address} never mapped to {mac}; last: {entry}")
        time.sleep(0.01)  # poll interval of the bounded wait, not a synchronisation guess


def stale_entry(lab: Lab, address: str) -> None:
    """A client entry for the VIP pointing elsewhere, as after a failover from another node."""
    lab.run(
        "client",
        ["ip", "neigh", "replace", address, "lladdr", OTHER_MAC, "dev", "eth0", "nud", "stale"],
        check=True,
    )
    entry = neigh(lab, "client", address)
    assert entry is not None and entry["lladdr"] == OTHER_MAC


def test_gratuitous_arp_moves_the_clients_arp_entry(lab: Lab) -> None:
    stale_entry(lab, VIP4)
    out = send(lab, instance({"repeat": 1, "delay": 0}, f"{VIP4}/24"))
    assert (out["sent"], out["errors"]) == (1, 0)
    wait_neigh_mac(lab, "client", VIP4, mac_of(lab, "dir1"))


def test_unsolicited_na_overrides_the_clients_neighbour_entry(lab: Lab) -> None:
    stale_entry(lab, VIP6)
    out = send(lab, instance({"repeat": 1, "delay": 0}, f"{VIP6}/64"))
    assert (out["sent"], out["errors"]) == (1, 0)
    entry = wait_neigh_mac(lab, "client", VIP6, mac_of(lab, "dir1"))
    # Unsolicited: not a confirmation of reachability, and dir1 does not forward: no router.
    assert "STALE" in entry["state"]
    assert "router" not in entry


def test_bursts_on_the_wire_repeat_interval_delay(lab: Lab) -> None:
    repeat, interval, delay = 3, 0.05, 0.3
    count = 2 * repeat * 2  # two bursts, two addresses
    capture = lab.popen(
        "client",
        [sys.executable, "-c", CAPTURE, str(count), "15", VIP4, VIP6],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stdout is not None
        assert capture.stdout.readline().strip() == "ready"
        garp = {"repeat": repeat, "interval": interval, "delay": delay}
        out = send(lab, instance(garp, f"{VIP4}/24", f"{VIP6}/64"))
        got = json.loads(capture.stdout.readline())
    finally:
        capture.kill()
        capture.wait(timeout=10)
        if capture.stdout is not None:
            capture.stdout.close()
    assert (out["sent"], out["errors"], out["rounds"]) == (count, 0, 2 * repeat)
    assert len(got) == count

    # On the wire, byte for byte what was built once.
    built4, built6 = (bytes.fromhex(h) for h in out["frames"])
    wire4 = [g for g in got if bytes.fromhex(g["hex"]) == built4]
    wire6 = [g for g in got if bytes.fromhex(g["hex"]) == built6]
    assert len(wire4) == len(wire6) == 2 * repeat

    mac = mac_of(lab, "dir1")
    arp = Ether(built4)
    assert (arp.src, arp.dst, arp[ARP].op) == (mac, "ff:ff:ff:ff:ff:ff", 1)
    assert arp[ARP].psrc == arp[ARP].pdst == VIP4
    assert arp[ARP].hwsrc == mac
    na = Ether(built6)
    assert na[IPv6].src == link_local_of(lab, "dir1")
    assert (na[IPv6].dst, na[IPv6].hlim) == ("ff02::1", 255)
    assert (na[ICMPv6ND_NA].O, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].R) == (1, 0, 0)
    assert na[ICMPv6ND_NA].tgt == VIP6
    assert na[ICMPv6NDOptDstLLAddr].lladdr == mac

    # Timing, per address: never early; late by at most a loaded machine's scheduling delay.
    expected = [i * interval for i in range(repeat)] + [delay + i * interval for i in range(repeat)]
    for wire in (wire4, wire6):
        t0 = wire[0]["t"]
        offsets = [g["t"] - t0 for g in wire]
        for want, seen in zip(expected, offsets, strict=True):
            assert want - 0.002 <= seen <= want + 0.1, (expected, offsets)
