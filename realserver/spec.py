"""The desired setup of a real server, from command-line flags or a director-style YAML file.

Pure: nothing here touches the kernel. Errors are `SpecError` with a message naming the input.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from director.config import Config, ConfigInvalid, ConfigUnreadable, load_config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Mode = Literal["dr", "tun", "nat"]
TunnelType = Literal["ipip", "gre", "gue"]

MODES: tuple[str, ...] = get_args(Mode)
TUNNEL_TYPES: tuple[str, ...] = get_args(TunnelType)
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


class SpecError(ValueError):
    """The requested setup is invalid; the message names the bad input."""


@dataclass(frozen=True)
class TunnelSpec:
    type: TunnelType = "ipip"
    port: int | None = None  # GUE's UDP port (fou)


@dataclass(frozen=True)
class VipSpec:
    address: IPAddress
    mode: Mode
    tunnel: TunnelSpec | None = None  # set for mode "tun" only

    @property
    def family(self) -> int:
        return self.address.version

    @property
    def interface(self) -> str:
        """The VIP as a host route: /32 or /128."""
        return f"{self.address}/{self.address.max_prefixlen}"


@dataclass(frozen=True)
class Spec:
    vips: tuple[VipSpec, ...]
    iface: str = "lo"  # where DR VIPs go
    dummy: bool = False  # create `iface` as a dummy interface
    client_ifaces: tuple[str, ...] = ()  # client-facing interfaces (arp sysctls)
    gateway: IPAddress | None = None  # NAT: the director's backend VIP (--set-gateway)

    def of_mode(self, mode: Mode) -> tuple[VipSpec, ...]:
        return tuple(v for v in self.vips if v.mode == mode)


# ---------------------------------------------------------------- flags


def parse_vip(text: str) -> IPAddress:
    """`10.0.0.100`, `10.0.0.100/80`, `10.0.0.100:80`, `2001:db8::1`, `[2001:db8::1]:80`,
    `2001:db8::1/80`. A port is accepted and ignored (the real server holds the whole address)."""
    raw = text.strip()
    host, port = raw, None
    match = re.fullmatch(r"\[([^\]]+)\](?::(.*))?", raw)
    if match:
        host, port = match.group(1), match.group(2)
    elif "/" in raw:
        host, _, port = raw.partition("/")
    elif raw.count(":") == 1:
        host, _, port = raw.partition(":")
    if port is not None and not (port.isdigit() and int(port) <= 65535):
        raise SpecError(f"--vip {text!r}: {port!r} is not a port (0-65535)")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise SpecError(f"--vip {text!r}: {host!r} is not an IPv4 or IPv6 address") from None


def _check_ifname(flag: str, name: str) -> str:
    if not _IFNAME.match(name):
        raise SpecError(f"{flag} {name!r}: not an interface name (1-15 chars, no '/', ':', space)")
    return name


def _tunnel(where: str, mode: str, tunnel: str | None, port: int | None) -> TunnelSpec | None:
    if mode != "tun":
        if tunnel is not None or port is not None:
            raise SpecError(f"{where}: tunnel options need mode tun, not {mode}")
        return None
    kind = tunnel or "ipip"
    if kind not in TUNNEL_TYPES:
        raise SpecError(f"{where}: tunnel {kind!r} is not one of {', '.join(TUNNEL_TYPES)}")
    if kind == "gue":
        if port is None:
            raise SpecError(f"{where}: tunnel gue needs a UDP port")
        if not 1 <= port <= 65535:
            raise SpecError(f"{where}: gue port {port} is not between 1 and 65535")
    elif port is not None:
        raise SpecError(f"{where}: a port is only for tunnel gue, not {kind}")
    return TunnelSpec(cast(TunnelType, kind), port)


def _finish(
    vips: Sequence[VipSpec],
    iface: str,
    dummy: bool,
    client_ifaces: Sequence[str],
    gateway: str | None,
) -> Spec:
    _check_ifname("--iface", iface)
    for name in client_ifaces:
        _check_ifname("--client-iface", name)
    if dummy and iface == "lo":
        raise SpecError("--dummy: name the dummy interface with --iface (not lo)")
    gw: IPAddress | None = None
    if gateway is not None:
        try:
            gw = ipaddress.ip_address(gateway.strip())
        except ValueError:
            raise SpecError(f"--set-gateway {gateway!r}: not an IPv4 or IPv6 address") from None
        nat = [v for v in vips if v.mode == "nat"]
        if not nat:
            raise SpecError("--set-gateway: only for mode nat")
        if all(v.family != gw.version for v in nat):
            raise SpecError(f"--set-gateway {gw}: no nat VIP of the same IP family")
    if not vips:
        raise SpecError("no VIP given (use --vip ADDR or a config file)")
    return Spec(tuple(vips), iface, dummy, tuple(dict.fromkeys(client_ifaces)), gw)


def spec_from_flags(
    vips: Sequence[str],
    mode: str = "dr",
    tunnel: str | None = None,
    gue_port: int | None = None,
    iface: str = "lo",
    dummy: bool = False,
    client_ifaces: Sequence[str] = (),
    gateway: str | None = None,
) -> Spec:
    if mode not in MODES:
        raise SpecError(f"--mode {mode!r}: not one of {', '.join(MODES)}")
    tun = _tunnel("--tunnel", mode, tunnel, gue_port)
    seen: dict[IPAddress, VipSpec] = {}
    for text in vips:
        address = parse_vip(text)
        seen.setdefault(address, VipSpec(address, cast(Mode, mode), tun))
    return _finish(list(seen.values()), iface, dummy, client_ifaces, gateway)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe the setup, shared by start, status and check."""
    parser.add_argument("--config", "-c", help="director-style YAML; its services give the VIPs")
    parser.add_argument("--self", dest="self_address", help="this host's address in real_servers")
    parser.add_argument("--vip", action="append", default=[], help="ADDR[/port], repeatable")
    parser.add_argument("--mode", default="dr", help="dr | tun | nat (default dr)")
    parser.add_argument("--tunnel", help="ipip | gre | gue (mode tun; default ipip)")
    parser.add_argument("--gue-port", type=int, help="UDP port of the gue tunnel")
    parser.add_argument("--iface", default="lo", help="interface for DR VIPs (default lo)")
    parser.add_argument("--dummy", action="store_true", help="create --iface as a dummy")
    parser.add_argument("--client-iface", action="append", default=[], help="repeatable")
    parser.add_argument("--set-gateway", dest="gateway", help="NAT: route via the director")


def spec_from_args(ns: argparse.Namespace) -> Spec:
    if ns.config is not None:
        if ns.vip:
            raise SpecError("--vip and --config: give one or the other")
        return spec_from_file(
            ns.config,
            self_address=ns.self_address,
            iface=ns.iface,
            dummy=ns.dummy,
            client_ifaces=ns.client_iface,
            gateway=ns.gateway,
        )
    return spec_from_flags(
        ns.vip, ns.mode, ns.tunnel, ns.gue_port, ns.iface, ns.dummy, ns.client_iface, ns.gateway
    )


# ---------------------------------------------------------------- director config


def spec_from_config(
    config: Config,
    self_address: str | None = None,
    iface: str = "lo",
    dummy: bool = False,
    client_ifaces: Sequence[str] = (),
    gateway: str | None = None,
    source: str = "config",
) -> Spec:
    """VIPs from the `services` section. With `self_address`, only the services listing this
    host as a real server, with that entry's forwarding/tunnel overrides. fwmark services have
    no VIP and are skipped."""
    me: IPAddress | None = None
    if self_address is not None:
        try:
            me = ipaddress.ip_address(self_address.strip())
        except ValueError:
            raise SpecError(f"--self {self_address!r}: not an IPv4 or IPv6 address") from None
    found: dict[IPAddress, tuple[str, VipSpec]] = {}
    for index, service in enumerate(config.services):
        where = f"{source}: services[{index}] ({service.name})"
        if service.vip is None:
            continue
        forwarding, tunnel = service.forwarding, service.tunnel
        if me is not None:
            mine = [rs for rs in service.real_servers if rs.address == me]
            if not mine:
                continue
            forwarding = mine[0].forwarding or forwarding
            tunnel = mine[0].tunnel or tunnel
        if forwarding == "tun":
            tunnel_type, port = (tunnel.type, tunnel.port) if tunnel else ("ipip", None)
            tun = _tunnel(where, "tun", tunnel_type, port)
        else:
            tun = None
        vip = VipSpec(service.vip, forwarding, tun)
        if service.vip in found and found[service.vip][1] != vip:
            other = found[service.vip][0]
            raise SpecError(f"{where}: vip {service.vip} is set up differently in {other}")
        found.setdefault(service.vip, (where, vip))
    if not found:
        who = f" listing {me} as a real server" if me is not None else ""
        raise SpecError(f"{source}: no service with a vip{who}")
    vips = [vip for _, vip in found.values()]
    return _finish(vips, iface, dummy, client_ifaces, gateway)


def spec_from_file(
    path: str | Path,
    self_address: str | None = None,
    iface: str = "lo",
    dummy: bool = False,
    client_ifaces: Sequence[str] = (),
    gateway: str | None = None,
) -> Spec:
    try:
        report = load_config(path)
    except (ConfigUnreadable, ConfigInvalid) as exc:
        raise SpecError(str(exc)) from None
    assert report.config is not None
    return spec_from_config(
        report.config, self_address, iface, dummy, client_ifaces, gateway, source=str(path)
    )
