"""LVS scenarios on the lab (in the VM: IPVS, tunnels): backends, real-server preparation by
hand, director configs, the director CLI in a node, and IPVS counters as ipvsadm shows them.

Real-server preparation here is the classic shell recipe done directly (VIP on lo or a tunnel
device, arp sysctls), so that IPVS tests do not depend on the realserver tool.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lab.core import Lab
from lab.topology import BACKEND_GW4, VIP4

PY = sys.executable
VIP = str(VIP4)
BACKEND_GW = str(BACKEND_GW4)


def run(lab: Lab, node: str, argv: list[str], timeout: float = 120) -> str:
    done = lab.run(node, argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(
            f"{node}: {' '.join(argv)} exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return str(done.stdout)


def sysctl(lab: Lab, node: str, name: str, value: int) -> None:
    run(lab, node, ["sysctl", "-qw", f"{name}={value}"])


@dataclass
class Backend:
    proc: subprocess.Popen[str]
    node: str
    name: str


@contextmanager
def backends(lab: Lab, specs: list[tuple[str, str, list[str]]]) -> Iterator[list[Backend]]:
    """(node, name, listen addresses) -> running `lab.web serve`, each ready before yielding."""
    started: list[Backend] = []
    try:
        for node, name, listens in specs:
            argv = [PY, "-m", "lab.web", "serve", "--name", name]
            for item in listens:
                argv += ["--listen", item]
            proc = lab.popen(node, argv, stdout=subprocess.PIPE, text=True)
            started.append(Backend(proc, node, name))
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until bound, or EOF if it died
            assert line.strip() == "ready", f"backend {name} on {node} did not start: {line!r}"
        yield started
    finally:
        for b in started:
            if b.proc.poll() is None:
                b.proc.terminate()
                try:
                    b.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    b.proc.kill()
                    b.proc.wait(timeout=10)


def prepare_dr(lab: Lab, node: str, vip: str = VIP) -> None:
    """The classic DR real server: VIP on lo, never answer or announce ARP for it."""
    for iface in ("all", "eth0"):
        sysctl(lab, node, f"net.ipv4.conf.{iface}.arp_ignore", 1)
        sysctl(lab, node, f"net.ipv4.conf.{iface}.arp_announce", 2)
    run(lab, node, ["ip", "addr", "replace", f"{vip}/32", "dev", "lo"])


def prepare_tun(lab: Lab, node: str, kind: str, vip: str = VIP, gue_port: int = 0) -> None:
    """A TUN real server: the fallback tunnel device up with the VIP; rp_filter off so the
    decapsulated packet (source: the client, arriving on the tunnel) is not dropped."""
    device = {"ipip": "tunl0", "gue": "tunl0", "gre": "gre0"}[kind]
    run(lab, node, ["modprobe", "-a", "ipip", "ip_gre", "fou"])
    run(lab, node, ["ip", "link", "set", device, "up"])
    run(lab, node, ["ip", "addr", "replace", f"{vip}/32", "dev", device])
    for iface in ("all", "default", device):
        sysctl(lab, node, f"net.ipv4.conf.{iface}.rp_filter", 0)
    if kind == "gue":
        listed = run(lab, node, ["ip", "fou", "show"])
        if f"port {gue_port}" not in listed:
            run(lab, node, ["ip", "fou", "add", "port", str(gue_port), "gue"])


def write_config(path: Path, node: str, services: list[dict[str, Any]], **extra: Any) -> Path:
    body: dict[str, Any] = {
        "node": {
            "name": node,
            "control_socket": str(path.parent / f"{node}.sock"),
            "state_dir": str(path.parent / f"{node}-state"),
        },
        "services": services,
        **extra,
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def web_service(forwarding: str, reals: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The lab's usual service: `web`, VIP:80, round robin."""
    return {
        "name": "web",
        "vip": VIP,
        "port": 80,
        "scheduler": "rr",
        "forwarding": forwarding,
        "real_servers": reals,
        **extra,
    }


def director(lab: Lab, node: str, *args: str) -> str:
    return run(lab, node, [PY, "-m", "director", *args])


def fetch(
    lab: Lab, url: str, count: int, source: str | None = None, node: str = "client"
) -> dict[str, Any]:
    """`count` requests, a new connection each; the counts per real server name. curl in a
    shell loop: one Python start-up costs seconds under the VM's emulation, a curl does not."""
    bind = f"--interface {source} " if source else ""
    script = (
        f"i=0; while [ $i -lt {int(count)} ]; do "
        f"curl -s -m 3 {bind}{url} || printf '{{\"error\": %d}}' $?; echo; i=$((i+1)); done"
    )
    done = lab.run(node, ["sh", "-c", script], capture_output=True, text=True, timeout=300)
    names: dict[str, int] = {}
    clients: set[str] = set()
    servers: set[str] = set()
    errors: list[str] = []
    for line in done.stdout.splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            errors.append(line)
            continue
        if "error" in data:
            errors.append(f"curl exit {data['error']}")
            continue
        names[data["name"]] = names.get(data["name"], 0) + 1
        clients.add(data["client"])
        servers.add(data["server"])
    return {
        "names": names,
        "errors": len(errors),
        "error_samples": errors[:5],
        "clients": sorted(clients),
        "servers": sorted(servers),
    }


_ROW = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)")


def ipvs_stats(lab: Lab, node: str) -> dict[str, tuple[int, int, int]]:
    """Per service (`TCP 192.0.2.100:80`): connections, in-packets, out-packets."""
    out = run(lab, node, ["ipvsadm", "-Ln", "--stats", "--exact"])
    stats: dict[str, tuple[int, int, int]] = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m:
            stats[f"{m.group(1)} {m.group(2)}"] = (
                int(m.group(3)),
                int(m.group(4)),
                int(m.group(5)),
            )
    return stats


def settled_stats(lab: Lab, node: str, service: str, conns: int) -> tuple[int, int, int]:
    """The counters once the kernel's 2 s estimator has folded in at least `conns`
    connections (bounded wait; the counters are not evented)."""
    deadline = time.monotonic() + 15
    while True:
        row = ipvs_stats(lab, node).get(service, (0, 0, 0))
        if row[0] >= conns and row[1] > 0:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"{service} on {node}: counters never reached {conns}: {row}")
        time.sleep(0.25)


def ipvsadm(lab: Lab, node: str) -> str:
    return run(lab, node, ["ipvsadm", "-Ln"])


@contextmanager
def replies_seen(lab: Lab, node: str, *clients: str) -> Iterator[Callable[[], int]]:
    """Count the TCP packets addressed to `clients` (IPv4 or IPv6) that arrive at `node`
    (nftables, prerouting, before IPVS and routing). Yields a reader of the total. In DR and TUN
    the real servers answer the client directly, so the director must see none; in NAT every
    reply comes through it. IPVS's own out-packet counter cannot tell: it counts NAT only."""
    table = "dlab_replies"
    run(lab, node, ["nft", "add", "table", "inet", table])
    try:
        chain = "{ type filter hook prerouting priority -400 ; }"
        run(lab, node, ["nft", "add", "chain", "inet", table, "pre", chain])
        for client in clients:
            family = "ip6" if ":" in client else "ip"
            rule = [family, "daddr", client, "meta", "l4proto", "tcp", "counter"]
            run(lab, node, ["nft", "add", "rule", "inet", table, "pre", *rule])

        def packets() -> int:
            out = run(lab, node, ["nft", "list", "table", "inet", table])
            counts = [int(n) for n in re.findall(r"counter packets (\d+)", out)]
            if len(counts) != len(clients):
                raise AssertionError(f"{node}: expected {len(clients)} counters in\n{out}")
            return sum(counts)

        yield packets
    finally:
        run(lab, node, ["nft", "delete", "table", "inet", table])
