"""What one check attempt reports, whatever the checker."""

from __future__ import annotations

from typing import NamedTuple


class CheckResult(NamedTuple):
    """A tuple rather than a dataclass: one is made per check, thousands a second."""

    ok: bool
    # Precise and operator-facing: "HTTP 503 from 10.0.0.21:80", "connect timeout after 1s".
    reason: str
    # A weight the check itself set (MISC exit 2-255, FILE); None leaves the weight as it was.
    weight: int | None = None
