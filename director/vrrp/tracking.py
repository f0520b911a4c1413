"""Effective priority from tracked objects, as keepalived computes it (pure).

- weight 0: a failure puts the instance in FAULT;
- weight > 0: added to the priority while the object is healthy;
- weight < 0: subtracted while it fails;
- track files: the file's integer times the weight is added; at -254 or below, FAULT.
The address owner's priority is never moved (it stays 255).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tracked:
    name: str  # "interface eth1", "script nginx", "file /run/x"
    weight: int
    healthy: bool = True
    value: int | None = None  # track files only: the integer read


@dataclass(frozen=True, slots=True)
class Effect:
    priority: int
    faults: tuple[str, ...]  # names of the objects that force FAULT

    @property
    def fault(self) -> bool:
        return bool(self.faults)


def effective(base: int, tracked: Iterable[Tracked], *, owner: bool = False) -> Effect:
    priority = base
    faults: list[str] = []
    for item in tracked:
        if item.value is not None:
            delta = item.value * item.weight
            if delta <= -254:
                faults.append(item.name)
            priority += delta
        elif item.weight == 0:
            if not item.healthy:
                faults.append(item.name)
        elif (item.weight > 0) == item.healthy:
            # a positive weight counts while healthy, a negative one while failing
            priority += item.weight
    if owner:
        return Effect(255, tuple(faults))
    return Effect(max(1, min(254, priority)), tuple(faults))


@dataclass
class RiseFall:
    """A tracked script's health: `fall` consecutive failures to go down, `rise` consecutive
    successes to come back. Starts healthy, as keepalived's scripts do without `init_fail`."""

    rise: int
    fall: int
    healthy: bool = True
    _streak: int = 0

    def record(self, ok: bool) -> bool:
        """Record one result; return True when the health changed."""
        if ok == self.healthy:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak >= (self.rise if ok else self.fall):
            self.healthy = ok
            self._streak = 0
            return True
        return False
