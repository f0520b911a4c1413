"""Durations in the config: `10ms`, `1.5s`, `2m`, `1h`, or a plain number of seconds."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds as a float. Rejects negatives, booleans and unknown units."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 500ms, 2s or 1m, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            number, unit = match.groups()
            # round() keeps "10ms" at exactly 0.01 so interval arithmetic stays exact.
            return round(float(number) * _UNITS[unit or "s"], 9)
    raise ValueError(
        f"invalid duration {value!r}: use seconds (2, 0.5) or a number with ms, s, m or h"
    )


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$"},
            ],
            "description": "seconds, or a number with a unit: 10ms, 1.5s, 2m, 1h",
        }
    ),
]
