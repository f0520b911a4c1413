"""Cross-field rules: checks that relate several keys, instances or sections.

Rules about one instance or service are small functions, so that each can run on an item whose
other keys failed validation (see partial.py): one mistake does not hide another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from director.config.durations import format_duration
from director.config.models import (
    Check,
    Instance,
    Ipvs,
    Service,
    SyncGroup,
    expand_vips,
    inherited_check,
)
from director.config.partial import Item, run_rule
from director.config.yamlpos import Path

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Diagnostic:
    path: Path
    message: str
    severity: Literal["error", "warning"] = "error"
    at_key: bool = False  # point at the key itself (unknown or duplicate keys)


def _family(version: int) -> str:
    return f"IPv{version}"


# Valid stand-ins for required keys that failed validation; rules never read them (see partial).
INSTANCE_PLACEHOLDERS = {"name": "_", "interface": "_", "vrid": 1, "addresses": ["0.0.0.0/32"]}
SERVICE_PLACEHOLDERS = {"name": "_"}
GROUP_PLACEHOLDERS = {"name": "_", "instances": ["_"]}


def check_all(
    instances: tuple[list[Item[Instance]], list[Item[Instance]]],
    groups: list[Item[SyncGroup]],
    services: tuple[list[Item[Service]], list[Item[Service]]],
    *,
    instance_names: set[str],
    vips: set[IPAddress],
) -> Iterator[Diagnostic]:
    """Items come as (valid, partially valid). Rules about one item run on both; rules relating
    several items run on valid ones only. `instance_names` and `vips` come from the whole file,
    so a broken instance is reported once, not again by every rule that refers to it."""
    valid_instances, partial_instances = instances
    for item in sorted(valid_instances + partial_instances, key=lambda it: it.index):
        for rule in INSTANCE_RULES:
            yield from run_rule(rule, ("vrrp", "instances", item.index), item)
    yield from check_instances_together(valid_instances)
    yield from check_sync_groups(groups, instance_names)
    valid_services, partial_services = services
    service_rules = [*SERVICE_RULES, _vip_known(vips)]
    for svc_item in sorted(valid_services + partial_services, key=lambda it: it.index):
        for svc_rule in service_rules:
            yield from run_rule(svc_rule, ("services", svc_item.index), svc_item)
    yield from check_services_together(valid_services)


# ---------------------------------------------------------------- vrrp, one instance


def _address_families(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    family = inst.family
    for j, vip in enumerate(inst.addresses):
        if vip.family != family:
            yield Diagnostic(
                (*at, "addresses", j),
                f"{vip.address} is {_family(vip.family)} but the instance's first address is "
                f"{_family(family)}; one instance carries one address family",
            )


def _labels(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    for j, vip in enumerate(inst.addresses):
        if vip.label is None:
            continue
        here = (*at, "addresses", j, "label")
        dev = vip.dev or inst.interface
        if vip.family == 6:
            yield Diagnostic(here, "labels exist only for IPv4 addresses")
        elif not vip.label.startswith(dev):
            yield Diagnostic(
                here,
                f"label {vip.label!r} must start with the interface name {dev!r} "
                f"(the kernel rejects it otherwise), e.g. {dev}:1",
            )


def _owner_priority(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    if inst.priority == 255 and not inst.address_owner:
        yield Diagnostic(
            (*at, "priority"),
            "priority 255 is reserved for the address owner: set address_owner: true if the "
            "VIPs are this node's own addresses, otherwise use 1-254",
        )
    if inst.address_owner and inst.priority != 255:
        yield Diagnostic(
            (*at, "address_owner"), "an address owner must have priority 255 (RFC 5798 5.2.4)"
        )


def _advert_interval(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    value = inst.advert_interval
    where = (*at, "advert_interval")
    shown = format_duration(value)
    if inst.version == 2:
        if value != int(value) or not 1 <= value <= 255:
            yield Diagnostic(
                where, f"VRRPv2 advertises in whole seconds from 1s to 255s, got {shown}"
            )
    else:
        centis = value * 100
        if abs(centis - round(centis)) > 1e-6 or not 1 <= round(centis) <= 4095:
            yield Diagnostic(
                where, f"VRRPv3 advertises in 10ms steps from 10ms to 40.95s, got {shown}"
            )


def _version_family(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    if inst.version == 2 and inst.family == 6:
        yield Diagnostic((*at, "version"), "VRRPv2 is IPv4 only (RFC 3768); use version: 3")


def _auth_version(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    if inst.auth is not None and inst.version != 2:
        kind = "AH authentication" if inst.auth.type == "ah" else "authentication"
        yield Diagnostic(
            (*at, "auth"),
            f"{kind} exists only in VRRPv2 (RFC 5798 removed it); set version: 2 or remove auth",
        )


def _unicast_family(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    if inst.unicast is None:
        return
    family = inst.family
    if inst.unicast.source is not None and inst.unicast.source.version != family:
        yield Diagnostic(
            (*at, "unicast", "source"),
            f"{inst.unicast.source} is not {_family(family)}, the family of the instance",
        )
    for k, peer in enumerate(inst.unicast.peers):
        if peer.version != family:
            yield Diagnostic(
                (*at, "unicast", "peers", k),
                f"{peer} is not {_family(family)}, the family of the instance",
            )


def _track_script_names(at: Path, inst: Instance) -> Iterator[Diagnostic]:
    seen: set[str] = set()
    for k, script in enumerate(inst.track.scripts):
        if script.name in seen:
            yield Diagnostic(
                (*at, "track", "scripts", k, "name"), f"track script {script.name!r} repeated"
            )
        seen.add(script.name)


INSTANCE_RULES = [
    _address_families,
    _labels,
    _owner_priority,
    _advert_interval,
    _version_family,
    _auth_version,
    _unicast_family,
    _track_script_names,
]


# ---------------------------------------------------------------- vrrp, together


def check_instances_together(instances: list[Item[Instance]]) -> Iterator[Diagnostic]:
    names: dict[str, int] = {}
    vrids: dict[tuple[str, int, int], tuple[int, Instance]] = {}
    owners: dict[IPAddress, Instance] = {}
    for i, inst in ((it.index, it.model) for it in instances):
        at = ("vrrp", "instances", i)
        if inst.name in names:
            first = f"vrrp.instances[{names[inst.name]}]"
            yield Diagnostic(
                (*at, "name"),
                f"instance name {inst.name!r} is already used by {first}",
            )
        names.setdefault(inst.name, i)
        key = (inst.interface, inst.family, inst.vrid)
        if key in vrids:
            j, other = vrids[key]
            yield Diagnostic(
                (*at, "vrid"),
                f"vrid {inst.vrid} is already used on {inst.interface} for "
                f"{_family(inst.family)} by instance {other.name} (vrrp.instances[{j}])",
            )
        vrids.setdefault(key, (i, inst))
        for j, vip in enumerate(inst.addresses):
            if vip.ip in owners and owners[vip.ip] is not inst:
                yield Diagnostic(
                    (*at, "addresses", j),
                    f"{vip.ip} is already a VIP of instance {owners[vip.ip].name}; "
                    "a VIP belongs to one instance",
                )
            owners.setdefault(vip.ip, inst)


def check_sync_groups(
    groups: list[Item[SyncGroup]], instance_names: set[str]
) -> Iterator[Diagnostic]:
    member_of: dict[str, str] = {}
    group_names: set[str] = set()
    for g, group in ((it.index, it.model) for it in groups):
        at = ("vrrp", "sync_groups", g)
        if group.name in group_names:
            yield Diagnostic((*at, "name"), f"sync group name {group.name!r} repeated")
        group_names.add(group.name)
        for k, member in enumerate(group.instances):
            where = (*at, "instances", k)
            if member not in instance_names:
                yield Diagnostic(where, f"no vrrp instance is named {member!r}")
            elif member in member_of:
                yield Diagnostic(
                    where,
                    f"instance {member!r} is already in sync group {member_of[member]!r}; "
                    "an instance belongs to one group",
                )
            member_of.setdefault(member, group.name)


# ---------------------------------------------------------------- services


def _service_family(svc: Service) -> int:
    addresses = svc.addresses
    if addresses:
        return addresses[0].version
    return svc.family or 4


def _vip_or_fwmark(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if not svc.addresses and not svc.marks:
        yield Diagnostic(at, "a service needs vip (with port), fwmark, or a group: vips, fwmarks")
    if svc.vip is not None and svc.fwmark is not None:
        yield Diagnostic((*at, "fwmark"), "vip and fwmark exclude each other; keep one")
    if svc.vip is not None and svc.vips:
        yield Diagnostic((*at, "vips"), "vip and vips exclude each other; list every vip in vips")
    if svc.fwmark is not None and svc.fwmarks:
        yield Diagnostic((*at, "fwmarks"), "fwmark and fwmarks exclude each other")
    if svc.family is not None and not svc.marks:
        yield Diagnostic((*at, "family"), "family applies to fwmark services only")
    addresses = svc.addresses
    if addresses and svc.family is not None and svc.family != addresses[0].version:
        yield Diagnostic((*at, "family"), f"family {svc.family} differs from the vips' family")
    for v, entry in enumerate(svc.vips):
        if expand_vips(entry)[0].version != addresses[0].version:
            yield Diagnostic(
                (*at, "vips", v),
                f"{entry} is not {_family(addresses[0].version)} like the service's first vip",
            )


def _port(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if not svc.addresses:
        return  # a fwmark service's port is only its real servers' default
    if svc.port is None:
        yield Diagnostic((*at, "port"), "a vip service needs a port (0: all, with persistence)")
    elif svc.port == 0 and svc.persistence is None:
        yield Diagnostic((*at, "port"), "port 0 (all ports) requires persistence")


def _vip_known(vips: set[IPAddress]) -> Callable[[Path, Service], Iterator[Diagnostic]]:
    def rule(at: Path, svc: Service) -> Iterator[Diagnostic]:
        unknown = [a for a in svc.addresses if a not in vips]
        if unknown:
            shown = ", ".join(map(str, unknown[:3])) + (" ..." if len(unknown) > 3 else "")
            yield Diagnostic(
                (*at, "vip" if svc.vip is not None else "vips"),
                f"{shown} is not a VIP of any vrrp instance here; nothing moves it on failover",
                severity="warning",
            )

    return rule


def _scheduler_flags(at: Path, svc: Service) -> Iterator[Diagnostic]:
    for k, flag in enumerate(svc.scheduler_flags):
        if not flag.startswith(svc.scheduler + "-"):
            yield Diagnostic(
                (*at, "scheduler_flags", k),
                f"{flag} applies to the {flag.split('-')[0]} scheduler, not {svc.scheduler}",
            )


def _one_packet(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if svc.one_packet and svc.protocol != "udp":
        yield Diagnostic((*at, "one_packet"), "one-packet scheduling applies to udp services only")


def _quorum(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if svc.hysteresis and svc.hysteresis >= max(svc.quorum, 1):
        yield Diagnostic((*at, "hysteresis"), "hysteresis must be smaller than quorum")


def _persistence_netmask(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if svc.persistence is not None and svc.persistence.netmask is not None:
        problem = _netmask_problem(svc.persistence.netmask, _service_family(svc))
        if problem:
            yield Diagnostic((*at, "persistence", "netmask"), problem)


def _service_tunnel(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if svc.tunnel is None:
        return
    uses_tun = svc.forwarding == "tun" or any(rs.forwarding == "tun" for rs in svc.real_servers)
    if not uses_tun:
        yield Diagnostic(
            (*at, "tunnel"), "tunnel settings need forwarding: tun (here: nothing tunnels)"
        )
    yield from _check_tunnel((*at, "tunnel"), svc.tunnel.type, svc.tunnel.port)


def _service_check(at: Path, svc: Service) -> Iterator[Diagnostic]:
    if svc.check is not None:
        yield from _check_check((*at, "check"), svc.check)


def _sorry_family(at: Path, svc: Service) -> Iterator[Diagnostic]:
    family = _service_family(svc)
    if svc.sorry_server is not None and svc.sorry_server.address.version != family:
        yield Diagnostic(
            (*at, "sorry_server"),
            f"{svc.sorry_server.address} is not {_family(family)}, the family of the service",
        )


def _real_servers(at: Path, svc: Service) -> Iterator[Diagnostic]:
    family = _service_family(svc)
    seen: dict[tuple[object, int | None], int] = {}
    # A real server's inherited check repeats any mistake of the service's own check: that is
    # reported once, at the service.
    service_faults = (
        set() if svc.check is None else {d.message for d in _check_check((), svc.check)}
    )
    for r, rs in enumerate(svc.real_servers):
        here = (*at, "real_servers", r)
        port = rs.port if rs.port is not None else svc.port
        key = (rs.address, port)
        if key in seen:
            yield Diagnostic(
                here,
                f"real server {rs.address}:{port} repeated (first at real_servers[{seen[key]}])",
            )
        seen.setdefault(key, r)
        forwarding = rs.forwarding or svc.forwarding
        if rs.address.version != family and forwarding != "tun":
            yield Diagnostic(
                (*here, "address"),
                f"{rs.address} is not {_family(family)}; only tun forwarding mixes families",
            )
        if rs.tunnel is not None:
            if forwarding != "tun":
                yield Diagnostic(
                    (*here, "tunnel"), f"tunnel settings need forwarding: tun (here: {forwarding})"
                )
            yield from _check_tunnel((*here, "tunnel"), rs.tunnel.type, rs.tunnel.port)
        if rs.lower_threshold and rs.upper_threshold and rs.lower_threshold > rs.upper_threshold:
            yield Diagnostic((*here, "lower_threshold"), "lower_threshold is above upper_threshold")
        if forwarding != "nat" and rs.port is not None and svc.port and rs.port != svc.port:
            yield Diagnostic(
                (*here, "port"),
                f"{forwarding} forwarding cannot change the port: packets keep port {svc.port}",
                severity="warning",
            )
        if rs.check is not None:
            for found in _check_check((*here, "check"), inherited_check(svc.check, rs.check)):
                if found.message not in service_faults:
                    yield found


SERVICE_RULES = [
    _vip_or_fwmark,
    _port,
    _scheduler_flags,
    _one_packet,
    _quorum,
    _persistence_netmask,
    _service_tunnel,
    _service_check,
    _sorry_family,
    _real_servers,
]


def _check_tunnel(at: Path, kind: str, port: int | None) -> Iterator[Diagnostic]:
    if kind == "gue" and port is None:
        yield Diagnostic(at, "a gue tunnel needs port (the UDP port of the decapsulator)")
    if kind != "gue" and port is not None:
        yield Diagnostic((*at, "port"), f"port applies to gue tunnels only, not {kind}")


def _check_check(at: Path, check: Check) -> Iterator[Diagnostic]:
    kinds = check.kinds
    if not kinds:
        yield Diagnostic(at, "choose a checker: one of tcp, http, udp, dns, misc, file")
    elif len(kinds) > 1:
        yield Diagnostic(at, f"one checker per check, got {', '.join(kinds)}")
    if check.interval <= 0:
        yield Diagnostic((*at, "interval"), "interval must be more than 0s")
    if check.timeout <= 0:
        yield Diagnostic((*at, "timeout"), "timeout must be more than 0s")
    elif check.timeout > check.interval:
        yield Diagnostic((*at, "timeout"), "timeout is longer than interval")
    bind, connect = check.bind_to, check.connect_ip
    if bind is not None and connect is not None and bind.version != connect.version:
        yield Diagnostic(
            (*at, "bind_to"),
            f"{bind} is not {_family(connect.version)} like connect_ip {connect}",
        )
    if check.misc is not None or check.file is not None:
        for key in ("connect_ip", "connect_port", "bind_to"):
            if getattr(check, key) is not None:
                yield Diagnostic(
                    (*at, key),
                    f"{key} is ignored by a {'misc' if check.misc else 'file'} check, "
                    "which opens no connection",
                    severity="warning",
                )
    if check.udp is not None:
        udp = check.udp
        if udp.payload and udp.payload_hex is not None:
            yield Diagnostic(
                (*at, "udp", "payload_hex"), "payload and payload_hex exclude each other"
            )
        if udp.expect is not None and udp.expect_hex is not None:
            yield Diagnostic((*at, "udp", "expect_hex"), "expect and expect_hex exclude each other")
    if check.http is not None:
        http = check.http
        if http.key_file is not None and http.cert_file is None:
            yield Diagnostic((*at, "http", "key_file"), "key_file needs cert_file")
        if not http.tls:
            for key in ("ca_file", "cert_file", "key_file", "sni"):
                if getattr(http, key) is not None:
                    yield Diagnostic(
                        (*at, "http", key), f"{key} applies to tls: true only", severity="warning"
                    )
            if not http.verify:
                yield Diagnostic(
                    (*at, "http", "verify"), "verify applies to tls: true only", severity="warning"
                )


def _netmask_problem(netmask: str | int, family: int) -> str | None:
    if family == 6:
        if isinstance(netmask, int) and 1 <= netmask <= 128:
            return None
        return f"an IPv6 persistence netmask is a prefix length 1-128, got {netmask!r}"
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
    except ValueError:
        return f"{netmask!r} is not an IPv4 netmask such as 255.255.255.0"
    return None


def check_services_together(services: list[Item[Service]]) -> Iterator[Diagnostic]:
    names: dict[str, int] = {}
    keys: dict[tuple[object, ...], int] = {}
    for s, svc in ((it.index, it.model) for it in services):
        at = ("services", s)
        if svc.name in names:
            yield Diagnostic(
                (*at, "name"),
                f"service name {svc.name!r} is already used by services[{names[svc.name]}]",
            )
        names.setdefault(svc.name, s)
        family = _service_family(svc)
        virtuals: list[tuple[tuple[object, ...], str]] = [
            (("fwmark", family, mark), f"fwmark {mark}") for mark in svc.marks
        ]
        virtuals += [
            ((svc.protocol, address, svc.port), f"{svc.protocol} {address}:{svc.port}")
            for address in svc.addresses
        ]
        for key, shown in virtuals:
            if key in keys and keys[key] != s:
                yield Diagnostic(at, f"{shown} is already defined by services[{keys[key]}]")
            keys.setdefault(key, s)


def check_ipvs(ipvs: Ipvs, instance_names: set[str]) -> Iterator[Diagnostic]:
    daemon = ipvs.sync_daemon
    if daemon is not None and daemon.instance not in instance_names:
        known = ", ".join(sorted(instance_names)) or "none"
        yield Diagnostic(
            ("ipvs", "sync_daemon", "instance"),
            f"no vrrp instance named {daemon.instance!r} (known: {known})",
        )
    if daemon is not None and daemon.group is not None and not daemon.group.is_multicast:
        yield Diagnostic(("ipvs", "sync_daemon", "group"), f"{daemon.group} is not multicast")
