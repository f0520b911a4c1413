"""realserver on the host kernel, inside lab namespaces: DR setup, exact revert, all or nothing.

Every realserver run happens in a lab node's namespace (`ip netns exec`), with its state files in
the test's tmp_path, and what it did is read back independently: iproute2, /proc/sys, and ARP and
neighbour-discovery frames on the lab wire. The host kernel has no dummy, tunnel or IPVS support,
so those modes are exercised in tests/vm; here they serve the missing-module error.
"""

from __future__ import annotations

import functools
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac

from lab.core import Lab
from lab.topology import BACKEND_GW4, VIP4, VIP6

VIP = str(VIP4)
VIP_6 = str(VIP6)

# Everything of a node's network state that realserver could touch, read by the kernel's own
# tools: every IPv4/IPv6 per-interface sysctl, links, addresses, and all routing tables.
SNAPSHOT = r"""
import json, os, subprocess
sysctls = {}
for fam in ("ipv4", "ipv6"):
    base = f"/proc/sys/net/{fam}/conf"
    for dev in sorted(os.listdir(base)):
        for name in sorted(os.listdir(f"{base}/{dev}")):
            try:
                with open(f"{base}/{dev}/{name}") as f:
                    sysctls[f"{fam}/{dev}/{name}"] = f.read().strip()
            except OSError:  # write-only or unreadable (stable_secret)
                pass
def ip(*args):
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")
print(json.dumps({
    "sysctls": sysctls,
    "links": ip("link", "show"),
    "addresses": ip("addr", "show"),
    "routes4": ip("-4", "route", "show", "table", "all"),
    "routes6": ip("-6", "route", "show", "table", "all"),
}))
"""

# Sends the given frames on eth0 and prints every frame received there for `seconds` (hex).
# The socket is bound before the first frame leaves, so no reply can be missed; waiting the
# full time is what shows that nobody else answers.
PROBE = r"""
import json, select, socket, sys, time
frames, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind(("eth0", 0x0003))
for frame in frames:
    s.send(bytes.fromhex(frame))
got, end = [], time.monotonic() + seconds
while (left := end - time.monotonic()) > 0:
    if select.select([s], [], [], left)[0]:
        data, addr = s.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING:
            got.append(data.hex())
print(json.dumps(got))
"""
PROBE_SECONDS = 1.0

# Prints each address change in the namespace as iproute2 reports it (one line per event).
MONITOR = ["ip", "-o", "monitor", "address"]
# Addresses added to rs1's lo only to mark points in the monitor's stream.
END_MARKER = "203.0.113.89/32"


# ---------------------------------------------------------------- helpers


def realserver(lab: Lab, node: str, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`realserver ARGS --state-dir STATE` inside the node's namespace."""
    argv = [sys.executable, "-m", "realserver", *args, "--state-dir", str(state)]
    result: subprocess.CompletedProcess[str] = lab.run(
        node, argv, capture_output=True, text=True, timeout=60
    )
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def snapshot(lab: Lab, node: str) -> dict[str, Any]:
    r = lab.run(node, [sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, check=True)
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def sysctl(lab: Lab, node: str, key: str, value: int | None = None) -> int:
    """Read (or write, then read) /proc/sys/KEY inside the node's namespace."""
    path = f"/proc/sys/{key}"
    script = f"open({path!r}, 'w').write('{value}\\n')\n" if value is not None else ""
    script += f"print(open({path!r}).read().strip())"
    r = lab.run(node, [sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(r.stdout)


def ip(lab: Lab, node: str, *args: str) -> None:
    lab.run(node, ["ip", *args], check=True)


def lo_addresses(lab: Lab, node: str) -> set[str]:
    r = lab.run(node, ["ip", "-j", "addr", "show", "dev", "lo"], capture_output=True, text=True)
    return {f"{a['local']}/{a['prefixlen']}" for a in json.loads(r.stdout)[0]["addr_info"]}


def mac_of(lab: Lab, node: str, dev: str = "eth0") -> str:
    r = lab.run(node, ["ip", "-j", "link", "show", dev], capture_output=True, text=True, check=True)
    return str(json.loads(r.stdout)[0]["address"])


def who_answers(lab: Lab) -> dict[str, set[str]]:
    """The client asks (ARP, and IPv6 neighbour solicitation) who has the VIPs: the MACs that
    answered each, as seen on the client's wire."""
    me = mac_of(lab, "client")
    arp = Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=me, psrc=lab.addr("client", "lan"), pdst=VIP
    )
    group = in6_getnsma(socket.inet_pton(socket.AF_INET6, VIP_6))
    ns = (
        Ether(src=me, dst=in6_getnsmac(group))
        / IPv6(src=lab.addr("client", "lan", 6), dst=socket.inet_ntop(socket.AF_INET6, group))
        / ICMPv6ND_NS(tgt=VIP_6)
        / ICMPv6NDOptSrcLLAddr(lladdr=me)
    )
    frames = json.dumps([bytes(arp).hex(), bytes(ns).hex()])
    r = lab.run(
        "client",
        [sys.executable, "-c", PROBE, frames, str(PROBE_SECONDS)],
        capture_output=True,
        text=True,
        check=True,
    )
    answers: dict[str, set[str]] = {"arp": set(), "nd": set()}
    for hexframe in json.loads(r.stdout):
        frame = Ether(bytes.fromhex(hexframe))
        if ARP in frame and frame[ARP].op == 2 and frame[ARP].psrc == VIP:
            answers["arp"].add(frame[ARP].hwsrc)
        if ICMPv6ND_NA in frame and frame[ICMPv6ND_NA].tgt == VIP_6:
            answers["nd"].add(frame.src)
    return answers


def director_holds_vips(lab: Lab) -> None:
    ip(lab, "dir1", "addr", "add", f"{VIP}/24", "dev", "eth0")
    ip(lab, "dir1", "-6", "addr", "add", f"{VIP_6}/64", "dev", "eth0", "nodad")


def read_lines_until(
    stream: IO[bytes], stop: Callable[[str], bool], timeout: float = 10.0
) -> list[str]:
    """Lines from a child's stdout up to (without) the first for which `stop` holds; bounded."""
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode()
            if stop(line):
                return lines
            lines.append(line)
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError(f"no line matched within {timeout} s; got {lines}")
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"the monitor ended; got {lines}")
        buffer += chunk


def reports_added(line: str, address: str) -> bool:
    """An `ip -o monitor address` line reporting `address` added."""
    return f" {address} " in line and not line.startswith("Deleted")


def wait_until_monitoring(lab: Lab, node: str, stream: IO[bytes], timeout: float = 10.0) -> None:
    """`ip monitor` prints nothing when it starts listening: add marker addresses (a new one
    each try, so a late report of an earlier one cannot be mistaken) until it reports one."""
    deadline = time.monotonic() + timeout
    for attempt in range(100):
        marker = f"203.0.113.{90 + attempt % 8}/32"
        ip(lab, node, "addr", "add", marker, "dev", "lo")
        try:
            read_lines_until(stream, functools.partial(reports_added, address=marker), timeout=0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        finally:
            ip(lab, node, "addr", "del", marker, "dev", "lo")
    raise AssertionError(f"ip monitor in {node} never reported a marker address")


def state_files(state: Path) -> list[str]:
    return sorted(p.name for p in state.glob("*.json")) if state.exists() else []


# ---------------------------------------------------------------- acceptance


def test_dr_arp_answered_only_by_director_and_stop_restores_everything(
    lab: Lab, tmp_path: Path
) -> None:
    director_holds_vips(lab)
    dir1, rs1 = mac_of(lab, "dir1"), mac_of(lab, "rs1")
    # The oracle sees a real server that answers: the VIP on lo with the kernel's ARP defaults.
    ip(lab, "rs1", "addr", "add", f"{VIP}/32", "dev", "lo")
    assert who_answers(lab)["arp"] == {dir1, rs1}
    ip(lab, "rs1", "addr", "del", f"{VIP}/32", "dev", "lo")

    # Non-default values and a foreign address on lo before start: stop must bring back these,
    # not the kernel's defaults.
    sysctl(lab, "rs1", "net/ipv4/conf/all/arp_announce", 1)
    sysctl(lab, "rs1", "net/ipv4/conf/eth0/arp_ignore", 2)
    ip(lab, "rs1", "addr", "add", "203.0.113.99/32", "dev", "lo")
    before = snapshot(lab, "rs1")

    out = ok(
        realserver(
            lab, "rs1", tmp_path, "start", "--vip", f"{VIP}/80", "--vip", VIP_6,
            "--client-iface", "eth0",
        )
    )  # fmt: skip
    assert "started: 6 change(s) made" in out
    assert {f"{VIP}/32", f"{VIP_6}/128", "203.0.113.99/32"} <= lo_addresses(lab, "rs1")
    assert sysctl(lab, "rs1", "net/ipv4/conf/all/arp_ignore") == 1
    assert sysctl(lab, "rs1", "net/ipv4/conf/all/arp_announce") == 2
    assert sysctl(lab, "rs1", "net/ipv4/conf/eth0/arp_ignore") == 1
    assert sysctl(lab, "rs1", "net/ipv4/conf/eth0/arp_announce") == 2

    assert who_answers(lab) == {"arp": {dir1}, "nd": {dir1}}

    status = json.loads(ok(realserver(lab, "rs1", tmp_path, "status", "--json")))
    assert status["in_sync"] is True
    assert status["drift"] == []
    assert [a["in_effect"] for a in status["applied"]] == [True] * 6

    out = ok(realserver(lab, "rs1", tmp_path, "stop"))
    assert "stopped: 6 change(s) reverted" in out
    assert snapshot(lab, "rs1") == before
    assert sysctl(lab, "rs1", "net/ipv4/conf/all/arp_announce") == 1
    assert sysctl(lab, "rs1", "net/ipv4/conf/eth0/arp_ignore") == 2
    assert state_files(tmp_path) == []


def test_failing_start_on_the_third_vip_leaves_the_system_as_before(
    lab: Lab, tmp_path: Path
) -> None:
    before = snapshot(lab, "rs1")
    argv = ["start", "--vip", VIP, "--vip", "192.0.2.101", "--vip", "192.0.2.102@eth9"]
    plan = ok(realserver(lab, "rs1", tmp_path, *argv, "--client-iface", "eth0", "--dry-run"))
    assert plan.splitlines()[-3:] == [
        f"  add address {VIP}/32 on lo label lo:rs",
        "  add address 192.0.2.101/32 on lo label lo:rs",
        "  add address 192.0.2.102/32 on eth9 label eth9:rs",
    ]
    assert snapshot(lab, "rs1") == before  # a dry run changes nothing

    # Watch the kernel's address events, to see the first two VIPs come and go.
    monitor = lab.popen("rs1", MONITOR, stdout=subprocess.PIPE)
    try:
        assert monitor.stdout is not None
        wait_until_monitoring(lab, "rs1", monitor.stdout)
        failed = realserver(lab, "rs1", tmp_path, *argv, "--client-iface", "eth0")
        ip(lab, "rs1", "addr", "add", END_MARKER, "dev", "lo")  # the end of what start caused
        events = read_lines_until(monitor.stdout, lambda line: reports_added(line, END_MARKER))
        ip(lab, "rs1", "addr", "del", END_MARKER, "dev", "lo")
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)
        if monitor.stdout is not None:
            monitor.stdout.close()

    assert failed.returncode == 1, failed.stdout + failed.stderr
    err = failed.stderr
    assert "step 'add address 192.0.2.102/32 on eth9 label eth9:rs' failed" in err
    assert "no interface 'eth9' in this network namespace" in err
    assert "every change was rolled back" in err
    added = [e for e in events if not e.startswith("Deleted") and "lo:rs" in e]
    removed = [e for e in events if e.startswith("Deleted") and "lo:rs" in e]
    assert len(added) == len(removed) == 2, events  # both made, both undone
    assert snapshot(lab, "rs1") == before
    assert state_files(tmp_path) == []


# ---------------------------------------------------------------- idempotence, drift, state


def test_start_twice_changes_nothing_and_drift_is_seen_and_repaired(
    lab: Lab, tmp_path: Path
) -> None:
    before = snapshot(lab, "rs2")
    out = ok(realserver(lab, "rs2", tmp_path, "stop"))
    assert "was not started in this network namespace" in out
    assert "nothing to stop" in out
    assert snapshot(lab, "rs2") == before

    ok(realserver(lab, "rs2", tmp_path, "start", "--vip", VIP))
    (name,) = state_files(tmp_path)
    started = snapshot(lab, "rs2")
    inode = (tmp_path / name).stat().st_ino
    out = ok(realserver(lab, "rs2", tmp_path, "start", "--vip", VIP))
    assert "nothing to change" in out
    assert snapshot(lab, "rs2") == started
    assert (tmp_path / name).stat().st_ino == inode  # the state file was not even rewritten

    other = realserver(lab, "rs2", tmp_path, "start", "--vip", "192.0.2.101")
    assert other.returncode == 2
    assert "already started here with another setup (VIP 192.0.2.100 dr on lo)" in other.stderr
    assert snapshot(lab, "rs2") == started

    # Someone removes the VIP by hand: status shows it, check fails on it, start repairs it.
    ip(lab, "rs2", "addr", "del", f"{VIP}/32", "dev", "lo")
    status = json.loads(ok(realserver(lab, "rs2", tmp_path, "status", "--json")))
    assert status["in_sync"] is False
    assert status["drift"] == [f"add address {VIP}/32 on lo label lo:rs"]
    assert [a["in_effect"] for a in status["applied"]] == [True, True, False]
    checked = realserver(lab, "rs2", tmp_path, "check")
    assert checked.returncode == 1
    assert f"FAIL  VIP {VIP} (dr): {VIP}/32 is not on lo" in checked.stdout
    assert "1 problem(s) found" in checked.stdout
    out = ok(realserver(lab, "rs2", tmp_path, "start", "--vip", VIP))
    assert "started: 1 change(s) made" in out
    assert snapshot(lab, "rs2") == started
    assert "all checks passed" in ok(realserver(lab, "rs2", tmp_path, "check"))

    ok(realserver(lab, "rs2", tmp_path, "stop"))
    assert snapshot(lab, "rs2") == before


def test_state_is_kept_per_network_namespace(lab: Lab, tmp_path: Path) -> None:
    ok(realserver(lab, "rs1", tmp_path, "start", "--vip", VIP))
    ok(realserver(lab, "rs2", tmp_path, "start", "--vip", VIP))
    inodes = [os.stat(f"/run/netns/{lab.ns_name(n)}").st_ino for n in ("rs1", "rs2")]
    assert state_files(tmp_path) == sorted(f"netns-{i}.json" for i in inodes)

    ok(realserver(lab, "rs1", tmp_path, "stop"))
    assert f"{VIP}/32" not in lo_addresses(lab, "rs1")
    assert f"{VIP}/32" in lo_addresses(lab, "rs2")
    assert json.loads(ok(realserver(lab, "rs2", tmp_path, "status", "--json")))["started"]
    ok(realserver(lab, "rs2", tmp_path, "stop"))
    assert state_files(tmp_path) == []


# ---------------------------------------------------------------- errors


def test_bad_input_exits_2_and_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    before = snapshot(lab, "rs1")
    for argv, message in (
        (["--vip", "192.0.2.300"], "'192.0.2.300' is not an IPv4 or IPv6 address"),
        (["--vip", VIP, "--set-gateway", "192.0.2.1"], "--set-gateway: only for mode nat"),
        (["--vip", VIP, "--mode", "tun", "--tunnel", "gue"], "tunnel gue needs a UDP port"),
    ):
        result = realserver(lab, "rs1", tmp_path, "start", *argv)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
    assert snapshot(lab, "rs1") == before
    assert state_files(tmp_path) == []


def test_missing_kernel_module_is_named_and_rolled_back(lab: Lab, tmp_path: Path) -> None:
    # This host kernel has no ipip or dummy (LAB.md). Make sure, without loading anything:
    # on a kernel that had them, start would load them into the host kernel.
    for module in ("ipip", "dummy"):
        dry = subprocess.run(["modprobe", "-n", "-q", module], capture_output=True, timeout=30)
        assert dry.returncode != 0, (
            f"this host kernel can load {module}: the missing-module test needs a kernel "
            "without it (tests/vm covers the module being there)"
        )
    before = snapshot(lab, "rs1")
    tun = realserver(lab, "rs1", tmp_path, "start", "--vip", VIP, "--mode", "tun")
    assert tun.returncode == 1
    assert "step 'create ipip interface tunl0' failed" in tun.stderr
    assert "kernel module ipip could not be loaded: modprobe: FATAL: Module ipip" in tun.stderr
    assert "every change was rolled back" in tun.stderr
    dummy = realserver(lab, "rs1", tmp_path, "start", "--vip", VIP, "--iface", "rs0", "--dummy")
    assert dummy.returncode == 1
    assert "kernel module dummy could not be loaded" in dummy.stderr
    assert snapshot(lab, "rs1") == before
    assert state_files(tmp_path) == []


# ---------------------------------------------------------------- check and the data path


def test_check_wants_the_service_listening_and_dr_packets_are_answered(
    lab: Lab, tmp_path: Path
) -> None:
    ok(realserver(lab, "rs1", tmp_path, "start", "--vip", f"{VIP}/80", "--client-iface", "eth0"))
    checked = realserver(lab, "rs1", tmp_path, "check")
    assert checked.returncode == 1
    assert f"FAIL  service {VIP}:80/tcp: nothing listens on {VIP}:80/tcp" in checked.stdout

    server = lab.popen(
        "rs1",
        [sys.executable, "-m", "lab.web", "serve", "--name", "rs1", "--listen", "0.0.0.0:80"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        out = ok(realserver(lab, "rs1", tmp_path, "check"))
        assert f"ok    service {VIP}:80/tcp: listening on 0.0.0.0:80" in out
        assert "ok    ARP on eth0: arp_ignore 1, arp_announce 2 (effective)" in out

        # What a DR director does, without IPVS: frames for the VIP go to rs1's MAC. rs1 takes
        # them because the VIP is on lo, and answers from the VIP straight to the client.
        ip(lab, "client", "route", "add", f"{VIP}/32", "via", lab.addr("rs1", "lan"))
        url = f"http://{VIP}/"
        get = [sys.executable, "-m", "lab.web", "get", url, "--count", "3", "--timeout", "2"]
        r = lab.run("client", get, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout)
        assert result["names"] == {"rs1": 3}
        assert result["servers"] == [VIP]
        assert result["clients"] == [lab.addr("client", "lan")]

        ok(realserver(lab, "rs1", tmp_path, "stop"))
        # Without the VIP rs1 is no longer the destination (and does not forward): no answer.
        once = [sys.executable, "-m", "lab.web", "get", url, "--count", "1", "--timeout", "1"]
        r = lab.run("client", once, capture_output=True, text=True)
        assert r.returncode == 1
        assert json.loads(r.stdout)["names"] == {}
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()


def test_nat_gateway_set_checked_and_restored(lab: Lab, tmp_path: Path) -> None:
    def default_gateway() -> str:
        r = lab.run("rsnat", ["ip", "-j", "-4", "route", "show", "default"], capture_output=True)
        (route,) = json.loads(r.stdout)
        return str(route["gateway"])

    assert default_gateway() == str(BACKEND_GW4)
    before = snapshot(lab, "rsnat")
    director = lab.addr("dir1", "backend")
    argv = ["--vip", f"{VIP}/80", "--mode", "nat"]

    plain = realserver(lab, "rsnat", tmp_path, "check", *argv)
    assert f"info  IPv4 replies: default route via {BACKEND_GW4}" in plain.stdout
    assert f"FAIL  service {VIP}:80/tcp: nothing listens on tcp port 80" in plain.stdout

    out = ok(realserver(lab, "rsnat", tmp_path, "start", *argv, "--set-gateway", director))
    assert f"IPv4 default route via {director} (was {BACKEND_GW4})" in out
    assert default_gateway() == director
    checked = realserver(lab, "rsnat", tmp_path, "check")
    assert f"ok    IPv4 replies: default route via {director} (the director)" in checked.stdout

    ok(realserver(lab, "rsnat", tmp_path, "stop"))
    assert default_gateway() == str(BACKEND_GW4)
    assert snapshot(lab, "rsnat") == before


def test_a_default_route_without_gateway_is_refused_and_kept(lab: Lab, tmp_path: Path) -> None:
    """--set-gateway over a device default route: stop could not restore it, so start refuses
    it, names the step, and leaves everything as it was."""
    routes = ["ip", "-4", "route"]
    lab.run("rsnat", [*routes, "replace", "default", "dev", lab.iface("rsnat", "backend")])
    try:
        before = snapshot(lab, "rsnat")
        director = lab.addr("dir1", "backend")
        argv = ["--vip", VIP, "--mode", "nat", "--set-gateway", director]
        failed = realserver(lab, "rsnat", tmp_path, "start", *argv)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "no single gateway" in failed.stderr and "step '" in failed.stderr, failed.stderr
        assert snapshot(lab, "rsnat") == before
        gone = realserver(lab, "rsnat", tmp_path, "stop")
        assert gone.returncode == 0 and "nothing to stop" in gone.stdout + gone.stderr
    finally:
        gateway = ["default", "via", str(BACKEND_GW4)]
        lab.run("rsnat", [*routes, "replace", *gateway])
