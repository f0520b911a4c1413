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
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

if TYPE_CHECKING:
    from director.config import Config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Mode = Literal["dr", "tun", "nat"]
TunnelType = Literal["ipip", "gre", "gue"]
Protocol = Literal["tcp", "udp", "sctp"]

MODES: tuple[str, ...] = get_args(Mode)
TUNNEL_TYPES: tuple[str, ...] = get_args(TunnelType)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
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
    dev: str | None = None  # DR only: this VIP's interface instead of Spec.iface (`ADDR@dev`)

    @property
    def family(self) -> int:
        return self.address.version

    @property
    def interface(self) -> str:
        """The VIP as a host route: /32 or /128."""
        return f"{self.address}/{self.address.max_prefixlen}"


@dataclass(frozen=True)
class ServicePort:
    """A port clients reach through a VIP: `check` looks for a socket listening on it."""

    address: IPAddress
    port: int
    protocol: Protocol = "tcp"

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Spec:
    vips: tuple[VipSpec, ...]
    iface: str = "lo"  # where DR VIPs go
    dummy: bool = False  # create `iface` as a dummy interface
    client_ifaces: tuple[str, ...] = ()  # client-facing interfaces (arp sysctls)
    gateway: IPAddress | None = None  # NAT: the director's backend VIP (--set-gateway)
    ports: tuple[ServicePort, ...] = ()  # only for `check`; start ignores them

    def of_mode(self, mode: Mode) -> tuple[VipSpec, ...]:
        return tuple(v for v in self.vips if v.mode == mode)


# ---------------------------------------------------------------- flags


def parse_vip(text: str) -> IPAddress:
    """`10.0.0.100`, `10.0.0.100/80`, `10.0.0.100:80`, `2001:db8::1`, `[2001:db8::1]:80`,
    `2001:db8::1/80`. A port is accepted and ignored (the real server holds the whole address)."""
    return split_vip(text)[0]


def split_vip(text: str) -> tuple[IPAddress, int | None, str | None]:
    """`ADDR[/port][@dev]` (or `ADDR:port`, `[v6]:port`) -> (address, port, dev)."""
    raw = text.strip()
    raw, at, dev = raw.rpartition("@") if "@" in raw else (raw, "", "")
    if at:
        dev = dev.strip()
        if not _IFNAME.match(dev):
            raise SpecError(f"--vip {text!r}: {dev!r} is not an interface name")
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
        address = ipaddress.ip_address(host)
    except ValueError:
        raise SpecError(f"--vip {text!r}: {host!r} is not an IPv4 or IPv6 address") from None
    # Port 0 is IPVS's "all ports" (persistent fwmark-less services): nothing to look for.
    return address, (int(port) if port else None), (dev or None)


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
    ports: Sequence[ServicePort] = (),
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
    return Spec(
        tuple(vips),
        iface,
        dummy,
        tuple(dict.fromkeys(client_ifaces)),
        gw,
        tuple(dict.fromkeys(ports)),
    )


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
    ports: list[ServicePort] = []
    for text in vips:
        address, port, dev = split_vip(text)
        if dev is not None:
            if mode != "dr":
                raise SpecError(f"--vip {text!r}: an interface (@{dev}) is for mode dr only")
            _check_ifname("--vip", dev)
        vip = VipSpec(address, cast(Mode, mode), tun, dev)
        if seen.setdefault(address, vip) != vip:
            raise SpecError(f"--vip {text!r}: {address} is given twice on different interfaces")
        if port:
            ports.append(ServicePort(address, port))
    return _finish(list(seen.values()), iface, dummy, client_ifaces, gateway, ports)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe the setup, shared by start, status and check."""
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="director-style YAML; its services give the VIPs"
    )
    parser.add_argument(
        "--self", dest="self_address", metavar="ADDR", help="this host's address in real_servers"
    )
    parser.add_argument(
        "--vip",
        action="append",
        default=[],
        metavar="ADDR[/PORT][@DEV]",
        help="a VIP, repeatable; the port is for check, @DEV puts a DR VIP on its own interface",
    )
    parser.add_argument("--mode", default="dr", help="dr | tun | nat (default dr)")
    parser.add_argument("--tunnel", help="ipip | gre | gue (mode tun; default ipip)")
    parser.add_argument(
        "--gue-port",
        "--port",
        dest="gue_port",
        type=int,
        metavar="PORT",
        help="UDP port of the gue tunnel",
    )
    parser.add_argument(
        "--iface", default="lo", metavar="DEV", help="interface for DR VIPs (default lo)"
    )
    parser.add_argument("--dummy", action="store_true", help="create --iface as a dummy")
    parser.add_argument(
        "--client-iface",
        action="append",
        default=[],
        metavar="DEV",
        help="an interface facing the clients (gets the ARP sysctls too), repeatable",
    )
    parser.add_argument(
        "--set-gateway",
        dest="gateway",
        metavar="ADDR",
        help="NAT: make the default route go via the director's backend VIP",
    )


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
    """VIPs from the `services` section (`vip` and the `vips` groups, ranges expanded). With
    `self_address`, only the services listing this host as a real server, with that entry's
    forwarding/tunnel/port overrides. fwmark services have no VIP and are skipped."""
    me: IPAddress | None = None
    if self_address is not None:
        try:
            me = ipaddress.ip_address(self_address.strip())
        except ValueError:
            raise SpecError(f"--self {self_address!r}: not an IPv4 or IPv6 address") from None
    found: dict[IPAddress, tuple[str, VipSpec]] = {}
    ports: list[ServicePort] = []
    for index, service in enumerate(config.services):
        where = f"{source}: services[{index}] ({service.name})"
        if not service.addresses:
            continue  # fwmark services: the real server cannot tell their VIPs
        forwarding, tunnel, port = service.forwarding, service.tunnel, service.port
        if me is not None:
            mine = [rs for rs in service.real_servers if rs.address == me]
            if not mine:
                continue
            forwarding = mine[0].forwarding or forwarding
            tunnel = mine[0].tunnel or tunnel
            # NAT rewrites the port to the real server's; DR and TUN cannot.
            port = mine[0].port or port
        if forwarding == "tun":
            tunnel_type, tport = (tunnel.type, tunnel.port) if tunnel else ("ipip", None)
            tun = _tunnel(where, "tun", tunnel_type, tport)
        else:
            tun = None
        for address in service.addresses:
            vip = VipSpec(address, forwarding, tun)
            if address in found and found[address][1] != vip:
                other = found[address][0]
                raise SpecError(f"{where}: vip {address} is set up differently in {other}")
            found.setdefault(address, (where, vip))
            if port:
                ports.append(ServicePort(address, port, service.protocol))
    if not found:
        who = f" listing {me} as a real server" if me is not None else ""
        raise SpecError(f"{source}: no service with a vip{who}")
    vips = [vip for _, vip in found.values()]
    return _finish(vips, iface, dummy, client_ifaces, gateway, ports)


def spec_from_file(
    path: str | Path,
    self_address: str | None = None,
    iface: str = "lo",
    dummy: bool = False,
    client_ifaces: Sequence[str] = (),
    gateway: str | None = None,
) -> Spec:
    # Imported here: the config models cost half a second of start-up, and only -c uses them.
    from director.config import ConfigInvalid, ConfigUnreadable, load_config

    try:
        report = load_config(path)
    except (ConfigUnreadable, ConfigInvalid) as exc:
        raise SpecError(str(exc)) from None
    assert report.config is not None
    return spec_from_config(
        report.config, self_address, iface, dummy, client_ifaces, gateway, source=str(path)
    )


# ---------------------------------------------------------------- state file form


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """JSON form, kept in the state file so `status` and `check` work without flags."""
    return {
        "vips": [
            {
                "address": str(v.address),
                "mode": v.mode,
                "tunnel": None
                if v.tunnel is None
                else {"type": v.tunnel.type, "port": v.tunnel.port},
                "dev": v.dev,
            }
            for v in spec.vips
        ],
        "iface": spec.iface,
        "dummy": spec.dummy,
        "client_ifaces": list(spec.client_ifaces),
        "gateway": None if spec.gateway is None else str(spec.gateway),
        "ports": [
            {"address": str(p.address), "port": p.port, "protocol": p.protocol} for p in spec.ports
        ],
    }


def spec_from_dict(data: Any) -> Spec:
    """The inverse of spec_to_dict; ValueError (naming the field) on anything else."""
    try:
        vips = []
        for item in data["vips"]:
            tunnel = item["tunnel"]
            tun = None
            if tunnel is not None:
                if tunnel["type"] not in TUNNEL_TYPES:
                    raise ValueError(f"tunnel type {tunnel['type']!r}")
                tun = TunnelSpec(tunnel["type"], _opt_int(tunnel["port"]))
            if item["mode"] not in MODES:
                raise ValueError(f"mode {item['mode']!r}")
            dev = item["dev"]
            if dev is not None and not (isinstance(dev, str) and _IFNAME.match(dev)):
                raise ValueError(f"dev {dev!r}")
            vips.append(VipSpec(ipaddress.ip_address(item["address"]), item["mode"], tun, dev))
        ports = []
        for item in data["ports"]:
            if item["protocol"] not in PROTOCOLS:
                raise ValueError(f"protocol {item['protocol']!r}")
            address = ipaddress.ip_address(item["address"])
            ports.append(ServicePort(address, _int(item["port"]), item["protocol"]))
        gateway = data["gateway"]
        return Spec(
            vips=tuple(vips),
            iface=_str(data["iface"]),
            dummy=bool(data["dummy"]),
            client_ifaces=tuple(_str(x) for x in data["client_ifaces"]),
            gateway=None if gateway is None else ipaddress.ip_address(gateway),
            ports=tuple(ports),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a recorded setup: missing or wrong {exc}") from None


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value
