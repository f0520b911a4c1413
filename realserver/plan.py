"""Pure planning: desired spec + observed snapshot -> ordered steps; recorded steps -> revert.

Order of a start plan: ARP sysctls first (so a VIP is never answered for), then interfaces
(create, fou, up), then rp_filter on the tunnel interfaces, then addresses, then the NAT route.
A revert is the inverse of every recorded step, newest first, skipping what is already undone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from realserver.spec import Spec, VipSpec
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
    inverse,
)

ARP_IGNORE = 1
ARP_ANNOUNCE = 2
RP_FILTER_LOOSE = 2
RP_FILTER_OK = (RP_FILTER_LOOSE, 0)  # acceptable values; the first is applied
LABEL_SUFFIX = ":rs"

# (tunnel type, family) -> (device, kind). gue decapsulates (fou) into the ipip device.
TUNNEL_DEVICES: dict[tuple[str, int], tuple[str, str]] = {
    ("ipip", 4): ("tunl0", "ipip"),
    ("gue", 4): ("tunl0", "ipip"),
    ("gre", 4): ("gre0", "gre"),
    ("ipip", 6): ("ip6tnl0", "ip6tnl"),
    ("gue", 6): ("ip6tnl0", "ip6tnl"),
    ("gre", 6): ("ip6gre0", "ip6gre"),
}


@dataclass(frozen=True)
class Link:
    kind: str  # "" for a device of no particular kind (lo, ethernet)
    up: bool


@dataclass(frozen=True)
class Snapshot:
    """What the kernel holds now, as far as realserver cares."""

    sysctls: Mapping[str, int] = field(default_factory=dict)
    links: Mapping[str, Link] = field(default_factory=dict)
    addresses: frozenset[tuple[str, str]] = frozenset()  # (dev, ip/prefix)
    fou_ports: frozenset[tuple[int, int]] = frozenset()  # (port, family)
    default_routes: Mapping[int, str] = field(default_factory=dict)  # family -> gateway


def conf_key(family: int, dev: str, name: str) -> str:
    return f"net/ipv{family}/conf/{dev}/{name}"


def label_for(dev: str) -> str | None:
    label = dev + LABEL_SUFFIX
    return label if len(label) <= 15 else None


def tunnel_device(vip: VipSpec) -> tuple[str, str]:
    assert vip.tunnel is not None
    return TUNNEL_DEVICES[(vip.tunnel.type, vip.family)]


def vip_device(spec: Spec, vip: VipSpec) -> str | None:
    """Where the VIP is added; None for NAT (the VIP stays on the director)."""
    if vip.mode == "dr":
        return vip.dev or spec.iface
    if vip.mode == "tun":
        return tunnel_device(vip)[0]
    return None


def desired_sysctls(spec: Spec) -> list[tuple[str, int | tuple[int, ...]]]:
    """(key, wanted): wanted is one value or the set of acceptable values (first is applied)."""
    wanted: list[tuple[str, int | tuple[int, ...]]] = []
    if any(v.family == 4 and v.mode in ("dr", "tun") for v in spec.vips):
        for dev in ("all", *spec.client_ifaces):
            wanted.append((conf_key(4, dev, "arp_ignore"), ARP_IGNORE))
            wanted.append((conf_key(4, dev, "arp_announce"), ARP_ANNOUNCE))
    return wanted


def desired_rp_filter(spec: Spec, snapshot: Snapshot) -> list[tuple[str, int | tuple[int, ...]]]:
    """rp_filter for the tunnel devices only. The kernel filters with max(all, device): with
    `all` at 1 (strict), 2 on the device alone makes it loose there, and every other interface
    keeps the filtering it had; with `all` at 2 every device is loose already."""
    devs = dict.fromkeys(tunnel_device(v)[0] for v in spec.of_mode("tun") if v.family == 4)
    everywhere = snapshot.sysctls.get(conf_key(4, "all", "rp_filter"), 0)
    if not devs or everywhere == RP_FILTER_LOOSE:
        return []
    ok = (RP_FILTER_LOOSE,) if everywhere == 1 else RP_FILTER_OK
    return [(conf_key(4, dev, "rp_filter"), ok) for dev in devs]


def _sysctl_steps(
    wanted: Iterable[tuple[str, int | tuple[int, ...]]], snapshot: Snapshot
) -> list[Step]:
    steps: list[Step] = []
    for key, want in wanted:
        ok = want if isinstance(want, tuple) else (want,)
        current = snapshot.sysctls.get(key)
        if current is None:
            # An interface we create inherits conf/default.
            parts = key.split("/")
            current = snapshot.sysctls.get("/".join([*parts[:3], "default", parts[4]]))
        if current in ok:
            continue
        steps.append(SetSysctl(key, ok[0], current))
    return steps


def plan_start(spec: Spec, snapshot: Snapshot) -> list[Step]:
    """The steps that bring `snapshot` to `spec`; empty when everything is in place."""
    steps: list[Step] = _sysctl_steps(desired_sysctls(spec), snapshot)

    links: dict[str, str] = {}
    if spec.dummy and spec.of_mode("dr"):
        links[spec.iface] = "dummy"
    fou: dict[tuple[int, int], None] = {}
    for vip in spec.of_mode("tun"):
        dev, kind = tunnel_device(vip)
        links.setdefault(dev, kind)
        if vip.tunnel is not None and vip.tunnel.type == "gue" and vip.tunnel.port is not None:
            fou[(vip.tunnel.port, vip.family)] = None
    for dev, kind in links.items():
        if dev not in snapshot.links:
            steps.append(CreateLink(dev, kind))
    for port, family in fou:
        if (port, family) not in snapshot.fou_ports:
            steps.append(AddFou(port, family))
    for dev in links:
        link = snapshot.links.get(dev)
        if link is None or not link.up:
            steps.append(SetLinkUp(dev))

    steps += _sysctl_steps(desired_rp_filter(spec, snapshot), snapshot)

    for vip in spec.vips:
        on = vip_device(spec, vip)
        if on is None or (on, vip.interface) in snapshot.addresses:
            continue
        if vip.family == 4:
            steps.append(AddAddress(on, vip.interface, label=label_for(on)))
        else:
            steps.append(AddAddress(on, vip.interface, nodad=True))

    if spec.gateway is not None:
        family = spec.gateway.version
        gateway = str(spec.gateway)
        previous = snapshot.default_routes.get(family)
        if previous != gateway:
            steps.append(SetDefaultRoute(family, gateway, previous))
    return steps


def plan_revert(recorded: Sequence[Step], snapshot: Snapshot) -> list[Step]:
    """Undo `recorded` (in the order applied), newest first; skip what is already undone, and
    sysctls of interfaces that are gone."""
    steps: list[Step] = []
    current = snapshot
    for step in reversed(recorded):
        undo = inverse(step)
        if undo is None or not _needed(undo, current):
            continue
        steps.append(undo)
        current = simulate(current, [undo])
    return steps


def _needed(step: Step, snapshot: Snapshot) -> bool:
    match step:
        case SetSysctl(key, value, _):
            return key in snapshot.sysctls and snapshot.sysctls[key] != value
        case DeleteLink(dev, _):
            return dev in snapshot.links
        case SetLinkDown(dev):
            return dev in snapshot.links and snapshot.links[dev].up
        case DelAddress(dev, address):
            return (dev, address) in snapshot.addresses
        case DelFou(port, family):
            return (port, family) in snapshot.fou_ports
        case SetDefaultRoute(family, gateway, _):
            return snapshot.default_routes.get(family) != gateway
        case DelDefaultRoute(family, gateway):
            return snapshot.default_routes.get(family) == gateway
    return True


def simulate(snapshot: Snapshot, steps: Iterable[Step]) -> Snapshot:
    """The snapshot after `steps`, as the kernel would hold it (for dry runs and tests)."""
    for step in steps:
        snapshot = _apply(snapshot, step)
    return snapshot


def _apply(s: Snapshot, step: Step) -> Snapshot:
    match step:
        case SetSysctl(key, value, _):
            return replace(s, sysctls={**s.sysctls, key: value})
        case CreateLink(dev, kind):
            sysctls = dict(s.sysctls)
            for key, value in s.sysctls.items():
                parts = key.split("/")
                if len(parts) == 5 and parts[3] == "default":
                    sysctls["/".join([*parts[:3], dev, parts[4]])] = value
            return replace(s, links={**s.links, dev: Link(kind, False)}, sysctls=sysctls)
        case DeleteLink(dev, _):
            gone = f"/conf/{dev}/"
            return replace(
                s,
                links={k: v for k, v in s.links.items() if k != dev},
                addresses=frozenset(a for a in s.addresses if a[0] != dev),
                sysctls={k: v for k, v in s.sysctls.items() if gone not in k},
            )
        case SetLinkUp(dev):
            return replace(s, links={**s.links, dev: replace(s.links[dev], up=True)})
        case SetLinkDown(dev):
            return replace(s, links={**s.links, dev: replace(s.links[dev], up=False)})
        case AddAddress(dev, address):
            return replace(s, addresses=s.addresses | {(dev, address)})
        case DelAddress(dev, address):
            return replace(s, addresses=s.addresses - {(dev, address)})
        case AddFou(port, family):
            return replace(s, fou_ports=s.fou_ports | {(port, family)})
        case DelFou(port, family):
            return replace(s, fou_ports=s.fou_ports - {(port, family)})
        case SetDefaultRoute(family, gateway, _):
            return replace(s, default_routes={**s.default_routes, family: gateway})
        case DelDefaultRoute(family, _):
            routes = {k: v for k, v in s.default_routes.items() if k != family}
            return replace(s, default_routes=routes)
    raise TypeError(f"not a step: {step!r}")  # pragma: no cover


def drift(spec: Spec, snapshot: Snapshot) -> list[str]:
    """What differs from the spec now (for `status`); empty when all is applied."""
    return [step.describe() for step in plan_start(spec, snapshot)]
