"""The pure health state machine and the quorum, driven with a fake clock."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.health.state import (
    Event,
    Policy,
    RealServerHealth,
    State,
    Transition,
    WeightChange,
    ipvs_pool,
    quorum_holds,
)

OK = "HTTP 200 from 10.0.0.21:80"
BAD = "HTTP 503 from 10.0.0.21:80"


def transitions(events: list[Event]) -> list[tuple[State, State]]:
    return [(e.old, e.new) for e in events if isinstance(e, Transition)]


def weights(events: list[Event]) -> list[tuple[int | None, int | None]]:
    return [(e.old, e.new) for e in events if isinstance(e, WeightChange)]


def run_timers(rs: RealServerHealth, until: float) -> list[Event]:
    """Fire every deadline up to `until`, as the shell would."""
    events: list[Event] = []
    for _ in range(10_000):
        deadline = rs.deadline
        if deadline is None or deadline > until:
            return events
        events += rs.timer(deadline)
    raise AssertionError("deadlines never ran out")


# ---------------------------------------------------------------- start


def test_alpha_starts_down_and_first_success_brings_it_up_despite_rise() -> None:
    rs = RealServerHealth(Policy(weight=5, rise=3), now=0.0)
    assert rs.state is State.DOWN and rs.weight is None
    events = rs.result(True, OK, now=1.0)
    assert transitions(events) == [(State.DOWN, State.UP)]
    assert weights(events) == [(None, 5)]
    assert rs.reason == OK and rs.last_change == 1.0


def test_alpha_first_failure_then_rise_applies() -> None:
    rs = RealServerHealth(Policy(weight=5, rise=3), now=0.0)
    assert rs.result(False, BAD, 1.0) == []
    assert rs.result(True, OK, 2.0) == []
    assert rs.result(True, OK, 3.0) == []
    events = rs.result(True, OK, 4.0)
    assert transitions(events) == [(State.DOWN, State.UP)]
    assert rs.reason == f"{OK} (3 successes in a row)"


def test_alpha_off_starts_up_with_full_weight() -> None:
    rs = RealServerHealth(Policy(weight=7, alpha=False, fall=2), now=0.0)
    assert rs.state is State.UP and rs.weight == 7
    assert rs.result(False, BAD, 1.0) == []
    events = rs.result(False, BAD, 2.0)
    assert transitions(events) == [(State.UP, State.DOWN)]
    assert weights(events) == [(7, None)]
    assert rs.reason == f"{BAD} (2 failures in a row)"


def test_inhibit_keeps_weight_zero_when_down() -> None:
    rs = RealServerHealth(Policy(weight=3, on_failure="inhibit"), now=0.0)
    assert rs.weight == 0
    rs.result(True, OK, 1.0)
    assert rs.weight == 3
    events = rs.result(False, BAD, 2.0)
    assert weights(events) == [(3, 0)]
    assert rs.state is State.DOWN


# ---------------------------------------------------------------- rise and fall


def test_fall_counts_consecutive_failures_only() -> None:
    rs = RealServerHealth(Policy(fall=3, alpha=False), now=0.0)
    for t, ok in enumerate([False, False, True, False, False], start=1):
        assert rs.result(ok, OK if ok else BAD, float(t)) == []
    assert rs.state is State.UP
    assert transitions(rs.result(False, BAD, 6.0)) == [(State.UP, State.DOWN)]
    assert rs.counters.checks == 6 and rs.counters.failures == 5
    assert rs.counters.transitions == 1


def test_rise_counts_consecutive_successes_only() -> None:
    rs = RealServerHealth(Policy(rise=2, alpha=False), now=0.0)
    rs.result(False, BAD, 1.0)
    assert rs.state is State.DOWN
    rs.result(True, OK, 2.0)
    rs.result(False, BAD, 3.0)
    assert rs.result(True, OK, 4.0) == []
    assert transitions(rs.result(True, OK, 5.0)) == [(State.DOWN, State.UP)]


# ---------------------------------------------------------------- drain


def test_drain_holds_weight_zero_then_removes() -> None:
    rs = RealServerHealth(Policy(weight=4, drain=10.0, alpha=False), now=0.0)
    events = rs.result(False, BAD, 1.0)
    assert transitions(events) == [(State.UP, State.DRAINING)]
    assert weights(events) == [(4, 0)]
    assert rs.deadline == 11.0
    assert rs.timer(10.9) == []
    events = rs.timer(11.0)
    assert transitions(events) == [(State.DRAINING, State.DOWN)]
    assert weights(events) == [(0, None)]
    assert rs.reason == f"drained for 10s after: {BAD}"
    assert rs.deadline is None


def test_drain_recovery_before_the_end_keeps_it_in() -> None:
    rs = RealServerHealth(Policy(weight=4, drain=10.0, alpha=False, rise=2), now=0.0)
    rs.result(False, BAD, 1.0)
    rs.result(True, OK, 2.0)
    events = rs.result(True, OK, 3.0)
    assert transitions(events) == [(State.DRAINING, State.UP)]
    assert weights(events) == [(0, 4)]
    assert rs.deadline is None
    assert rs.timer(11.0) == []


def test_drain_with_inhibit_stays_at_zero() -> None:
    rs = RealServerHealth(Policy(weight=4, drain=5.0, on_failure="inhibit", alpha=False), 0.0)
    rs.result(False, BAD, 1.0)
    events = rs.timer(6.0)
    assert transitions(events) == [(State.DRAINING, State.DOWN)]
    assert weights(events) == [] and rs.weight == 0


# ---------------------------------------------------------------- slow start


def test_slow_start_ramps_from_one_to_full_and_exposes_each_change() -> None:
    rs = RealServerHealth(Policy(weight=10, slow_start=10.0, alpha=False), now=0.0)
    rs.result(False, BAD, 1.0)
    events = rs.result(True, OK, 2.0)
    assert transitions(events) == [(State.DOWN, State.SLOW_START)]
    assert weights(events) == [(None, 1)]
    seen: list[int] = [rs.weight or 0]
    times = []
    while rs.state is State.SLOW_START:
        deadline = rs.deadline
        assert deadline is not None
        times.append(deadline)
        events = rs.timer(deadline)
        # Every deadline is a weight change (or the end of the ramp): no idle wake-ups.
        assert weights(events) or transitions(events)
        seen.append(rs.weight or 0)
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 10
    assert times == sorted(times) and times[-1] == pytest.approx(12.0)
    assert rs.reason == "slow start of 10s over"


def test_slow_start_steps_are_at_least_a_second_apart() -> None:
    rs = RealServerHealth(Policy(weight=1000, slow_start=4.0, alpha=False), now=0.0)
    rs.result(False, BAD, 0.0)
    rs.result(True, OK, 0.0)
    times = [0.0]
    while rs.state is State.SLOW_START:
        deadline = rs.deadline
        assert deadline is not None
        times.append(deadline)
        rs.timer(deadline)
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))
    assert len(times) == 5 and rs.weight == 1000


def test_slow_start_late_timer_catches_up_without_shifting_steps() -> None:
    rs = RealServerHealth(Policy(weight=20, slow_start=20.0, alpha=False), now=0.0)
    rs.result(False, BAD, 0.0)
    rs.result(True, OK, 0.0)
    events = rs.timer(10.5)  # the loop was stalled for ten seconds
    assert weights(events) == [(1, 10)]
    assert rs.deadline == pytest.approx(11.0)


def test_startup_success_does_not_slow_start() -> None:
    rs = RealServerHealth(Policy(weight=10, slow_start=30.0), now=0.0)
    rs.result(True, OK, 1.0)
    assert rs.state is State.UP and rs.weight == 10


def test_failure_during_slow_start_goes_down() -> None:
    rs = RealServerHealth(Policy(weight=10, slow_start=30.0, alpha=False), now=0.0)
    rs.result(False, BAD, 0.0)
    rs.result(True, OK, 1.0)
    events = rs.result(False, BAD, 2.0)
    assert transitions(events) == [(State.SLOW_START, State.DOWN)]
    assert rs.deadline is None


# ---------------------------------------------------------------- dynamic weight


def test_dynamic_weight_sticks_until_changed() -> None:
    rs = RealServerHealth(Policy(weight=1), now=0.0)
    events = rs.result(True, "exit 12", 1.0, weight=10)
    assert weights(events) == [(None, 10)]
    assert rs.result(True, "exit 0", 2.0) == []
    assert rs.weight == 10
    assert weights(rs.result(True, "exit 4", 3.0, weight=2)) == [(10, 2)]
    assert rs.live_weight == 2


def test_dynamic_weight_zero_is_up_with_weight_zero() -> None:
    rs = RealServerHealth(Policy(weight=5), now=0.0)
    rs.result(True, "weight 0 in /run/w", 1.0, weight=0)
    assert rs.state is State.UP and rs.weight == 0 and rs.live_weight == 0


# ---------------------------------------------------------------- maintenance


def test_maintenance_survives_health_changes_until_cleared() -> None:
    rs = RealServerHealth(Policy(weight=5, alpha=False), now=0.0)
    assert weights(rs.set_maintenance(True, 1.0)) == [(5, 0)]
    assert rs.live_weight == 0
    assert weights(rs.result(False, BAD, 2.0)) == [(0, None)]
    events = rs.result(True, OK, 3.0)
    assert transitions(events) == [(State.DOWN, State.UP)]
    # Healthy again but still drained: in IPVS at weight 0, so it takes no new connections.
    assert weights(events) == [(None, 0)]
    assert rs.weight == 0 and rs.maintenance
    assert weights(rs.set_maintenance(False, 4.0)) == [(0, 5)]
    assert rs.set_maintenance(False, 5.0) == []


def test_leaving_maintenance_slow_starts() -> None:
    rs = RealServerHealth(Policy(weight=8, alpha=False, slow_start=8.0), now=0.0)
    rs.set_maintenance(True, 1.0)
    events = rs.set_maintenance(False, 2.0)
    assert transitions(events) == [(State.UP, State.SLOW_START)]
    assert weights(events) == [(0, 1)]
    run_timers(rs, 100.0)
    assert rs.state is State.UP and rs.weight == 8


def test_reload_changes_weight_and_keeps_history() -> None:
    policy = Policy(weight=2, alpha=False, fall=2)
    rs = RealServerHealth(policy, now=0.0)
    rs.result(False, BAD, 1.0)
    events = rs.update_policy(replace(policy, weight=6), 2.0)
    assert weights(events) == [(2, 6)]
    # The failure before the reload still counts toward fall.
    assert transitions(rs.result(False, BAD, 3.0)) == [(State.UP, State.DOWN)]


def test_reload_removing_drain_finishes_it() -> None:
    policy = Policy(weight=2, alpha=False, drain=30.0)
    rs = RealServerHealth(policy, now=0.0)
    rs.result(False, BAD, 1.0)
    events = rs.update_policy(replace(policy, drain=0.0), 2.0)
    assert transitions(events) == [(State.DRAINING, State.DOWN)]
    assert rs.weight is None


# ---------------------------------------------------------------- properties

policies = st.builds(
    Policy,
    weight=st.integers(0, 300),
    rise=st.integers(1, 4),
    fall=st.integers(1, 4),
    alpha=st.booleans(),
    on_failure=st.sampled_from(["remove", "inhibit"]),
    drain=st.sampled_from([0.0, 0.5, 3.0]),
    slow_start=st.sampled_from([0.0, 2.0, 25.0]),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("ok"), st.none() | st.integers(0, 253)),
        st.tuples(st.just("fail"), st.none()),
        st.tuples(st.just("maint"), st.booleans()),
    ),
    max_size=40,
)


def drive(policy: Policy, script: list[tuple[str, object]]) -> tuple[RealServerHealth, float]:
    rs = RealServerHealth(policy, now=0.0)
    now = 0.0
    for kind, arg in script:
        now += 0.7
        run_timers(rs, now)
        before = (rs.state, rs.weight, rs.counters.transitions)
        if kind == "maint":
            assert isinstance(arg, bool)
            events = rs.set_maintenance(arg, now)
        else:
            assert arg is None or isinstance(arg, int)
            events = rs.result(kind == "ok", kind, now, weight=arg)
        # Events tell exactly what changed, in order.
        moves = [e for e in events if isinstance(e, Transition)]
        changes = [e for e in events if isinstance(e, WeightChange)]
        assert rs.counters.transitions - before[2] == len(moves)
        if moves:
            assert moves[0].old is before[0] and moves[-1].new is rs.state
        if changes:
            assert changes[0].old == before[1] and changes[-1].new == rs.weight
        else:
            assert rs.weight == before[1]
        check_invariants(rs)
    return rs, now


def check_invariants(rs: RealServerHealth) -> None:
    weight = rs.weight
    assert (weight is None) == (rs.state is State.DOWN and rs.policy.on_failure == "remove")
    if weight:
        assert rs.state.alive and not rs.maintenance
        assert 1 <= weight <= rs.full_weight
    if rs.state is State.UP and not rs.maintenance:
        assert weight == rs.full_weight
    assert (rs.deadline is not None) == (rs.state in (State.SLOW_START, State.DRAINING))
    assert rs.live_weight == (rs.full_weight if rs.state.alive and not rs.maintenance else 0)


@settings(max_examples=300, deadline=None)
@given(policies, steps)
def test_events_match_state_and_invariants_hold(
    policy: Policy, script: list[tuple[str, object]]
) -> None:
    drive(policy, script)


@settings(max_examples=200, deadline=None)
@given(policies, steps)
def test_enough_successes_end_up_at_full_weight(
    policy: Policy, script: list[tuple[str, object]]
) -> None:
    rs, now = drive(policy, script)
    rs.set_maintenance(False, now)
    for _ in range(policy.rise):
        now += 1.0
        rs.result(True, OK, now)
    run_timers(rs, now + policy.slow_start + policy.drain + 1.0)
    assert rs.state is State.UP
    assert rs.weight == rs.full_weight


@settings(max_examples=200, deadline=None)
@given(policies, steps)
def test_enough_failures_end_down(policy: Policy, script: list[tuple[str, object]]) -> None:
    rs, now = drive(policy, script)
    for _ in range(policy.fall):
        now += 1.0
        rs.result(False, BAD, now)
    run_timers(rs, now + policy.drain + 1.0)
    assert rs.state is State.DOWN
    assert rs.weight == (None if policy.on_failure == "remove" else 0)
    assert rs.live_weight == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500), st.integers(2, 5000), st.floats(0.5, 600))
def test_slow_start_is_monotonic_and_reaches_full(start: int, weight: int, span: float) -> None:
    rs = RealServerHealth(Policy(weight=weight, slow_start=span, alpha=False), now=0.0)
    rs.result(False, BAD, float(start))
    rs.result(True, OK, float(start))
    seen: list[int] = [rs.weight or 0]
    last = float(start)
    while rs.state is State.SLOW_START:
        deadline = rs.deadline
        assert deadline is not None and deadline > last
        last = deadline
        rs.timer(deadline)
        seen.append(rs.weight or 0)
    assert seen[0] == 1 and seen[-1] == weight
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert last == pytest.approx(start + span)


# ---------------------------------------------------------------- quorum


def test_quorum_follows_keepalived_thresholds() -> None:
    # quorum 10, hysteresis 2: gained at 12, lost below 8.
    assert quorum_holds(False, 11, 10, 2) is False
    assert quorum_holds(False, 12, 10, 2) is True
    assert quorum_holds(True, 8, 10, 2) is True
    assert quorum_holds(True, 7, 10, 2) is False


def test_quorum_zero_means_any_live_weight() -> None:
    assert quorum_holds(True, 0, 0, 0) is False
    assert quorum_holds(False, 1, 0, 0) is True
    # An empty pool loses the quorum even when hysteresis would tolerate it.
    assert quorum_holds(True, 0, 3, 3) is False


@given(
    st.integers(1, 50),
    st.integers(0, 10),
    st.lists(st.integers(0, 80), min_size=1, max_size=50),
)
def test_quorum_only_flips_outside_the_band(quorum: int, hysteresis: int, sums: list[int]) -> None:
    hysteresis = min(hysteresis, quorum - 1)
    up = True
    for total in sums:
        new = quorum_holds(up, total, quorum, hysteresis)
        if new != up:
            if new:
                assert total >= quorum + hysteresis
            else:
                assert total == 0 or total < quorum - hysteresis
        else:
            # Inside the band the state never moves: that is the flap dampener.
            assert up or total < quorum + hysteresis
        up = new


def test_ipvs_pool_swaps_in_the_sorry_server() -> None:
    a, b, c, sorry = ("10.0.0.21", 80), ("10.0.0.22", 80), ("10.0.0.23", 80), ("10.0.0.99", 80)
    weights_ = {a: 3, b: None, c: 0}
    assert ipvs_pool(weights_, True, sorry) == {a: 3, c: 0}
    assert ipvs_pool(weights_, False, None) == {a: 3, c: 0}
    assert ipvs_pool(weights_, False, sorry) == {a: 0, c: 0, sorry: 1}
