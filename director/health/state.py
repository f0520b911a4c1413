"""Health of one real server as a pure state machine, and the quorum of a service.

No sockets, no clock: every call carries `now` (seconds, monotonic) and returns the events the
shell acts on, in order: transitions (log, notify) and weight changes (IPVS). One timer at a time
is pending; the shell reads `deadline` after each call and calls `timer(now)` when it passes
(slow-start steps, end of a drain).

    DOWN --rise successes--> UP (or SLOW_START, ramping the weight from 1 to full)
    UP/SLOW_START --fall failures--> DOWN (or DRAINING: weight 0, DOWN after the drain time)
    DRAINING --rise successes--> UP/SLOW_START

Effective weight: UP full, SLOW_START ramping, DRAINING 0, DOWN None (not in IPVS) with
`on_failure: remove` or 0 with `inhibit`. The operator's maintenance flag forces 0 (None stays
None) whatever the health, which goes on being tracked underneath.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

OnFailure = Literal["remove", "inhibit"]
K = TypeVar("K", bound=Hashable)

# Slow start moves the weight in at most SLOW_START_STEPS steps, at least SLOW_START_MIN_STEP
# apart (as HAProxy's warmup): each step is an IPVS update per real server.
SLOW_START_STEPS = 20
SLOW_START_MIN_STEP = 1.0


class State(enum.Enum):
    DOWN = "DOWN"
    UP = "UP"
    SLOW_START = "SLOW_START"
    DRAINING = "DRAINING"

    @property
    def alive(self) -> bool:
        """Healthy, as notify up/down and the quorum see it."""
        return self is State.UP or self is State.SLOW_START


@dataclass(frozen=True, slots=True)
class Policy:
    weight: int = 1  # configured weight
    rise: int = 1
    fall: int = 1
    alpha: bool = True  # start DOWN until the first success; False: start UP
    on_failure: OnFailure = "remove"
    drain: float = 0.0
    slow_start: float = 0.0


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    reason: str

    @property
    def went_up(self) -> bool:
        return self.new.alive and not self.old.alive

    @property
    def went_down(self) -> bool:
        return self.old.alive and not self.new.alive


@dataclass(frozen=True, slots=True)
class WeightChange:
    old: int | None
    new: int | None  # None: not in IPVS
    reason: str


Event = Transition | WeightChange


class LastResult(NamedTuple):
    ok: bool
    reason: str
    at: float


@dataclass(slots=True)
class Counters:
    checks: int = 0
    failures: int = 0
    transitions: int = 0


def _seconds(value: float) -> str:
    return f"{value:g}s"


class RealServerHealth:
    def __init__(self, policy: Policy, now: float) -> None:
        self.policy = policy
        self.maintenance = False
        self.dynamic_weight: int | None = None  # set by MISC (dynamic) and FILE checks
        self.counters = Counters()
        # The last result, kept as plain attributes: one is recorded per check.
        self._last: tuple[bool, str, float] | None = None
        self.last_change = now
        if policy.alpha:
            self.state = State.DOWN
            self.reason = "starting down until the first successful check (alpha)"
        else:
            self.state = State.UP
            self.reason = "starting up (alpha off)"
        self._successes = 0  # consecutive
        self._failures = 0  # consecutive
        self._pristine = True  # no result yet: a first success under alpha brings it up at once
        self._ramp_from: float | None = None
        self._ramp_next: float | None = None  # when the slow-start weight next moves
        self._drain_until: float | None = None
        self.weight: int | None = self._effective(now)

    # ------------------------------------------------------------ derived

    @property
    def last_result(self) -> LastResult | None:
        return None if self._last is None else LastResult(*self._last)

    @property
    def full_weight(self) -> int:
        return self.policy.weight if self.dynamic_weight is None else self.dynamic_weight

    @property
    def live_weight(self) -> int:
        """What this real server brings to its service's quorum: its full weight while healthy
        (a slow start counts in full: the capacity is there) and not in maintenance."""
        if self.state.alive and not self.maintenance:
            return self.full_weight
        return 0

    @property
    def deadline(self) -> float | None:
        if self.state is State.DRAINING:
            return self._drain_until
        if self.state is State.SLOW_START:
            return self._ramp_next
        return None

    # ------------------------------------------------------------ events

    def result(self, ok: bool, reason: str, now: float, weight: int | None = None) -> list[Event]:
        """The outcome of one check (after its retries). `weight` is a weight the check set."""
        self.counters.checks += 1
        self._last = (ok, reason, now)
        if ok and weight is None and self.state is State.UP:
            # Steady state, nearly every check: nothing can change (the general path below
            # would reach the same), so skip it.
            self._pristine = False
            self._successes += 1
            self._failures = 0
            return []
        pristine, self._pristine = self._pristine, False
        if ok:
            self._successes += 1
            self._failures = 0
            if weight is not None:
                self.dynamic_weight = max(0, weight)
        else:
            self.counters.failures += 1
            self._failures += 1
            self._successes = 0
        events: list[Event] = []
        policy = self.policy
        if self.state.alive:
            if not ok and self._failures >= policy.fall:
                why = self._in_a_row(reason, self._failures, "failures")
                if policy.drain > 0:
                    self._drain_until = now + policy.drain
                    events += self._move(State.DRAINING, why, now)
                else:
                    events += self._move(State.DOWN, why, now)
        elif ok and (pristine or self._successes >= policy.rise):
            if pristine:
                # Start-up: every real server would ramp together, which changes no ratio.
                events += self._move(State.UP, reason, now)
            else:
                events += self._recover(self._in_a_row(reason, self._successes, "successes"), now)
        # A weight change caused by a transition carries the transition's reason.
        return events + self._reweigh(self.reason if events else reason, now)

    def timer(self, now: float) -> list[Event]:
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        events: list[Event] = []
        if self.state is State.DRAINING:
            drained = f"drained for {_seconds(self.policy.drain)} after: {self.reason}"
            events += self._move(State.DOWN, drained, now)
            return events + self._reweigh(drained, now)
        weight, _ = self._ramp(now)
        if weight >= self.full_weight:
            done = f"slow start of {_seconds(self.policy.slow_start)} over"
            events += self._move(State.UP, done, now)
            return events + self._reweigh(done, now)
        return self._reweigh("slow start", now)

    def set_maintenance(self, on: bool, now: float) -> list[Event]:
        """The operator's drain (weight 0) or enable; it stays until cleared."""
        if on == self.maintenance:
            return []
        self.maintenance = on
        events: list[Event] = []
        if not on and self.state is State.UP and self._ramps():
            # It took no new connections while in maintenance: ramp it like a recovery.
            events += self._move(State.SLOW_START, "maintenance over", now)
            self._ramp_from = now
        why = "drained by the operator" if on else "enabled by the operator"
        return events + self._reweigh(why, now)

    def update_policy(self, policy: Policy, now: float) -> list[Event]:
        """A reload changed the weight or the timings: keep the history, apply the rest."""
        self.policy = policy
        events: list[Event] = []
        if self.state is State.SLOW_START and not self._ramps():
            events += self._move(State.UP, "slow start no longer configured", now)
        elif self.state is State.DRAINING and policy.drain <= 0:
            events += self._move(State.DOWN, "drain no longer configured", now)
        elif self.state is State.DRAINING:
            assert self._drain_until is not None
            self._drain_until = self.last_change + policy.drain
        return events + self._reweigh("configuration reloaded", now)

    # ------------------------------------------------------------ internals

    def _ramps(self) -> bool:
        return self.policy.slow_start > 0 and self.full_weight > 1

    def _recover(self, reason: str, now: float) -> list[Event]:
        if self._ramps():
            events = self._move(State.SLOW_START, reason, now)
            self._ramp_from = now
            return events
        return self._move(State.UP, reason, now)

    def _move(self, new: State, reason: str, now: float) -> list[Event]:
        old = self.state
        self.state = new
        self.reason = reason
        self.last_change = now
        self.counters.transitions += 1
        if new is not State.SLOW_START:
            self._ramp_from = self._ramp_next = None
        if new is not State.DRAINING:
            self._drain_until = None
        return [Transition(old, new, reason)]

    def _in_a_row(self, reason: str, count: int, what: str) -> str:
        return reason if count == 1 else f"{reason} ({count} {what} in a row)"

    def _step(self) -> float:
        return max(SLOW_START_MIN_STEP, self.policy.slow_start / SLOW_START_STEPS)

    def _weight_at_step(self, k: int) -> int:
        full, span = self.full_weight, self.policy.slow_start
        return min(full, max(1, int(full * min(k * self._step(), span) / span)))

    def _ramp(self, now: float) -> tuple[int, float]:
        """The weight at `now` and when it next changes. Weights move only at step boundaries,
        fixed from the start of the ramp so that a late timer shifts none of the later ones."""
        assert self._ramp_from is not None
        step, span = self._step(), self.policy.slow_start
        if now - self._ramp_from >= span - 1e-9:
            return self.full_weight, self._ramp_from + span
        # The epsilon: a timer fired exactly at a boundary must count that boundary as passed.
        k = max(0, math.floor((now - self._ramp_from) / step + 1e-9))
        weight = self._weight_at_step(k)
        if self.full_weight <= weight:
            return weight, self._ramp_from + span
        # The first boundary with a higher weight: solve full * j * step / span >= weight + 1,
        # then correct the float estimate by a step either way.
        j = max(k + 1, math.ceil((weight + 1) * span / (self.full_weight * step)) - 1)
        while j * step < span and self._weight_at_step(j) <= weight:
            j += 1
        return weight, self._ramp_from + min(j * step, span)

    def _effective(self, now: float) -> int | None:
        state = self.state
        if state is State.UP:
            base: int | None = self.full_weight
        elif state is State.SLOW_START:
            base, self._ramp_next = self._ramp(now)
        elif state is State.DRAINING:
            base = 0
        else:
            base = None if self.policy.on_failure == "remove" else 0
        if self.maintenance and base is not None:
            return 0
        return base

    def _reweigh(self, reason: str, now: float) -> list[Event]:
        new = self._effective(now)
        if new == self.weight:
            return []
        old, self.weight = self.weight, new
        return [WeightChange(old, new, reason)]


# ---------------------------------------------------------------- a service


def quorum_holds(up: bool, live_weight: int, quorum: int, hysteresis: int) -> bool:
    """keepalived's update_quorum_state: the quorum is gained when the live weight reaches
    quorum + hysteresis and lost when it is 0 or falls below quorum - hysteresis; in between the
    state stays. A quorum of 0 counts as 1 (keepalived's default): an empty pool never holds.
    keepalived starts a service with the quorum up and evaluates at once: pass `up=True` then."""
    needed = max(quorum, 1)
    if up:
        return live_weight > 0 and live_weight >= needed - hysteresis
    return live_weight >= needed + hysteresis


def ipvs_pool(weights: Mapping[K, int | None], quorum_up: bool, sorry: K | None) -> dict[K, int]:
    """The destinations IPVS should hold for one service, with their weights.

    Real servers with a weight are in; None ones are out. Without quorum and with a sorry server,
    the sorry server takes the new connections (weight 1) and the real servers stay at weight 0,
    so that established connections carry on (keepalived deletes them instead)."""
    pool = {key: weight for key, weight in weights.items() if weight is not None}
    if quorum_up or sorry is None:
        return pool
    out = dict.fromkeys(pool, 0)
    out[sorry] = 1
    return out
