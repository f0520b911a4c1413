"""plan(desired, actual) -> the ordered operations that turn the kernel table into the desired.

Order: stale real servers, stale services, new or changed services, new or changed real servers.
Removing first keeps thresholds and schedulers from ever seeing a mix of old and new servers
longer than needed, and a service is always there before its real servers. Services the
director does not own are left alone. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from director.ipvs.model import (
    FORWARDING_NAMES,
    DestKey,
    DestSpec,
    Service,
    ServiceKey,
    ServiceSpec,
    Table,
)


@dataclass(frozen=True)
class AddService:
    key: ServiceKey
    spec: ServiceSpec


@dataclass(frozen=True)
class SetService:
    key: ServiceKey
    spec: ServiceSpec
    old: ServiceSpec


@dataclass(frozen=True)
class DelService:
    key: ServiceKey


@dataclass(frozen=True)
class AddDest:
    service: ServiceKey
    key: DestKey
    spec: DestSpec


@dataclass(frozen=True)
class SetDest:
    service: ServiceKey
    key: DestKey
    spec: DestSpec
    old: DestSpec


@dataclass(frozen=True)
class DelDest:
    service: ServiceKey
    key: DestKey


Op = AddService | SetService | DelService | AddDest | SetDest | DelDest


def plan(desired: Table, actual: Table, owns: Callable[[ServiceKey], bool]) -> list[Op]:
    """The operations, in the order they must run. `owns(key)` says whether a service that is
    in the kernel but not desired is the director's to delete."""
    del_dests: list[Op] = []
    del_services: list[Op] = []
    put_services: list[Op] = []
    put_dests: list[Op] = []
    for key in sorted(actual.keys() - desired.keys()):
        if owns(key):
            del_services.append(DelService(key))
    for key in sorted(desired):
        want = desired[key]
        have = actual.get(key)
        if have is None:
            put_services.append(AddService(key, want.spec))
            put_dests.extend(AddDest(key, d, want.dests[d]) for d in sorted(want.dests))
            continue
        if have.spec == want.spec and have.dests == want.dests:
            continue  # the common case on a resync: no sorting, no per-server comparison
        if have.spec != want.spec:
            put_services.append(SetService(key, want.spec, have.spec))
        del_dests.extend(DelDest(key, d) for d in sorted(have.dests.keys() - want.dests.keys()))
        for dest in sorted(want.dests):
            old = have.dests.get(dest)
            if old is None:
                put_dests.append(AddDest(key, dest, want.dests[dest]))
            elif old != want.dests[dest]:
                put_dests.append(SetDest(key, dest, want.dests[dest], old))
    return del_dests + del_services + put_services + put_dests


def apply_ops(actual: Table, ops: Iterable[Op]) -> dict[ServiceKey, Service]:
    """What the kernel holds after `ops`, computed: the model the property tests check plan
    against, and a cheap way to predict the table after a partial failure."""
    services: dict[ServiceKey, ServiceSpec] = {k: s.spec for k, s in actual.items()}
    dests: dict[ServiceKey, dict[DestKey, DestSpec]] = {k: dict(s.dests) for k, s in actual.items()}
    for op in ops:
        match op:
            case AddService(key, spec) | SetService(key, spec, _):
                services[key] = spec
                dests.setdefault(key, {})
            case DelService(key):
                services.pop(key, None)
                dests.pop(key, None)
            case AddDest(service, key, spec) | SetDest(service, key, spec, _):
                dests[service][key] = spec
            case DelDest(service, key):
                dests[service].pop(key, None)
    return {k: Service(k, spec, dests[k]) for k, spec in services.items()}


# ---------------------------------------------------------------- text


def describe_service(spec: ServiceSpec) -> str:
    parts = [spec.scheduler]
    if spec.timeout:
        parts.append(f"persistent {spec.timeout}")
    if spec.flags:
        parts.append(f"flags 0x{spec.flags:x}")
    return " ".join(parts)


def describe_dest(spec: DestSpec) -> str:
    parts = [FORWARDING_NAMES.get(spec.forwarding, str(spec.forwarding)), f"weight {spec.weight}"]
    if spec.upper_threshold or spec.lower_threshold:
        parts.append(f"thresholds {spec.lower_threshold}-{spec.upper_threshold}")
    return " ".join(parts)


def _changes(old: object, new: object) -> str:
    fields: Mapping[str, object] = vars(new)
    return ", ".join(
        f"{name} {getattr(old, name)} -> {value}"
        for name, value in fields.items()
        if getattr(old, name) != value
    )


def describe(op: Op) -> str:
    """One line per operation, as `director plan` prints it."""
    match op:
        case AddService(key, spec):
            return f"+ service {key} {describe_service(spec)}"
        case SetService(key, spec, old):
            return f"~ service {key}: {_changes(old, spec)}"
        case DelService(key):
            return f"- service {key}"
        case AddDest(service, key, spec):
            return f"+ real server {key} in {service}: {describe_dest(spec)}"
        case SetDest(service, key, spec, old):
            return f"~ real server {key} in {service}: {_changes(old, spec)}"
        case DelDest(service, key):
            return f"- real server {key} in {service}"
    raise AssertionError(op)
