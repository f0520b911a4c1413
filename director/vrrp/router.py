"""One VRRP virtual router as a pure state machine (RFC 5798 section 6.4; RFC 3768 for v2).

No sockets, no clock: every event carries `now` (seconds, monotonic) and returns the actions the
shell must carry out, in order. One timer at a time is pending; the shell asks `deadline` and
calls `timer(now)` when it passes. Drops, counters and authentication happen before `receive`.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A stopping master keeps its VIPs this long at most after hearing the new master.
HANDOFF_GRACE_MAX = 0.05


class State(enum.Enum):
    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"
    # Planned stop of a master: priority 0 sent, VIPs kept until the new master is heard.
    STOPPING = "STOPPING"
    STOP = "STOP"


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class SendAdvert:
    priority: int


@dataclass(frozen=True, slots=True)
class AddVips:
    pass


@dataclass(frozen=True, slots=True)
class RemoveVips:
    pass


@dataclass(frozen=True, slots=True)
class Announce:
    """Gratuitous ARP / unsolicited NA for the VIPs (the shell applies garp delay/repeat)."""


@dataclass(frozen=True, slots=True)
class Transition:
    old: State
    new: State
    reason: str


Action = SendAdvert | AddVips | RemoveVips | Announce | Transition


@dataclass(frozen=True, slots=True)
class RouterConfig:
    name: str
    vrid: int
    version: int  # 2 or 3
    priority: int  # configured; 255 for the address owner
    interval_cs: int  # Advertisement_Interval, centiseconds
    primary: IPAddress  # this router's address on the link, for tie breaks
    preempt: bool = True
    preempt_delay: float = 0.0
    graceful_handoff: bool = True

    @property
    def owner(self) -> bool:
        return self.priority == 255


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.state = State.INIT
        self.priority = config.priority  # effective: configured + tracking
        self.master_interval_cs = config.interval_cs  # Master_Adver_Interval (v3 learns it)
        self.deadline: float | None = None
        self.master: IPAddress | None = None  # last master heard while backup
        self._started_at = 0.0
        self._resigned_by: IPAddress | None = None  # master that sent priority 0
        # Set while a sync-group peer is in FAULT: taking MASTER alone would split the group.
        self.hold_backup = False
        self._handed_to: IPAddress | None = None  # STOPPING: the new master we heard

    # ------------------------------------------------------------ derived timers

    @property
    def skew_time(self) -> float:
        if self.config.version == 2:
            return (256 - self.priority) / 256
        return (256 - self.priority) * self.master_interval_cs / 100 / 256

    @property
    def master_down_interval(self) -> float:
        if self.config.version == 2:
            return 3 * self.config.interval_cs / 100 + self.skew_time
        return 3 * self.master_interval_cs / 100 + self.skew_time

    @property
    def interval(self) -> float:
        return self.config.interval_cs / 100

    # ------------------------------------------------------------ events

    def start(self, now: float) -> list[Action]:
        if self.state is not State.INIT:
            return []
        self._started_at = now
        if self.config.owner:
            return self._become_master(now, "address owner (priority 255)")
        return self._become_backup(now, "started")

    def receive(self, src: IPAddress, priority: int, interval_cs: int, now: float) -> list[Action]:
        """An advertisement that passed every receive check, from `src`."""
        if self.state is State.BACKUP:
            return self._backup_receive(src, priority, interval_cs, now)
        if self.state is State.MASTER:
            return self._master_receive(src, priority, interval_cs, now)
        if self.state is State.STOPPING and priority > 0 and self._handed_to is None:
            # The new master announces the VIP (GARP/NA) just after this advert; keep answering
            # until that has reached the clients, for less than one of its advert intervals.
            self._handed_to = src
            self.deadline = now + min(interval_cs / 200, HANDOFF_GRACE_MAX)
        return []

    def timer(self, now: float) -> list[Action]:
        if self.deadline is None or now < self.deadline:
            return []
        if self.state is State.BACKUP:
            if self.hold_backup:
                self.deadline = now + self.master_down_interval
                return []
            if self._resigned_by is not None:
                reason = f"master {self._resigned_by} resigned (priority 0)"
            else:
                reason = "master down timer expired"
            return self._become_master(now, reason)
        if self.state is State.MASTER:
            # From the previous deadline, so a late wake-up does not stretch every interval;
            # after a stall (more than an interval late) start afresh rather than burst.
            due = self.deadline + self.interval
            self.deadline = due if due > now else now + self.interval
            return [SendAdvert(self.priority)]
        if self.state is State.STOPPING:
            if self._handed_to is not None:
                reason = f"new master {self._handed_to} heard"
            else:
                reason = "no new master within Master_Down_Interval"
            return [RemoveVips(), *self._move(State.STOP, reason)]
        return []

    def stop(self, now: float) -> list[Action]:
        if self.state is State.MASTER:
            actions: list[Action] = [SendAdvert(0)]
            if self.config.graceful_handoff:
                # Make before break: keep the VIPs until a new master speaks (or none will).
                self.deadline = now + self.master_down_interval
                return actions + self._move(State.STOPPING, "stopping, handing off")
            self.deadline = None
            return [*actions, RemoveVips(), *self._move(State.STOP, "stopping")]
        if self.state in (State.STOP, State.STOPPING):
            return []
        self.deadline = None
        return self._move(State.STOP, "stopping")

    def set_fault(self, faulty: bool, reason: str, now: float) -> list[Action]:
        if faulty:
            if self.state is State.MASTER:
                self.deadline = None
                return [SendAdvert(0), RemoveVips(), *self._move(State.FAULT, reason)]
            if self.state in (State.BACKUP, State.INIT):
                self.deadline = None
                return self._move(State.FAULT, reason)
            return []
        if self.state is State.FAULT:
            if self.config.owner:
                return self._become_master(now, reason)
            return self._become_backup(now, reason)
        return []

    def set_priority(self, priority: int, now: float) -> list[Action]:
        """Tracking moved the effective priority (the owner's stays 255)."""
        if self.config.owner:
            return []
        self.priority = max(1, min(254, priority))
        return []

    def force_backup(self, reason: str, now: float) -> list[Action]:
        """A sync-group peer left MASTER: follow it."""
        if self.state is not State.MASTER:
            return []
        return [RemoveVips(), *self._become_backup(now, reason)]

    def force_master(self, reason: str, now: float) -> list[Action]:
        """A sync-group peer became MASTER: follow it (from BACKUP only, never from FAULT)."""
        if self.state is not State.BACKUP:
            return []
        return self._become_master(now, reason)

    # ------------------------------------------------------------ per state

    def _backup_receive(
        self, src: IPAddress, priority: int, interval_cs: int, now: float
    ) -> list[Action]:
        if priority == 0:
            self._resigned_by = src
            self.deadline = now + self.skew_time
            return []
        if not self._may_preempt(now) or priority >= self.priority:
            self._resigned_by = None
            self.master = src
            if self.config.version == 3:
                self.master_interval_cs = interval_cs
            self.deadline = now + self.master_down_interval
        # A lower priority master while we may preempt: ignore it and let the timer expire.
        return []

    def _master_receive(
        self, src: IPAddress, priority: int, interval_cs: int, now: float
    ) -> list[Action]:
        if priority == 0:
            self.deadline = now + self.interval
            return [SendAdvert(self.priority)]
        if priority > self.priority:
            reason = f"higher priority {priority} from {src}"
        elif priority == self.priority and _address_key(src) > _address_key(self.config.primary):
            reason = f"equal priority {priority} and higher address {src}"
        else:
            # keepalived answers a lower-priority master at once, so it backs down quickly.
            self.deadline = now + self.interval
            return [SendAdvert(self.priority)]
        if self.config.version == 3:
            self.master_interval_cs = interval_cs
        self.master = src
        return [RemoveVips(), *self._become_backup(now, reason)]

    def _may_preempt(self, now: float) -> bool:
        return self.config.preempt and now >= self._started_at + self.config.preempt_delay

    # ------------------------------------------------------------ transitions

    def _become_master(self, now: float, reason: str) -> list[Action]:
        self._resigned_by = None
        self.master = None
        self.deadline = now + self.interval
        moved = self._move(State.MASTER, reason)
        return [AddVips(), SendAdvert(self.priority), Announce(), *moved]

    def _become_backup(self, now: float, reason: str) -> list[Action]:
        self._resigned_by = None
        if self.config.version == 2 or self.state is State.INIT:
            self.master_interval_cs = self.config.interval_cs
        self.deadline = now + self.master_down_interval
        return self._move(State.BACKUP, reason)

    def _move(self, new: State, reason: str) -> list[Action]:
        if new in (State.STOP, State.FAULT, State.INIT):
            self.deadline = None  # these states run no timer
        old, self.state = self.state, new
        return [Transition(old, new, reason)]


def _address_key(address: IPAddress) -> int:
    return int(address)
