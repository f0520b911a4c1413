"""`status` and `check`: what is applied, whether it still holds, whether the backend will work.

Pure: everything here takes a Snapshot (and the listening sockets) read by the kernel side, so
each finding is testable without a kernel. The readers of /proc/net are at the end.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from realserver.plan import (
    ARP_ANNOUNCE,
    RP_FILTER_OK,
    Snapshot,
    conf_key,
    drift,
    tunnel_device,
    vip_device,
)
from realserver.spec import IPAddress, ServicePort, Spec, VipSpec, spec_to_dict
from realserver.state import State
from realserver.steps import (
    AddAddress,
    AddFou,
    CreateLink,
    DelAddress,
    DelDefaultRoute,
    DeleteLink,
    DelFou,
    SetDefaultRoute,
    SetLinkDown,
    SetLinkUp,
    SetSysctl,
    Step,
)

Level = Literal["ok", "info", "fail"]
# arp_ignore values that keep a VIP on lo or a tunnel unanswered (ip-sysctl.rst): 1 and 2 reply
# only for addresses on the receiving interface, 8 never replies. 3 would still answer it.
ARP_IGNORE_OK = (1, 2, 8)
# Interfaces that never answer ARP for what they hold: loopback, dummies (NOARP) and tunnels.
NOARP_KINDS = frozenset({"dummy", "ipip", "gre", "ip6tnl", "ip6gre", "sit"})


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class Listener:
    protocol: str  # tcp | udp
    address: IPAddress
    port: int


# ---------------------------------------------------------------- check


def effective(snapshot: Snapshot, dev: str, name: str) -> int | None:
    """The value the kernel uses for `dev`: the larger of conf/all and conf/dev (for arp_ignore,
    arp_announce and rp_filter alike); None when the interface has no IPv4 settings."""
    mine = snapshot.sysctls.get(conf_key(4, dev, name))
    every = snapshot.sysctls.get(conf_key(4, "all", name))
    if mine is None:
        return None
    return max(mine, every if every is not None else 0)


def client_ifaces(spec: Spec, snapshot: Snapshot) -> list[str]:
    """The given client-facing interfaces, or else every up interface that can answer ARP and
    holds an IPv4 address (not lo, dummies or tunnels)."""
    if spec.client_ifaces:
        return list(spec.client_ifaces)
    with_v4 = {dev for dev, a in snapshot.addresses if ipaddress.ip_interface(a).version == 4}
    return sorted(
        dev
        for dev, link in snapshot.links.items()
        if dev != "lo" and link.up and link.kind not in NOARP_KINDS and dev in with_v4
    )


def check(spec: Spec, snapshot: Snapshot, listeners: Iterable[Listener]) -> list[Finding]:
    """Everything that must hold for clients to reach this backend through the director."""
    facing = client_ifaces(spec, snapshot)
    out: list[Finding] = []
    for vip in spec.vips:
        out += _check_vip(spec, vip, snapshot, facing)
    if any(v.family == 4 and v.mode in ("dr", "tun") for v in spec.vips):
        out += _check_arp(snapshot, facing)
    out += _check_nat(spec, snapshot)
    listening = list(listeners)
    for port in spec.ports:
        out.append(_check_port(spec, port, listening))
    return out


def _check_vip(
    spec: Spec, vip: VipSpec, snapshot: Snapshot, facing: Sequence[str]
) -> list[Finding]:
    dev = vip_device(spec, vip)
    subject = f"VIP {vip.address} ({vip.mode})"
    if dev is None:
        return [Finding("ok", subject, "held by the director, not here (NAT)")]
    out: list[Finding] = []
    link = snapshot.links.get(dev)
    if link is None:
        out.append(Finding("fail", subject, f"interface {dev} does not exist"))
    elif (dev, vip.interface) not in snapshot.addresses:
        out.append(Finding("fail", subject, f"{vip.interface} is not on {dev}"))
    elif not link.up:
        out.append(Finding("fail", subject, f"{dev} holds {vip.interface} but is down"))
    else:
        out.append(Finding("ok", subject, f"{vip.interface} on {dev}"))
    for other, address in sorted(snapshot.addresses):
        if other == dev or ipaddress.ip_interface(address).ip != vip.address:
            continue
        if other in facing:
            why = "ARP" if vip.family == 4 else "neighbour discovery"
            out.append(Finding("fail", subject, f"also on {other}, which answers {why} for it"))
        else:
            out.append(Finding("info", subject, f"also on {other}"))
    if vip.mode == "tun" and vip.tunnel is not None:
        out += _check_tunnel(vip, snapshot)
    return out


def _check_tunnel(vip: VipSpec, snapshot: Snapshot) -> list[Finding]:
    assert vip.tunnel is not None
    dev, _ = tunnel_device(vip)
    out: list[Finding] = []
    if vip.family == 4 and dev in snapshot.links:
        rp = effective(snapshot, dev, "rp_filter")
        subject = f"rp_filter on {dev}"
        if rp in RP_FILTER_OK:
            out.append(Finding("ok", subject, f"{rp} (decapsulated packets accepted)"))
        else:
            why = f"{rp}: strict filtering drops decapsulated packets (need 0 or 2)"
            out.append(Finding("fail", subject, why))
    if vip.tunnel.type == "gue" and vip.tunnel.port is not None:
        key = (vip.tunnel.port, vip.family)
        subject = f"gue port {vip.tunnel.port} (IPv{vip.family})"
        if key in snapshot.fou_ports:
            out.append(Finding("ok", subject, "receiving"))
        else:
            out.append(Finding("fail", subject, "no fou port: gue packets are not decapsulated"))
    return out


def _check_arp(snapshot: Snapshot, facing: Sequence[str]) -> list[Finding]:
    if not facing:
        return [Finding("info", "ARP", "no client-facing interface found (--client-iface)")]
    out: list[Finding] = []
    for dev in facing:
        subject = f"ARP on {dev}"
        ignore = effective(snapshot, dev, "arp_ignore")
        announce = effective(snapshot, dev, "arp_announce")
        if ignore is None or announce is None:
            out.append(Finding("fail", subject, f"interface {dev} does not exist"))
            continue
        problems = []
        if ignore not in ARP_IGNORE_OK:
            problems.append(f"arp_ignore {ignore} answers for the VIP (need 1)")
        if announce != ARP_ANNOUNCE:
            problems.append(f"arp_announce {announce} may announce the VIP (need 2)")
        if problems:
            out.append(Finding("fail", subject, "; ".join(problems)))
        else:
            detail = f"arp_ignore {ignore}, arp_announce {announce} (effective)"
            out.append(Finding("ok", subject, detail))
    return out


def _check_nat(spec: Spec, snapshot: Snapshot) -> list[Finding]:
    out: list[Finding] = []
    for family in sorted({v.family for v in spec.of_mode("nat")}):
        subject = f"IPv{family} replies"
        current = snapshot.default_routes.get(family)
        if spec.gateway is not None and spec.gateway.version == family:
            if current == str(spec.gateway):
                out.append(Finding("ok", subject, f"default route via {current} (the director)"))
            else:
                was = f"via {current}" if current else "missing"
                detail = f"default route {was}, not via the director's {spec.gateway}"
                out.append(Finding("fail", subject, detail))
        elif current is None:
            detail = "no default route: replies cannot reach the director (--set-gateway ADDR)"
            out.append(Finding("fail", subject, detail))
        else:
            detail = f"default route via {current}: it must be the director's backend VIP"
            out.append(Finding("info", subject, detail))
    return out


def _check_port(spec: Spec, port: ServicePort, listening: Sequence[Listener]) -> Finding:
    subject = f"service {port}"
    if port.protocol == "sctp":
        return Finding("info", subject, "sctp listeners are not checked")
    vip = next((v for v in spec.vips if v.address == port.address), None)
    mine = [s for s in listening if s.protocol == port.protocol and s.port == port.port]
    if vip is not None and vip.mode == "nat":
        if mine:
            return Finding("ok", subject, f"listening on {_where(mine[0])} (NAT: any address)")
        return Finding("fail", subject, f"nothing listens on {port.protocol} port {port.port}")
    for sock in mine:
        if sock.address == port.address:
            return Finding("ok", subject, f"listening on {_where(sock)}")
    for sock in mine:
        if sock.address.is_unspecified and sock.address.version == port.address.version:
            return Finding("ok", subject, f"listening on {_where(sock)}")
    for sock in mine:
        if sock.address == ipaddress.IPv6Address("::") and port.address.version == 4:
            # Dual-stack unless the socket set IPV6_V6ONLY, which /proc does not show.
            return Finding("ok", subject, f"listening on {_where(sock)} (if not IPv6-only)")
    return Finding("fail", subject, f"nothing listens on {port}")


def _where(sock: Listener) -> str:
    host = f"[{sock.address}]" if sock.address.version == 6 else str(sock.address)
    return f"{host}:{sock.port}"


def failed(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "fail"]


def format_findings(findings: Sequence[Finding]) -> str:
    marks = {"ok": "ok  ", "info": "info", "fail": "FAIL"}
    lines = [f"{marks[f.level]}  {f.subject}: {f.detail}" for f in findings]
    bad = len(failed(findings))
    lines.append(f"{bad} problem(s) found" if bad else "all checks passed")
    return "\n".join(lines)


# ---------------------------------------------------------------- status


def in_effect(step: Step, snapshot: Snapshot) -> bool:
    """Whether the kernel still holds the change `step` made."""
    match step:
        case SetSysctl(key, value, _):
            return snapshot.sysctls.get(key) == value
        case CreateLink(dev, _):
            return dev in snapshot.links
        case DeleteLink(dev, _):
            return dev not in snapshot.links
        case SetLinkUp(dev):
            return dev in snapshot.links and snapshot.links[dev].up
        case SetLinkDown(dev):
            return dev in snapshot.links and not snapshot.links[dev].up
        case AddAddress(dev, address):
            return (dev, address) in snapshot.addresses
        case DelAddress(dev, address):
            return (dev, address) not in snapshot.addresses
        case AddFou(port, family):
            return (port, family) in snapshot.fou_ports
        case DelFou(port, family):
            return (port, family) not in snapshot.fou_ports
        case SetDefaultRoute(family, gateway, _):
            return snapshot.default_routes.get(family) == gateway
        case DelDefaultRoute(family, gateway):
            return snapshot.default_routes.get(family) != gateway
    raise TypeError(f"not a step: {step!r}")  # pragma: no cover


def describe_spec(spec: Spec) -> list[str]:
    lines = []
    for vip in spec.vips:
        where = vip_device(spec, vip)
        how: str = vip.mode
        if vip.tunnel is not None:
            how += f" {vip.tunnel.type}" + (f" port {vip.tunnel.port}" if vip.tunnel.port else "")
        lines.append(f"VIP {vip.address} {how}" + (f" on {where}" if where else ""))
    if spec.dummy:
        lines.append(f"{spec.iface} is a dummy interface made by realserver")
    if spec.client_ifaces:
        lines.append("client-facing interfaces: " + ", ".join(spec.client_ifaces))
    if spec.gateway is not None:
        lines.append(f"NAT gateway (default route): {spec.gateway}")
    if spec.ports:
        lines.append("service ports: " + ", ".join(str(p) for p in spec.ports))
    return lines


def status_report(
    state: State | None, state_file: Path, netns: int, spec: Spec | None, snapshot: Snapshot
) -> dict[str, Any]:
    """What `status` shows, as JSON-able data. `spec` is the one given on the command line, or
    else the recorded one; drift is what `start` would change now."""
    applied = [
        {"step": step.describe(), "op": step.op, "in_effect": in_effect(step, snapshot)}
        for step in (state.steps if state is not None else ())
    ]
    pending = drift(spec, snapshot) if spec is not None else []
    return {
        "started": state is not None,
        "netns": netns,
        "state_file": str(state_file),
        "spec": spec_to_dict(spec) if spec is not None else None,
        "setup": describe_spec(spec) if spec is not None else [],
        "applied": applied,
        "drift": pending,
        "in_sync": state is not None and not pending,
    }


def format_status(report: Mapping[str, Any]) -> str:
    lines: list[str] = []
    if report["started"]:
        lines.append(
            f"started in network namespace {report['netns']} (state {report['state_file']})"
        )
    else:
        lines.append(
            f"not started in network namespace {report['netns']} "
            f"(no state file {report['state_file']})"
        )
    lines += [f"  {line}" for line in report["setup"]]
    if report["started"]:
        lines.append(f"changes made by start ({len(report['applied'])}):")
        for item in report["applied"]:
            mark = "in effect" if item["in_effect"] else "UNDONE   "
            lines.append(f"  {mark}  {item['step']}")
    if report["drift"]:
        lines.append("drift: `realserver start` would now:")
        lines += [f"  {line}" for line in report["drift"]]
    elif report["started"]:
        lines.append("the live system matches the setup")
    return "\n".join(lines)


# ---------------------------------------------------------------- /proc/net

PROC_NET = Path("/proc/net")
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"  # TCP_CLOSE: a bound UDP socket with no peer


def decode_address(hexaddr: str) -> IPAddress:
    """/proc/net/{tcp,udp}[6] addresses: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hexaddr)
    fixed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(fixed)


def parse_proc_net(text: str, protocol: str) -> list[Listener]:
    """Listening TCP sockets, or bound unconnected UDP sockets, from one /proc/net table."""
    wanted = TCP_LISTEN if protocol == "tcp" else UDP_UNCONNECTED
    out: list[Listener] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != wanted:
            continue
        host, _, port = fields[1].partition(":")
        out.append(Listener(protocol, decode_address(host), int(port, 16)))
    return out


def read_listeners(root: Path = PROC_NET) -> list[Listener]:
    """The sockets of this network namespace (the one /proc/net of this process shows)."""
    out: list[Listener] = []
    for name, protocol in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            text = (root / name).read_text()
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        out += parse_proc_net(text, protocol)
    return out
