"""The IPVS planner: applying plan(desired, actual) to actual yields desired, for any tables."""

from __future__ import annotations

import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from director.ipvs.model import (
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED1,
    DestKey,
    DestSpec,
    Service,
    ServiceKey,
    ServiceSpec,
    Table,
)
from director.ipvs.plan import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    Op,
    SetDest,
    SetService,
    apply_ops,
    describe,
    plan,
)

# Small pools, so that desired and actual overlap often: shared services with shared, missing
# and changed real servers are the interesting cases.
SERVICE_KEYS = [
    ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.1", 80),
    ServiceKey(socket.AF_INET, socket.IPPROTO_UDP, "192.0.2.1", 80),
    ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, "192.0.2.2", 443),
    ServiceKey(socket.AF_INET6, socket.IPPROTO_TCP, "2001:db8::1", 80),
    ServiceKey(socket.AF_INET, fwmark=7),
    ServiceKey(socket.AF_INET6, fwmark=7),
]
DEST_KEYS = [
    DestKey("198.51.100.1", 80),
    DestKey("198.51.100.1", 8080),
    DestKey("198.51.100.2", 80),
    DestKey("2001:db8::10", 80),
]

service_specs = st.builds(
    ServiceSpec,
    scheduler=st.sampled_from(["rr", "wrr", "sh"]),
    flags=st.sampled_from([0, IP_VS_SVC_F_PERSISTENT, IP_VS_SVC_F_SCHED1]),
    timeout=st.sampled_from([0, 300]),
    netmask=st.sampled_from([0xFFFFFFFF, 0xFFFFFF00, 64]),
)
dest_specs = st.builds(
    DestSpec,
    forwarding=st.sampled_from([FWD_MASQ, FWD_DROUTE, FWD_TUNNEL]),
    weight=st.integers(0, 3),
    upper_threshold=st.sampled_from([0, 100]),
    lower_threshold=st.sampled_from([0, 10]),
)


@st.composite
def tables(draw: st.DrawFn) -> dict[ServiceKey, Service]:
    keys = draw(st.lists(st.sampled_from(SERVICE_KEYS), unique=True))
    out = {}
    for key in keys:
        dests = draw(st.dictionaries(st.sampled_from(DEST_KEYS), dest_specs))
        out[key] = Service(key, draw(service_specs), dests)
    return out


def everything(_key: ServiceKey) -> bool:
    return True


def phase(op: Op) -> int:
    """The planner's promised order: stale real servers, stale services, services, real
    servers."""
    match op:
        case DelDest():
            return 0
        case DelService():
            return 1
        case AddService() | SetService():
            return 2
        case AddDest() | SetDest():
            return 3
    raise AssertionError(op)


@given(tables(), tables())
def test_applying_the_plan_yields_the_desired_table(desired: Table, actual: Table) -> None:
    assert apply_ops(actual, plan(desired, actual, everything)) == desired


@given(tables(), tables())
def test_operations_come_in_phase_order(desired: Table, actual: Table) -> None:
    phases = [phase(op) for op in plan(desired, actual, everything)]
    assert phases == sorted(phases)


@given(tables(), tables(), st.sets(st.sampled_from(SERVICE_KEYS)))
def test_services_not_owned_are_left_alone(
    desired: Table, actual: Table, owned: set[ServiceKey]
) -> None:
    ops = plan(desired, actual, lambda key: key in owned)
    result = apply_ops(actual, ops)
    for key, service in actual.items():
        if key not in desired and key not in owned:
            assert result[key] == service  # untouched, real servers included
            assert not any(getattr(op, "key", None) == key for op in ops)
            assert not any(getattr(op, "service", None) == key for op in ops)
        elif key not in desired:
            assert key not in result  # owned and no longer desired: deleted
    for key, service in desired.items():
        assert result[key] == service


@given(tables())
def test_no_change_plans_nothing(table: Table) -> None:
    assert plan(table, table, everything) == []
    # the same content in other objects (as a dump gives it)
    copy = {k: Service(k, s.spec, dict(s.dests)) for k, s in table.items()}
    assert plan(table, copy, everything) == []


@settings(max_examples=50)
@given(tables(), tables())
def test_the_plan_is_minimal_per_object(desired: Table, actual: Table) -> None:
    """Each service and real server is touched at most once, and only if it differs."""
    ops = plan(desired, actual, everything)
    touched = [
        (op.key,) if isinstance(op, AddService | SetService | DelService) else (op.service, op.key)
        for op in ops
    ]
    assert len(touched) == len(set(touched))
    for op in ops:
        if isinstance(op, SetService):
            assert actual[op.key].spec == op.old != op.spec
        if isinstance(op, SetDest):
            assert actual[op.service].dests[op.key] == op.old != op.spec
        # A deleted service takes its real servers with it: no separate deletes for them.
        if isinstance(op, DelDest):
            assert op.service in desired


def test_a_single_weight_change_is_one_operation() -> None:
    key = SERVICE_KEYS[0]
    before = {key: Service(key, ServiceSpec("wrr"), {DEST_KEYS[0]: DestSpec(FWD_DROUTE, 1)})}
    after = {key: Service(key, ServiceSpec("wrr"), {DEST_KEYS[0]: DestSpec(FWD_DROUTE, 5)})}
    ops = plan(after, before, everything)
    assert ops == [SetDest(key, DEST_KEYS[0], DestSpec(FWD_DROUTE, 5), DestSpec(FWD_DROUTE, 1))]
    assert describe(ops[0]) == "~ real server 198.51.100.1:80 in TCP 192.0.2.1:80: weight 1 -> 5"
