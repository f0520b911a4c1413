"""VRRPv2 authentication against keepalived 2.2.7, both directions, in the namespace lab.

- keepalived -> us: its AH adverts, captured in dir1, verify with `verify_ah` (multicast and
  unicast), a tampered copy or a wrong key does not.
- us -> keepalived: adverts built by `build_ah_packet` (priority 200, from dir1) keep a keepalived
  in dir2 (priority 100) in BACKUP past its 3.61 s master-down time only if it validated them: a
  wrong key, a replayed sequence number or an IP id left for the kernel to fill make it MASTER.
- keepalived's AH counter is one number for both directions: after our adverts stop, its own
  first advert as master carries our last sequence number + 1.
- `pass`: the same with the 8-byte password in the VRRPv2 authentication data.

This file is also the helper that runs inside the namespaces (`python THIS send|capture ...`):
raw sockets must be opened in the node's namespace, and a child process is the simplest way.
Every loop has a count and a deadline; every process started here is stopped by pid.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from director.vrrp.auth import (
    PROTO_AH,
    build_ah_packet,
    icv,
    next_ip_id,
    password_field,
    verify_ah,
)
from director.vrrp.packet import MCAST4, PROTO_VRRP, Advert, AuthType, checksum, encode
from director.vrrp.receive import Expect, check_ipv4
from lab.core import Lab
from lab.keepalived import Keepalived, running_keepalived

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve()
KEY = "s3cret"
VIP = ipaddress.IPv4Address("192.0.2.100")
VRID = 51
DIR1 = ipaddress.IPv4Address("192.0.2.2")
DIR2 = ipaddress.IPv4Address("192.0.2.3")
MASTER_DOWN = 3 * 1 + (256 - 100) / 256  # keepalived's priority-100 backup, advert_int 1
OBSERVE = MASTER_DOWN + 2.5  # how long "stays BACKUP" is watched, from its (init)


# -- helper side: runs inside a namespace ------------------------------------------------------


def _ifindex(ifname: str) -> int:
    return socket.if_nametoindex(ifname)


def _send(args: argparse.Namespace) -> int:
    src, dst = ipaddress.IPv4Address(args.src), ipaddress.IPv4Address(args.dst)
    key = password_field(args.key)
    auth = AuthType.AH if args.auth == "ah" else AuthType.PASS
    advert = Advert(
        version=2,
        vrid=args.vrid,
        priority=args.priority,
        interval_cs=100,
        addresses=(VIP,),
        auth_type=auth,
        auth_data=key if auth is AuthType.PASS else bytes(8),
    )
    vrrp = encode(advert, src, dst)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.ifname.encode())
    mreqn = struct.pack("=4s4si", b"\0" * 4, b"\0" * 4, _ifindex(args.ifname))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    seq, ip_id = args.seq, 0
    start = time.monotonic()
    for n in range(args.count):
        ip_id = next_ip_id(ip_id)
        if auth is AuthType.AH:
            packet = build_ah_packet(src, dst, vrrp, key, seq, ip_id)
            if args.zero_id:
                # The ICV over id 0, and id 0 left for the kernel to fill in on send.
                raw = bytearray(packet)
                raw[4:6] = b"\0\0"
                raw[32:44] = icv(bytes(raw), key, unicast=not dst.is_multicast)
                packet = bytes(raw)
        else:
            head = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0xC0,
                20 + len(vrrp),
                ip_id,
                0,
                255,
                PROTO_VRRP,
                0,
                src.packed,
                dst.packed,
            )
            head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
            packet = head + vrrp
        sock.sendto(packet, (str(dst), 0))
        print(json.dumps({"seq": seq, "id": ip_id, "t": time.monotonic() - start}), flush=True)
        seq += args.seq_step
        # Paced on the clock, not slept in steps: advert n+1 is due at start + (n+1) * interval.
        delay = start + (n + 1) * args.interval - time.monotonic()
        if delay > 0 and n + 1 < args.count:
            time.sleep(delay)
    sock.close()
    return 0


def _capture(args: argparse.Namespace) -> int:
    """Print (hex) up to --count IPv4 packets of --proto from --src, for at most --seconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, args.proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.ifname.encode())
    mreqn = struct.pack("=4s4si", MCAST4.packed, b"\0" * 4, _ifindex(args.ifname))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    print(json.dumps({"ready": True}), flush=True)
    deadline = time.monotonic() + args.seconds
    got = 0
    while got < args.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data, (addr, _) = sock.recvfrom(65535)
        except TimeoutError:
            break
        if addr == args.src:
            got += 1
            print(json.dumps({"hex": data.hex(), "t": time.time()}), flush=True)
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    send = sub.add_parser("send")
    send.add_argument("--src", required=True)
    send.add_argument("--dst", default=str(MCAST4))
    send.add_argument("--ifname", default="eth0")
    send.add_argument("--auth", choices=["ah", "pass"], default="ah")
    send.add_argument("--key", default=KEY)
    send.add_argument("--vrid", type=int, default=VRID)
    send.add_argument("--priority", type=int, default=200)
    send.add_argument("--seq", type=int, default=1)
    send.add_argument("--seq-step", type=int, default=1)
    send.add_argument("--count", type=int, default=10)
    send.add_argument("--interval", type=float, default=1.0)
    send.add_argument("--zero-id", action="store_true")
    cap = sub.add_parser("capture")
    cap.add_argument("--src", required=True)
    cap.add_argument("--ifname", default="eth0")
    cap.add_argument("--proto", type=int, default=PROTO_AH)
    cap.add_argument("--count", type=int, default=3)
    cap.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.cmd == "capture" else args.count * args.interval
    if not 0 < args.count <= 30 or seconds > 60:
        parser.error("bounded: at most 30 packets and 60 s")
    return _send(args) if args.cmd == "send" else _capture(args)


# -- test side ---------------------------------------------------------------------------------


def keepalived_conf(
    auth: str = "AH", password: str = KEY, priority: int = 100, unicast_peer: str | None = None
) -> str:
    peers = f"  unicast_peer {{\n    {unicast_peer}\n  }}\n" if unicast_peer else ""
    return (
        "global_defs {\n  router_id ka_dir2\n}\n"
        "vrrp_instance VI_1 {\n"
        "  state BACKUP\n"
        "  interface eth0\n"
        f"  virtual_router_id {VRID}\n"
        f"  priority {priority}\n"
        "  advert_int 1\n"
        "  version 2\n"
        f"{peers}"
        f"  authentication {{\n    auth_type {auth}\n    auth_pass {password}\n  }}\n"
        f"  virtual_ipaddress {{\n    {VIP}/24\n  }}\n"
        "}\n"
    )


@contextmanager
def helper(lab: Lab, node: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """This file run as a script in `node`'s namespace; stopped by pid on exit."""
    argv = [sys.executable, str(HERE), *args]
    proc = lab.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def json_lines(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_ready(proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """The capture helper prints one line once its socket has joined the group.

    Read byte by byte from the pipe itself, so nothing after that line is left in a Python
    buffer that `communicate` (which reads the file descriptor) would not see."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            raise AssertionError(f"capture helper not ready in {timeout} s")
        byte = os.read(fd, 1)
        assert byte, f"capture helper exited: {proc.stderr.read() if proc.stderr else ''}"
        line += byte
    assert json.loads(line) == {"ready": True}, line


def vip_present(lab: Lab, node: str = "dir2") -> bool:
    out = lab.run(node, ["ip", "-br", "-4", "addr", "show", "dev", "eth0"], capture_output=True)
    assert out.returncode == 0, out.stderr
    return f" {VIP}/" in out.stdout.decode()


def wait_vip(lab: Lab, timeout: float, node: str = "dir2") -> float:
    """Poll until the VIP is on `node`; seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if vip_present(lab, node):
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"VIP {VIP} never appeared on {node} in {timeout} s")


def stays_backup(lab: Lab, ka: Keepalived, since: float, seconds: float = OBSERVE) -> None:
    """The VIP stays off dir2 from `since` until `seconds` later, polled all along."""
    polls = 0
    while time.monotonic() < since + seconds:
        assert not vip_present(lab), f"keepalived took the VIP:\n{ka.log()}"
        assert ka.proc is not None and ka.proc.poll() is None, ka.log()
        polls += 1
        time.sleep(0.2)
    assert polls >= seconds / 0.5  # really watched, not skipped
    assert "Entering MASTER STATE" not in ka.log(), ka.log()


def sender_args(**kw: Any) -> list[str]:
    args = {"src": str(DIR1), "priority": 200, "count": 10, **kw}
    out = ["send"]
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


# -- keepalived -> us --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["multicast", "unicast"])
def test_keepalived_ah_adverts_verify(lab: Lab, tmp_path: Path, mode: str) -> None:
    unicast = mode == "unicast"
    conf = keepalived_conf(unicast_peer=str(DIR1) if unicast else None)
    key = password_field(KEY)
    with (
        helper(lab, "dir1", "capture", "--src", str(DIR2), "--count", "3") as cap,
        running_keepalived(lab, "dir2", conf, tmp_path / "ka") as ka,
    ):
        wait_ready(cap)
        lines = json_lines(cap, timeout=30)
        log = ka.log()
    packets = [bytes.fromhex(x["hex"]) for x in lines]
    assert len(packets) == 3, log
    seqs = []
    for n, p in enumerate(packets):
        assert p[9] == PROTO_AH and p[1] == 0xC0 and p[8] == 255
        assert p[16:20] == (DIR1 if unicast else MCAST4).packed
        assert int.from_bytes(p[4:6], "big") == n + 1  # keepalived's IP id: 1, 2, 3
        seq = verify_ah(p, 20, key, unicast)
        assert seq is not None, p.hex()
        seqs.append(seq)
        assert verify_ah(p, 20, password_field("s3creT"), unicast) is None
        assert verify_ah(p, 20, key, not unicast) is None  # TTL in or out of the ICV matters
        for at in (4, 12, 19, 20 + 7, 20 + 30, len(p) - 1):  # id, src, dst, seq, ICV, VRRP
            bad = bytearray(p)
            bad[at] ^= 0x01
            assert verify_ah(bytes(bad), 20, key, unicast) is None, at
        # and our sender builds the very same bytes
        vrrp = p[44:]
        dst = ipaddress.IPv4Address(p[16:20])
        ip_id = int.from_bytes(p[4:6], "big")
        assert build_ah_packet(DIR2, dst, vrrp, key, seq, ip_id) == p
        # receive.check_ipv4 with the AH hook accepts it
        expect = Expect(
            version=2,
            vrid=VRID,
            interval_cs=100,
            addresses=frozenset({VIP}),
            auth_type=AuthType.AH,
            password=key,
            ah_check=lambda pkt, ihl: verify_ah(pkt, ihl, key, unicast) is not None,
        )
        assert check_ipv4(p, {VRID: expect}).advert.priority == 100
    assert seqs == [1, 2, 3]


# -- us -> keepalived --------------------------------------------------------------------------


def test_keepalived_obeys_our_ah_adverts_and_shares_the_counter(lab: Lab, tmp_path: Path) -> None:
    count, first = 10, 1000
    with (
        helper(lab, "dir1", *sender_args(seq=first, count=count)) as sender,
        running_keepalived(lab, "dir2", keepalived_conf(), tmp_path / "ka") as ka,
    ):
        since = ka.wait_log(r"Entering BACKUP STATE", timeout=10)
        stays_backup(lab, ka, since)
        assert "IPSEC-AH" not in ka.log(), ka.log()  # not one advert refused
        with helper(lab, "dir1", "capture", "--src", str(DIR2), "--count", "2") as cap:
            wait_ready(cap)
            sent = json_lines(sender, timeout=count + 10)
            waited = wait_vip(lab, timeout=MASTER_DOWN + 5)  # our adverts stopped: it takes over
            theirs = json_lines(cap, timeout=30)
    assert [x["seq"] for x in sent] == list(range(first, first + count))
    # it took over one master-down time after our last advert: that advert had reset its timer
    assert waited > MASTER_DOWN - 0.5, waited
    seqs = [verify_ah(bytes.fromhex(x["hex"]), 20, password_field(KEY), False) for x in theirs]
    # One counter for both directions: it goes on from the last number it accepted from us.
    assert seqs == [first + count, first + count + 1], ka.log()


@pytest.mark.parametrize(
    ("case", "args", "logged"),
    [
        ("wrong key", {"key": "s3creT"}, r"IPSEC-AH : invalid IPSEC HMAC-MD5"),
        ("replayed seq", {"seq": 5, "seq_step": 0}, r"sequence number 5 already processed"),
        ("id left to kernel", {"zero_id": True}, r"IPSEC-AH : invalid IPSEC HMAC-MD5"),
    ],
)
def test_keepalived_refuses_bad_ah_adverts(
    lab: Lab, tmp_path: Path, case: str, args: dict[str, Any], logged: str
) -> None:
    with (
        helper(lab, "dir1", *sender_args(count=15, **args)) as sender,
        running_keepalived(lab, "dir2", keepalived_conf(), tmp_path / "ka") as ka,
    ):
        since = ka.wait_log(r"Entering BACKUP STATE", timeout=10)
        wait_vip(lab, timeout=MASTER_DOWN + 5)
        became = time.monotonic() - since
        ka.wait_log(logged, timeout=5)
        assert sender.poll() is None, "the sender was still sending when keepalived took over"
    # it did not take over early either: it waited for its master-down timer
    assert became > MASTER_DOWN - 0.5, (case, became)


@pytest.mark.parametrize("good", [True, False], ids=["right password", "wrong password"])
def test_keepalived_pass_auth(lab: Lab, tmp_path: Path, good: bool) -> None:
    password = KEY if good else "s3creT"
    conf = keepalived_conf(auth="PASS")
    with (
        helper(lab, "dir1", *sender_args(auth="pass", key=password, count=10)),
        running_keepalived(lab, "dir2", conf, tmp_path / "ka") as ka,
    ):
        since = ka.wait_log(r"Entering BACKUP STATE", timeout=10)
        if good:
            stays_backup(lab, ka, since)
            assert "invalid passwd" not in ka.log()
        else:
            wait_vip(lab, timeout=MASTER_DOWN + 5)
            ka.wait_log(r"received an invalid passwd", timeout=5)


if __name__ == "__main__":
    sys.exit(main())
