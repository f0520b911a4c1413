"""The health-check shell: every check of every real server scheduled on the running loop.

Each real server has one pending deadline: its next attempt, or the timeout of the attempt in
flight (all kept in one heap behind one asyncio timer, deadlines.py). Attempts are due on a grid,
`first + k * interval`, where `first` is a random point in the first interval (thousands of
checks spread out instead of firing together); a late or slow check skips the slots it missed
rather than drifting or bursting. A failed attempt of a healthy server is retried `retries`
times, `retry_delay` apart, before the state machine sees a failure (keepalived's retry). The
outcome goes to state.py; what comes back is logged, notified and passed to `on_change`.

    runner = HealthRunner(config.services, on_change, on_quorum=on_quorum)
    runner.weights("web")          # initial weights, before any check
    runner.start()                 # inside the running loop
    ...
    await runner.stop()            # cancels every probe and timer; waits for MISC and notify
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from director import proc
from director.config.models import Check, RealServer, Service, inherited_check
from director.health.checkers import build_checker, substitute
from director.health.deadlines import Deadlines
from director.health.misc import MiscProbe
from director.health.poller import Poller
from director.health.probe import Checker, Probe, TaskProbe
from director.health.result import CheckResult
from director.health.state import (
    Event,
    Policy,
    RealServerHealth,
    Transition,
    WeightChange,
    ipvs_pool,
    quorum_holds,
)

log = logging.getLogger("director.health")

RealServerKey = tuple[str, int]
OnChange = Callable[[str, RealServerKey, int | None, str], None]
OnQuorum = Callable[[str, bool, str], None]
OnResult = Callable[[str, "RealServerKey", CheckResult], None]

QUORUM_COMMAND_TIMEOUT = 10.0
# Deadlines run in groups (deadlines.py), and sockets are polled in groups (poller.py): up to
# 5 % of the shortest interval late, 50 ms at most. At 300 checks a second this halves the CPU
# per check against 1 % (lab/bench/health), and lag stays well inside the 10 % operators allow.
SLACK_SHARE = 0.05
MAX_SLACK = 0.05
# Upper bounds of the schedule-lag histogram, in seconds.
LAG_BOUNDS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class RunnerStats:
    """How the schedule keeps up: attempts started and finished, and the lag of each start
    behind its due time (loop time when it ran minus loop time it was due)."""

    started: int = 0
    finished: int = 0
    failed: int = 0  # results that failed, after their retries
    retries: int = 0
    lag_max: float = 0.0
    lag_sum: float = 0.0
    lag_buckets: list[int] = field(default_factory=lambda: [0] * (len(LAG_BOUNDS) + 1))

    def lag_percentile(self, fraction: float) -> float:
        """Upper bound of the bucket holding that fraction of the lags (inf beyond the last)."""
        total = sum(self.lag_buckets)
        if not total:
            return 0.0
        running = 0
        for bound, count in zip((*LAG_BOUNDS, math.inf), self.lag_buckets, strict=True):
            running += count
            if running >= fraction * total:
                return bound
        return math.inf

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": self.finished,
            "failed": self.failed,
            "retries": self.retries,
            "lag_max": self.lag_max,
            "lag_mean": self.lag_sum / self.started if self.started else 0.0,
            "lag_p99": self.lag_percentile(0.99),
        }


def port_of(rs: RealServer, svc: Service) -> int:
    if rs.port is not None:
        return rs.port
    return svc.port or 0


def policy_of(rs: RealServer, svc: Service, check: Check | None) -> Policy:
    if check is None:
        # No check: always up, as keepalived treats a real server without checker.
        return Policy(weight=rs.weight, alpha=False)
    return Policy(
        weight=rs.weight,
        rise=check.rise,
        fall=check.fall,
        alpha=check.alpha,
        on_failure=svc.on_failure,
        drain=svc.drain,
        slow_start=svc.slow_start,
    )


class _Member:
    """One real server of one service: its health, its checker and its pending deadlines."""

    __slots__ = (
        "address",
        "attempt",
        "check",
        "checker",
        "due",
        "gen",
        "health",
        "key",
        "live",
        "port",
        "probe",
        "runner",
        "service",
        "slot",
        "state_at",
    )

    def __init__(
        self, runner: HealthRunner, service: str, rs: RealServer, svc: Service, now: float
    ) -> None:
        self.runner = runner
        self.service = service
        self.address = str(rs.address)
        self.port = port_of(rs, svc)
        self.key: RealServerKey = (self.address, self.port)
        self.check: Check | None = inherited_check(svc.check, rs.check)
        self.health = RealServerHealth(policy_of(rs, svc, self.check), now)
        self.live = self.health.live_weight  # as counted in the service's live weight
        self.checker: Checker | None = self._build()
        self.probe: Probe | None = None
        self.gen = 0  # bumped to void the pending attempt (halt, new check)
        self.state_at: float | None = None  # the pending slow-start/drain deadline
        self.slot = 0.0  # the grid point of the current cycle
        self.due = 0.0  # when the pending attempt is due
        self.attempt = 0  # retries spent in this cycle

    def _build(self) -> Checker | None:
        if self.check is None:
            return None
        return build_checker(self.check, self.address, self.port, self.service)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.service} {host}:{self.port}"

    # ------------------------------------------------------------ scheduling

    def begin(self, now: float, rng: random.Random) -> None:
        if self.checker is None or self.check is None:
            return
        self.slot = now + rng.uniform(0.0, self.check.interval)
        self._attempt_at(self.slot)

    def _attempt_at(self, when: float) -> None:
        self.due = when
        self.runner.deadlines.push(when, self._attempt, self.gen)

    # The two methods below run for every check: they read the runner's attributes directly
    # and repeat a little code rather than call helpers (a Python call costs about as much as
    # a system call, and there are thousands of checks a second).

    def _attempt(self, gen: int, due: float) -> None:
        if gen != self.gen or self.probe is not None:
            return
        runner = self.runner
        now = runner.clock()
        lag = now - due
        stats = runner.stats
        stats.started += 1
        if lag > stats.lag_max:
            stats.lag_max = lag
        stats.lag_sum += lag
        stats.lag_buckets[bisect.bisect_left(LAG_BOUNDS, lag)] += 1
        assert self.checker is not None and self.check is not None
        timeout = self.check.timeout
        probe = self.probe = self.checker.start(timeout, self.finished, timer=False)
        deadlines = runner._deadlines
        assert deadlines is not None
        deadlines.push(now + timeout, self._expire, probe)

    def _expire(self, probe: Probe, due: float) -> None:
        if self.probe is probe:
            probe.expire()

    def finished(self, result: CheckResult) -> None:
        runner = self.runner
        now = runner.clock()
        self.probe = None
        runner.stats.finished += 1
        check = self.check
        assert check is not None
        health = self.health
        if not result.ok and health.state.alive and self.attempt < check.retries:
            self.attempt += 1
            runner.stats.retries += 1
            self._attempt_at(now + check.retry_delay)
            return
        reason = result.reason
        if not result.ok:
            runner.stats.failed += 1
        if self.attempt:
            reason = f"{reason} (attempt {self.attempt + 1})"
            self.attempt = 0
        if runner.on_result is not None:
            runner.on_result(self.service, self.key, result)
        events = health.result(result.ok, reason, now, result.weight)
        if events:
            runner.apply(self, events)
        interval = check.interval
        slot = self.slot + interval
        if slot <= now:
            slot += interval * math.ceil((now - slot) / interval + 1e-9)
        self.slot = self.due = slot
        deadlines = runner._deadlines
        if deadlines is not None:  # None: on_change stopped the runner
            deadlines.push(slot, self._attempt, self.gen)

    def arm_state_timer(self) -> None:
        deadline = self.health.deadline
        if deadline != self.state_at:
            self.state_at = deadline
            if deadline is not None:
                self.runner.deadlines.push(deadline, self._state_due, deadline)

    def _state_due(self, token: float, due: float) -> None:
        if self.state_at != token:
            return
        self.state_at = None
        events = self.health.timer(self.runner.clock())
        self.runner.apply(self, events)

    def halt(self) -> asyncio.Task[Any] | None:
        """Void the pending deadlines and cancel the attempt in flight; a MISC command still
        running is returned to be waited for (it ends by itself, at the latest at its
        timeout)."""
        self.gen += 1
        self.state_at = None
        probe, self.probe = self.probe, None
        if probe is None:
            return None
        probe.cancel()
        if isinstance(probe, MiscProbe | TaskProbe):
            return probe.task
        return None


@dataclass
class _Service:
    config: Service
    members: dict[RealServerKey, _Member]
    quorum_up: bool = True
    live_weight: int = 0

    @property
    def sorry(self) -> RealServerKey | None:
        sorry = self.config.sorry_server
        if sorry is None:
            return None
        return (str(sorry.address), sorry.port or self.config.port or 0)


class HealthRunner:
    def __init__(
        self,
        services: Sequence[Service],
        on_change: OnChange,
        *,
        on_quorum: OnQuorum | None = None,
        on_result: OnResult | None = None,
        rng: random.Random | None = None,
        slack: float | None = None,
    ) -> None:
        """Build every real server's state (usable at once through weights(), pool() and
        status()); nothing runs until start(). `on_result` sees every check's outcome after
        its retries (for tracing and metrics; it must be cheap). `slack`: how late deadlines
        may run to be grouped (default: 5 % of the shortest interval, at most 50 ms)."""
        self.on_change = on_change
        self.on_quorum = on_quorum
        self.on_result = on_result
        self._fixed_slack = slack
        self.stats = RunnerStats()
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None
        self.clock: Callable[[], float] = time.monotonic  # the loop's clock, once started
        self._commands: set[asyncio.Task[proc.Outcome]] = set()
        self._services: dict[str, _Service] = {}
        now = time.monotonic()  # the clock of asyncio's loop.time()
        for svc in services:
            self._services[svc.name] = self._new_service(svc, now)

    # ------------------------------------------------------------ life cycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "HealthRunner.start() was not called"
        return self._loop

    @property
    def deadlines(self) -> Deadlines:
        assert self._deadlines is not None, "HealthRunner.start() was not called"
        return self._deadlines

    def start(self) -> None:
        """Schedule every check on the running loop (call from a coroutine or callback)."""
        if self._loop is not None:
            raise RuntimeError("HealthRunner already started")
        self._loop = loop = asyncio.get_running_loop()
        # asyncio's loop.time() is time.monotonic() behind a Python method call; use the
        # clock itself when it is that one.
        same = abs(loop.time() - time.monotonic()) < 1e-3
        self.clock = time.monotonic if same else loop.time
        slack = self._slack()
        self._deadlines = Deadlines(loop, slack)
        poller = Poller.of(loop)
        poller.coalesce = slack
        self._deadlines.poll = poller.dispatch
        now = loop.time()
        for svc in self._services.values():
            self._begin_service(svc, now)
        # Everything built so far lives as long as the daemon: out of the cyclic collector's
        # way, or a full collection walks all of it (about 100 ms at 8,000 real servers,
        # stalling every check). Freed objects still go by reference counting.
        gc.freeze()

    async def stop(self) -> None:
        """Cancel every timer and probe (sockets closed); wait for MISC commands in flight and
        for notify and quorum commands, each bounded by its own timeout."""
        pending: list[asyncio.Task[Any]] = []
        for svc in self._services.values():
            for member in svc.members.values():
                task = member.halt()
                if task is not None:
                    pending.append(task)
        if self._deadlines is not None:
            self._deadlines.close()
        if self._loop is not None:
            poller = Poller.existing(self._loop)
            if poller is not None:
                poller.coalesce = 0.0  # sockets left on this loop are served at once again
            Poller.release(self._loop)
        pending.extend(self._commands)
        if pending:
            await asyncio.wait(pending)
        self._loop = None
        self._deadlines = None

    def reload(self, services: Sequence[Service]) -> None:
        """Apply a new config: real servers that stay keep their health history, maintenance
        flag and schedule (a changed check restarts its schedule); weights and timings follow
        the new config. The caller rebuilds its desired state from pool() afterwards: on_change
        reports changes of real servers that stay, not the ones added or removed."""
        now = time.monotonic() if self._loop is None else self._loop.time()
        old = self._services
        self._services = {}
        for config in services:
            previous = old.pop(config.name, None)
            if previous is None:
                svc = self._new_service(config, now)
                self._services[config.name] = svc
                if self._loop is not None:
                    self._begin_service(svc, now)
                continue
            svc = _Service(config, {}, quorum_up=previous.quorum_up)
            self._services[config.name] = svc
            for rs in config.real_servers:
                key = (str(rs.address), port_of(rs, config))
                member = previous.members.pop(key, None)
                if member is None:
                    member = _Member(self, config.name, rs, config, now)
                    if self._loop is not None:
                        member.begin(now, self._rng)
                else:
                    self._keep(member, rs, config, now)
                svc.members[key] = member
            for gone in previous.members.values():
                self._detach(gone.halt())
            svc.live_weight = self._live_weight(svc)
            self._update_quorum(svc)
        for removed in old.values():
            for gone in removed.members.values():
                self._detach(gone.halt())
        if self._deadlines is not None and self._loop is not None:
            self._deadlines.slack = Poller.of(self._loop).coalesce = self._slack()

    # ------------------------------------------------------------ queries and control

    def weights(self, service: str) -> dict[RealServerKey, int | None]:
        """Every real server's effective weight (None: not in IPVS)."""
        return {key: m.health.weight for key, m in self._service(service).members.items()}

    def quorum(self, service: str) -> bool:
        return self._service(service).quorum_up

    def pool(self, service: str) -> dict[RealServerKey, int]:
        """What IPVS should hold for the service: health weights, and the sorry server in the
        real servers' stead while the quorum is lost (state.ipvs_pool)."""
        svc = self._service(service)
        return ipvs_pool(self.weights(service), svc.quorum_up, svc.sorry)

    def overrides(self) -> list[tuple[str, RealServerKey]]:
        """Real servers the operator drained, for the daemon to keep across restarts."""
        return [
            (name, key)
            for name, svc in self._services.items()
            for key, member in svc.members.items()
            if member.health.maintenance
        ]

    def set_override(self, service: str, real_server: RealServerKey, drained: bool) -> None:
        """The operator's drain (weight 0, health still checked) or enable; it stays until
        cleared, across reloads. Raises KeyError for an unknown service or real server."""
        svc = self._service(service)
        member = svc.members.get(real_server)
        if member is None:
            address, port = real_server
            raise KeyError(f"service {service!r} has no real server {address}:{port}")
        now = time.monotonic() if self._loop is None else self._loop.time()
        events = member.health.set_maintenance(drained, now)
        log.info("%s: %s by the operator", member, "drained" if drained else "enabled")
        self.apply(member, events)

    def status(self) -> dict[str, Any]:
        """JSON-able state of every service and real server; times are Unix seconds."""
        mono_now = time.monotonic() if self._loop is None else self._loop.time()
        offset = time.time() - mono_now
        services = []
        for name, svc in self._services.items():
            config = svc.config
            sorry = svc.sorry
            members = []
            for member in svc.members.values():
                health = member.health
                last = health.last_result
                members.append(
                    {
                        "address": member.address,
                        "port": member.port,
                        "check": None if member.checker is None else member.checker.kind,
                        "state": health.state.value,
                        "weight": health.weight,
                        "configured_weight": health.policy.weight,
                        "dynamic_weight": health.dynamic_weight,
                        "maintenance": health.maintenance,
                        "reason": health.reason,
                        "last_change": round(health.last_change + offset, 3),
                        "last_result": None
                        if last is None
                        else {
                            "ok": last.ok,
                            "reason": last.reason,
                            "at": round(last.at + offset, 3),
                        },
                        "checks": health.counters.checks,
                        "failures": health.counters.failures,
                        "transitions": health.counters.transitions,
                    }
                )
            services.append(
                {
                    "name": name,
                    "quorum": {
                        "up": svc.quorum_up,
                        "live_weight": svc.live_weight,
                        "quorum": config.quorum,
                        "hysteresis": config.hysteresis,
                    },
                    "sorry_server": None if sorry is None else f"{sorry[0]}:{sorry[1]}",
                    "sorry_active": sorry is not None and not svc.quorum_up,
                    "real_servers": members,
                }
            )
        return {"services": services, "stats": self.stats.as_dict()}

    # ------------------------------------------------------------ internals

    def _slack(self) -> float:
        if self._fixed_slack is not None:
            return self._fixed_slack
        intervals = [
            member.check.interval
            for svc in self._services.values()
            for member in svc.members.values()
            if member.check is not None
        ]
        return min(MAX_SLACK, SLACK_SHARE * min(intervals, default=1.0))

    def _service(self, name: str) -> _Service:
        try:
            return self._services[name]
        except KeyError:
            raise KeyError(f"no service {name!r}") from None

    def _new_service(self, config: Service, now: float) -> _Service:
        members = {}
        for rs in config.real_servers:
            member = _Member(self, config.name, rs, config, now)
            members[member.key] = member
        svc = _Service(config, members)
        svc.live_weight = self._live_weight(svc)
        # keepalived starts a service with the quorum up and evaluates it at once.
        svc.quorum_up = quorum_holds(True, svc.live_weight, config.quorum, config.hysteresis)
        return svc

    def _begin_service(self, svc: _Service, now: float) -> None:
        for member in svc.members.values():
            member.begin(now, self._rng)
            member.arm_state_timer()  # a slow start begun before start() (maintenance over)
        if not svc.quorum_up:
            log.info(
                "%s: starting with the quorum down (live weight %d)",
                svc.config.name,
                svc.live_weight,
            )
            self._quorum_command(svc, up=False)

    def _keep(self, member: _Member, rs: RealServer, config: Service, now: float) -> None:
        check = inherited_check(config.check, rs.check)
        if check != member.check:
            self._detach(member.halt())
            member.check = check
            member.checker = member._build()
            member.attempt = 0
            if self._loop is not None:
                member.begin(now, self._rng)
        events = member.health.update_policy(policy_of(rs, config, check), now)
        self.apply(member, events)

    def _detach(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None and not task.done():
            self._commands.add(task)
            task.add_done_callback(self._commands.discard)

    def _live_weight(self, svc: _Service) -> int:
        for member in svc.members.values():
            member.live = member.health.live_weight
        return sum(member.live for member in svc.members.values())

    def apply(self, member: _Member, events: Iterable[Event]) -> None:
        """Log, notify and report what the state machine decided, then re-arm its timer."""
        changed = False
        for event in events:
            changed = True
            if isinstance(event, Transition):
                log.info("%s: %s -> %s: %s", member, event.old.value, event.new.value, event.reason)
                if event.went_up or event.went_down:
                    self._notify(member, event.went_up)
            elif isinstance(event, WeightChange):
                log.log(
                    logging.DEBUG if event.reason == "slow start" else logging.INFO,
                    "%s: weight %s -> %s: %s",
                    member,
                    event.old,
                    event.new,
                    event.reason,
                )
                try:
                    self.on_change(member.service, member.key, event.new, event.reason)
                except Exception:
                    log.exception("%s: on_change failed", member)
        if self._loop is not None:
            member.arm_state_timer()
        live = member.health.live_weight
        if changed and live != member.live:
            svc = self._services.get(member.service)
            if svc is not None and svc.members.get(member.key) is member:
                # Kept as a running sum: re-adding thousands of weights per event would make
                # a start-up where every real server comes up quadratic.
                svc.live_weight += live - member.live
                member.live = live
                self._update_quorum(svc)

    def _update_quorum(self, svc: _Service) -> None:
        config = svc.config
        live = svc.live_weight
        up = quorum_holds(svc.quorum_up, live, config.quorum, config.hysteresis)
        if up == svc.quorum_up:
            return
        svc.quorum_up = up
        needed = max(config.quorum, 1)
        if up:
            reason = f"quorum gained: live weight {live} >= {needed} + {config.hysteresis}"
        else:
            reason = f"quorum lost: live weight {live} < {needed} - {config.hysteresis}"
        log.warning("%s: %s", config.name, reason)
        if self.on_quorum is not None:
            try:
                self.on_quorum(config.name, up, reason)
            except Exception:
                log.exception("%s: on_quorum failed", config.name)
        self._quorum_command(svc, up)

    def _quorum_command(self, svc: _Service, up: bool) -> None:
        command = svc.config.quorum_up if up else svc.config.quorum_down
        if command is not None and self._loop is not None:
            argv = [arg.replace("{service}", svc.config.name) for arg in command]
            what = f"{svc.config.name} quorum_{'up' if up else 'down'}"
            self._spawn(argv, QUORUM_COMMAND_TIMEOUT, what)

    def _notify(self, member: _Member, up: bool) -> None:
        check = member.check
        if check is None or self._loop is None:
            return
        command = check.notify_up if up else check.notify_down
        if command is not None:
            argv = substitute(command, member.service, member.address, member.port)
            what = f"{member} notify_{'up' if up else 'down'}"
            self._spawn(argv, check.notify_timeout, what)

    def _spawn(self, argv: list[str], timeout: float, what: str) -> None:
        task = proc.spawn(argv, timeout, what)
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
