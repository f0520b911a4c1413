"""FILE check: the weight is read from a file (keepalived's track_file with FILE_CHECK).

The file holds an integer: 0 or more is up with that weight (0: up but taking no new
connections), a negative number is down; a missing or unreadable file, or one that holds no
integer, is down with the reason. Read without blocking: a FIFO without writer reads as empty.
"""

from __future__ import annotations

import os

from director.config.models import FileCheck
from director.health.probe import Done, ReadyProbe
from director.health.result import CheckResult

MAX_WEIGHT = 65535
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


def read_weight(path: str) -> CheckResult:
    try:
        fd = os.open(path, _FLAGS)
        try:
            raw = os.read(fd, 64)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return CheckResult(False, f"{path} does not exist")
    except OSError as exc:
        return CheckResult(False, f"cannot read {path}: {exc.strerror or exc}")
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        return CheckResult(False, f"{path} holds {text[:20]!r}, not an integer weight")
    if value < 0:
        return CheckResult(False, f"{path} holds {value}: down")
    weight = min(value, MAX_WEIGHT)
    return CheckResult(True, f"{path} holds weight {weight}", weight=weight)


class FileChecker:
    kind = "file"

    def __init__(self, file: FileCheck) -> None:
        self.path = file.path

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> ReadyProbe:
        return ReadyProbe(read_weight(self.path), done)
