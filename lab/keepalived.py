"""keepalived 2.2.7 as a VRRP peer in the namespace lab, and two small in-namespace helpers.

Test side (imported by tests/lab):

- `KeepalivedInstance` + `keepalived_conf`: a minimal keepalived.conf (`vrrp_strict` off, no
  scripts, `state BACKUP` unless asked otherwise).
- `Keepalived`: `keepalived -P -n -l -D -f CONF -p PID -r VRRP_PID` in a lab node, with its own pid
  files and a log file; stopped by pid (SIGTERM, then SIGKILL after a bound).
- `VipWatch`: the `watch` helper below in a node, its transitions read back from a file.
- `longest_overlap`: the longest time two VIP timelines were both present (dual master).

Helper side (`python -m lab.keepalived watch|capture|golden-v3 ...`, run inside a namespace or,
for `golden-v3`, building its own lab):

- `watch`: samples whether an address is on an interface every few milliseconds with one
  netlink address dump per sample, and prints a JSON line at start and at every change, with
  CLOCK_MONOTONIC times (shared by every network namespace, so timelines from two nodes and the
  test process compare directly).
- `capture`: prints VRRP (and AH) packets from one source as hex, read from an AF_PACKET socket,
  so IPv4 and IPv6 arrive alike as whole IP packets.
- `golden-v3`: builds a lab, runs keepalived with VRRPv3 instances in dir2, captures their adverts
  (and the priority-0 ones sent on SIGTERM) in dir1 and writes the JSON that
  tests/unit/test_vrrp_golden_keepalived.py reads.

Every loop is bounded in count and time; every process started here is ended by its pid.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the helper side runs in namespaces and imports nothing of the lab
    from lab.core import Lab

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
KEEPALIVED = "keepalived"
ROOT = Path(__file__).resolve().parent.parent
STATE_RE = re.compile(r"\((?P<name>[^)]+)\) Entering (?P<state>MASTER|BACKUP|FAULT) STATE")
# Timeline: (CLOCK_MONOTONIC seconds, present) at the first sample and at every change.
Timeline = list[tuple[float, bool]]


# -- keepalived.conf ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KeepalivedInstance:
    """One `vrrp_instance`; the fields keepalived needs for the interop scenarios."""

    vrid: int
    priority: int
    vips: tuple[str, ...]  # "192.0.2.100/24", "2001:db8:0:1::100/64"
    version: int = 3
    advert_int: float = 1.0  # seconds; v2 whole seconds only
    name: str = "VI_1"
    interface: str = "eth0"
    state: str = "BACKUP"
    nopreempt: bool = False
    auth_type: str | None = None  # "PASS" or "AH" (v2 only)
    auth_pass: str = ""
    unicast_src: str | None = None
    unicast_peers: tuple[str, ...] = ()


def keepalived_conf(instances: Sequence[KeepalivedInstance], router_id: str = "ka") -> str:
    """A minimal keepalived.conf for `instances` (no vrrp_strict, no scripts)."""
    out = ["global_defs {", f"  router_id {router_id}", "}"]
    for inst in instances:
        interval = f"{inst.advert_int:g}"
        out += [
            f"vrrp_instance {inst.name} {{",
            f"  state {inst.state}",
            f"  interface {inst.interface}",
            f"  virtual_router_id {inst.vrid}",
            f"  priority {inst.priority}",
            f"  advert_int {interval}",
            f"  version {inst.version}",
        ]
        if inst.nopreempt:
            out.append("  nopreempt")
        if inst.auth_type is not None:
            out += [
                "  authentication {",
                f"    auth_type {inst.auth_type}",
                f"    auth_pass {inst.auth_pass}",
                "  }",
            ]
        if inst.unicast_src is not None:
            out.append(f"  unicast_src_ip {inst.unicast_src}")
        if inst.unicast_peers:
            out += ["  unicast_peer {", *(f"    {p}" for p in inst.unicast_peers), "  }"]
        out += ["  virtual_ipaddress {", *(f"    {v}" for v in inst.vips), "  }", "}"]
    return "\n".join(out) + "\n"


# -- processes in a lab node -------------------------------------------------------------------


def end_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM by pid, then SIGKILL after `timeout`; the exit code. `ip netns exec` execs the
    command, so the pid is the command's own."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return proc.returncode


class Keepalived:
    """keepalived -P in a lab node with its own pid files and log; stopped by pid."""

    def __init__(self, lab: Lab, node: str, conf: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.lab, self.node, self.dir = lab, node, workdir
        self.conf = workdir / "keepalived.conf"
        self.conf.write_text(conf)
        self.logfile = workdir / "keepalived.log"
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.logfile.open("wb")
        d = self.dir
        argv = [KEEPALIVED, "-P", "-n", "-l", "-D", "-f", str(self.conf)]
        argv += ["-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid")]
        self.proc = self.lab.popen(self.node, argv, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (keepalived sends priority 0 as master and removes its VIPs); the exit code."""
        code = None if self.proc is None else end_process(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_log(self, pattern: str, timeout: float) -> float:
        """Poll the log until `pattern` appears; the monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.log()):
                return time.monotonic()
            assert self.running, self.log()
            time.sleep(0.05)
        raise AssertionError(f"keepalived never logged {pattern!r} in {timeout} s:\n{self.log()}")

    def states(self, name: str = "VI_1") -> list[str]:
        """Every state the instance entered, in order, as logged."""
        return [m["state"] for m in STATE_RE.finditer(self.log()) if m["name"] == name]

    def state(self, name: str = "VI_1") -> str | None:
        states = self.states(name)
        return states[-1] if states else None


@contextmanager
def running_keepalived(lab: Lab, node: str, conf: str, workdir: Path) -> Iterator[Keepalived]:
    ka = Keepalived(lab, node, conf, workdir)
    try:
        ka.start()
        yield ka
    finally:
        ka.stop()


def wait_until(what: str, check: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Poll `check` until it holds, at most `timeout` seconds; the monotonic time it held."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if check():
            return now
        if now > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


# -- VIP presence: netlink address dump --------------------------------------------------------

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


class AddressProbe:
    """Is `address` on interface `ifname` (this process's namespace)? One dump per call."""

    def __init__(self, ifname: str, address: IPAddress) -> None:
        self.index = socket.if_nametoindex(ifname)
        self.family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        self.packed = address.packed
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(2.0)
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def present(self) -> bool:
        self.seq += 1
        head = _NLMSGHDR.pack(
            _NLMSGHDR.size + _IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0
        )
        self.sock.send(head + _IFADDRMSG.pack(self.family, 0, 0, 0, 0))
        found = False
        for _ in range(1000):  # a dump is a few datagrams; bounded all the same
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    raise OSError("malformed netlink message")
                if seq == self.seq:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        raise OSError("netlink address dump failed")
                    if kind == RTM_NEWADDR:
                        found = found or self._matches(data, off, length)
                off += _align(length)
        raise OSError("netlink address dump did not end")

    def _matches(self, data: bytes, off: int, length: int) -> bool:
        _, _, _, _, index = _IFADDRMSG.unpack_from(data, off + _NLMSGHDR.size)
        if index != self.index:
            return False
        at, end = off + _NLMSGHDR.size + _IFADDRMSG.size, off + length
        while at + _RTATTR.size <= end:
            rta_len, rta_type = _RTATTR.unpack_from(data, at)
            if rta_len < _RTATTR.size:
                return False
            if rta_type in (IFA_ADDRESS, IFA_LOCAL) and data[at + 4 : at + rta_len] == self.packed:
                return True
            at += _align(rta_len)
        return False


RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100


def _address_events() -> socket.socket:
    """A netlink socket that becomes readable when any address is added or removed."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> None:
    for _ in range(1000):
        try:
            sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return


def _watch(args: argparse.Namespace) -> int:
    """Sample every `interval`, and at once when the kernel reports an address change (so a
    change is seen within scheduling latency, not up to a whole interval later)."""
    probe = AddressProbe(args.ifname, ipaddress.ip_address(args.address))
    events = _address_events()
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    deadline = start + args.seconds
    samples, woken, max_gap, last_t = 0, 0, 0.0, start
    state: bool | None = None
    limit = int(args.seconds / args.interval) * 4 + 10  # bounded in count as well
    while not stop and samples < limit:
        now = time.monotonic()
        if now > deadline:
            break
        present = probe.present()
        samples += 1
        if samples > 1:
            max_gap = max(max_gap, now - last_t)
        if present != state:
            state = present
            print(json.dumps({"t": now, "present": present, "prev": last_t}), flush=True)
        last_t = now
        try:
            readable, _, _ = select.select([events], [], [], args.interval)
        except InterruptedError:
            continue
        if readable:
            woken += 1
            _drain(events)
    probe.close()
    events.close()
    end = {
        "t": time.monotonic(),
        "end": True,
        "samples": samples,
        "woken_by_events": woken,
        "max_gap": max_gap,
    }
    print(json.dumps(end), flush=True)
    return 0


class VipWatch:
    """The `watch` helper in a lab node, sampling `address` on `ifname` every `interval`."""

    def __init__(
        self,
        lab: Lab,
        node: str,
        address: IPAddress,
        out: Path,
        *,
        ifname: str = "eth0",
        interval: float = 0.005,
        seconds: float = 600.0,
    ) -> None:
        self.node, self.out = node, out
        self._file = out.open("w")
        argv = [sys.executable, "-m", "lab.keepalived", "watch", "--ifname", ifname]
        argv += ["--address", str(address), "--interval", str(interval), "--seconds", str(seconds)]
        self.proc: subprocess.Popen[Any] = lab.popen(
            node, argv, stdout=self._file, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.summary: dict[str, Any] = {}

    def _lines(self) -> list[dict[str, Any]]:
        text = self.out.read_text()
        lines = []
        for line in text.splitlines():
            if line.startswith("{") and line.endswith("}"):
                lines.append(json.loads(line))
        return lines

    def timeline(self) -> Timeline:
        return [(x["t"], x["present"]) for x in self._lines() if "present" in x]

    def present(self) -> bool | None:
        """The latest sampled state; None before the first sample."""
        assert self.proc.poll() is None, f"VIP watcher in {self.node} died: {self.out.read_text()}"
        line = self.timeline()
        return line[-1][1] if line else None

    def ready(self, timeout: float = 15.0) -> None:
        wait_until(f"VIP watcher in {self.node}", lambda: self.present() is not None, timeout)

    def stop(self) -> Timeline:
        end_process(self.proc)
        self._file.close()
        ends = [x for x in self._lines() if x.get("end")]
        assert ends, f"VIP watcher in {self.node} left no summary: {self.out.read_text()}"
        self.summary = ends[-1]
        return self.timeline()

    def first_present_after(self, since: float) -> float | None:
        for t, present in self.timeline():
            if present and t >= since:
                return t
        return None


def intervals(timeline: Timeline, end: float) -> list[tuple[float, float]]:
    """The [start, stop) spans where the timeline says present, closed at `end`."""
    spans = []
    opened: float | None = None
    for t, present in timeline:
        if present and opened is None:
            opened = t
        elif not present and opened is not None:
            spans.append((opened, t))
            opened = None
    if opened is not None:
        spans.append((opened, end))
    return spans


def longest_overlap(a: Timeline, b: Timeline, end: float) -> tuple[float, float | None]:
    """(length, start) of the longest time both timelines were present; (0.0, None) if never."""
    best, at = 0.0, None
    for a0, a1 in intervals(a, end):
        for b0, b1 in intervals(b, end):
            lo, hi = max(a0, b0), min(a1, b1)
            if hi - lo > best:
                best, at = hi - lo, lo
    return best, at


@contextmanager
def watching(
    lab: Lab, address: IPAddress, workdir: Path, nodes: Sequence[str]
) -> Iterator[dict[str, VipWatch]]:
    """A `VipWatch` per node, all sampling before the body runs, all stopped after it."""
    with ExitStack() as stack:
        watches: dict[str, VipWatch] = {}
        for node in nodes:
            w = VipWatch(lab, node, address, workdir / f"vip-{node}.jsonl")
            watches[node] = w
            stack.callback(w.stop)
        for w in watches.values():
            w.ready()
        yield watches


# -- capture -----------------------------------------------------------------------------------

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
PROTO_VRRP, PROTO_AH = 112, 51


def vrrp_source(frame: bytes) -> tuple[IPAddress, bytes] | None:
    """(source, IP packet) of a VRRP or AH Ethernet frame; None for anything else."""
    if len(frame) < 14:
        return None
    kind, packet = int.from_bytes(frame[12:14], "big"), frame[14:]
    if kind == ETH_P_IP and len(packet) >= 20 and packet[9] in (PROTO_VRRP, PROTO_AH):
        total = int.from_bytes(packet[2:4], "big")
        return ipaddress.IPv4Address(packet[12:16]), packet[:total]
    if kind == ETH_P_IPV6 and len(packet) >= 40 and packet[6] == PROTO_VRRP:
        total = 40 + int.from_bytes(packet[4:6], "big")
        return ipaddress.IPv6Address(packet[8:24]), packet[:total]
    return None


def _capture(args: argparse.Namespace) -> int:
    sources = {ipaddress.ip_address(s) for s in args.src} if args.src else None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.ifname, 0))
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + args.seconds
    got = 0
    while got < args.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            break
        found = vrrp_source(frame)
        if found is None or (sources is not None and found[0] not in sources):
            continue
        got += 1
        print(json.dumps({"t": time.monotonic(), "hex": found[1].hex()}), flush=True)
    sock.close()
    return 0


# -- golden VRRPv3 adverts from keepalived -----------------------------------------------------

GOLDEN_ABOUT = (
    "VRRPv3 adverts captured from keepalived 2.2.7 (Debian) in the namespace lab: keepalived in "
    "dir2 (192.0.2.3, 2001:db8:0:1::3, IPv6 adverts from its link-local address), read in dir1 "
    "(192.0.2.2) from an AF_PACKET socket. Hex of the whole IP packet (IPv4 or IPv6 header "
    "included); 'src'/'dst' are its addresses. The instance's configuration is in 'config' "
    "(keepalived.conf terms; every instance 'state BACKUP', no peer, so each becomes MASTER on its "
    "own). The priority-0 adverts were sent on SIGTERM. Re-capture: "
    "`python -m lab.keepalived golden-v3 tests/data/keepalived-2.2.7-vrrp-v3.json` (root)."
)
DIR1_4, DIR2_4 = "192.0.2.2", "192.0.2.3"
DIR1_6, DIR2_6 = "2001:db8:0:1::2", "2001:db8:0:1::3"
GOLDEN_INSTANCES = (
    KeepalivedInstance(61, 100, ("192.0.2.100/24",), 3, 0.1, name="V4_MCAST"),
    KeepalivedInstance(
        62,
        150,
        ("192.0.2.101/24",),
        3,
        0.1,
        name="V4_UCAST",
        unicast_src=DIR2_4,
        unicast_peers=(DIR1_4,),
    ),
    KeepalivedInstance(63, 100, ("2001:db8:0:1::100/64",), 3, 0.1, name="V6_MCAST"),
    KeepalivedInstance(64, 254, ("192.0.2.102/24", "192.0.2.103/24"), 3, 1.0, name="V4_TWO_VIPS"),
    KeepalivedInstance(
        65,
        200,
        ("2001:db8:0:1::101/64",),
        3,
        0.5,
        name="V6_UCAST",
        unicast_src=DIR2_6,
        unicast_peers=(DIR1_6,),
    ),
)


def _instance_config(inst: KeepalivedInstance) -> dict[str, Any]:
    out: dict[str, Any] = {
        "vrrp_instance": inst.name,
        "virtual_router_id": inst.vrid,
        "priority": inst.priority,
        "advert_int": inst.advert_int,
        "version": inst.version,
        "virtual_ipaddress": list(inst.vips),
    }
    if inst.unicast_peers:
        out["unicast_src_ip"] = inst.unicast_src
        out["unicast_peer"] = list(inst.unicast_peers)
    return out


@dataclass(frozen=True)
class Captured:
    raw: bytes
    src: IPAddress
    dst: IPAddress
    vrid: int
    priority: int

    @classmethod
    def parse(cls, raw: bytes) -> Captured:
        v4 = raw[0] >> 4 == 4
        at = (raw[0] & 0x0F) * 4 if v4 else 40
        src = ipaddress.ip_address(raw[12:16] if v4 else raw[8:24])
        dst = ipaddress.ip_address(raw[16:20] if v4 else raw[24:40])
        return cls(raw, src, dst, raw[at + 1], raw[at + 2])

    @property
    def ttl(self) -> int:
        return self.raw[8] if self.src.version == 4 else self.raw[7]

    @property
    def tos(self) -> int:
        """IPv4 TOS or IPv6 traffic class."""
        if self.src.version == 4:
            return self.raw[1]
        return ((self.raw[0] & 0x0F) << 4) | (self.raw[1] >> 4)


def _hex_lines(path: Path) -> list[Captured]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{") and line.endswith("}") and "hex" in line:
            out.append(Captured.parse(bytes.fromhex(json.loads(line)["hex"])))
    return out


def capture_golden_v3(lab: Lab, workdir: Path) -> dict[str, Any]:
    """Run GOLDEN_INSTANCES in keepalived in dir2 and capture their adverts in dir1."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = keepalived_conf(GOLDEN_INSTANCES, router_id="ka_golden")
    argv = [sys.executable, "-m", "lab.keepalived", "capture", "--ifname", "eth0"]
    argv += ["--count", "1000", "--seconds", "30"]
    out = workdir / "capture.jsonl"
    vrids = {i.vrid for i in GOLDEN_INSTANCES}

    def vrids_seen(zero: bool) -> set[int]:
        return {p.vrid for p in _hex_lines(out) if (p.priority == 0) == zero}

    with out.open("w") as sink:
        cap = lab.popen("dir1", argv, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_until("capture ready", lambda: "ready" in out.read_text(), timeout=15)
            with running_keepalived(lab, "dir2", conf, workdir) as ka:
                wait_until(
                    "an advert of every golden instance",
                    lambda: vrids_seen(False) >= vrids,
                    timeout=15,
                )
                code = ka.stop()  # SIGTERM: priority 0 from every master
                log = ka.log()
            if code != 0:
                raise RuntimeError(f"keepalived exited {code}:\n{log}")
            wait_until("every priority-0 advert", lambda: vrids_seen(True) >= vrids, timeout=5)
        finally:
            end_process(cap)
    by_vrid = {i.vrid: i for i in GOLDEN_INSTANCES}
    packets: list[dict[str, Any]] = []
    seen: set[tuple[int, bool]] = set()
    for p in _hex_lines(out):
        inst = by_vrid.get(p.vrid)
        ours = str(p.src) in (DIR2_4, DIR2_6) or p.src.is_link_local
        key = (p.vrid, p.priority == 0)
        if inst is None or not ours or key in seen:
            continue
        seen.add(key)
        name = inst.name.lower().replace("_", "-") + ("-priority0" if key[1] else "")
        packets.append(
            {
                "name": name,
                "src": str(p.src),
                "dst": str(p.dst),
                "ttl": p.ttl,
                "tos": p.tos,
                "priority": p.priority,
                "config": _instance_config(inst),
                **({"note": "sent on SIGTERM"} if key[1] else {}),
                "hex": p.raw.hex(),
            }
        )
    missing = {(i.vrid, z) for i in GOLDEN_INSTANCES for z in (False, True)} - seen
    if missing:
        raise RuntimeError(f"no capture for (vrid, priority 0) {sorted(missing)}:\n{log}")
    packets.sort(key=lambda p: (p["config"]["virtual_router_id"], p["priority"] == 0))
    return {"about": GOLDEN_ABOUT, "keepalived": "2.2.7", "packets": packets}


def _golden(args: argparse.Namespace) -> int:
    from lab import netns
    from lab.core import Lab, require_support
    from lab.topology import default_topology

    require_support()
    prefix = ""
    for _ in range(20):
        prefix = "kg" + secrets.token_hex(2)
        if not any(ns.startswith(prefix + "-") for ns in netns.listnetns()):
            break
    with (
        tempfile.TemporaryDirectory(prefix="keepalived-golden-") as work,
        Lab(default_topology(prefix)) as lab,
    ):
        data = capture_golden_v3(lab, Path(work))
    Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
    print(f"{len(data['packets'])} packets written to {args.out}")
    return 0


# -- CLI ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.keepalived", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    watch = sub.add_parser("watch", help="sample an address's presence on an interface")
    watch.add_argument("--ifname", default="eth0")
    watch.add_argument("--address", required=True)
    watch.add_argument("--interval", type=float, default=0.005)
    watch.add_argument("--seconds", type=float, default=600.0)
    cap = sub.add_parser("capture", help="print VRRP/AH packets as hex")
    cap.add_argument("--ifname", default="eth0")
    cap.add_argument("--src", action="append", default=[])
    cap.add_argument("--count", type=int, default=10)
    cap.add_argument("--seconds", type=float, default=15.0)
    golden = sub.add_parser("golden-v3", help="capture keepalived's VRRPv3 adverts (root)")
    golden.add_argument("out")
    args = parser.parse_args(argv)
    if args.cmd == "watch":
        if not (0.001 <= args.interval <= 1 and 0 < args.seconds <= 3600):
            parser.error("bounded: interval 1 ms-1 s, at most 3600 s")
        return _watch(args)
    if args.cmd == "capture":
        if not (0 < args.count <= 1000 and 0 < args.seconds <= 120):
            parser.error("bounded: at most 1000 packets and 120 s")
        return _capture(args)
    return _golden(args)


if __name__ == "__main__":
    sys.exit(main())
