"""The state file: every step start applied, with its previous value, per network namespace,
and the setup it was asked for (so status and check need no flags).

JSON, versioned, written atomically (temporary file in the same directory, fsync, rename), so a
crash leaves either the old or the new state and never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realserver.spec import Spec, spec_from_dict, spec_to_dict
from realserver.steps import Step, step_from_dict, step_to_dict

VERSION = 1
STATE_DIR = Path("/run/realserver")
NETNS_PATH = "/proc/self/ns/net"


class StateError(Exception):
    """The state file exists but cannot be read or understood; the message names the file."""


@dataclass(frozen=True)
class State:
    netns: int  # inode of the network namespace
    steps: tuple[Step, ...] = ()
    spec: Spec | None = None  # what start was asked for (status and check reuse it)

    def appended(self, steps: Sequence[Step]) -> State:
        return State(self.netns, (*self.steps, *steps), self.spec)


def netns_inode(path: str | Path = NETNS_PATH) -> int:
    """The identity of a network namespace: the inode of its nsfs file."""
    return os.stat(path).st_ino


def state_path(netns: int, state_dir: str | Path = STATE_DIR) -> Path:
    return Path(state_dir) / f"netns-{netns}.json"


def dumps(state: State) -> str:
    data: dict[str, Any] = {
        "version": VERSION,
        "netns": state.netns,
        "steps": [step_to_dict(step) for step in state.steps],
    }
    if state.spec is not None:
        data["spec"] = spec_to_dict(state.spec)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def loads(text: str, where: str = "<state>") -> State:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{where}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"{where}: expected a JSON object")
    if data.get("version") != VERSION:
        raise StateError(f"{where}: version {data.get('version')!r}, expected {VERSION}")
    netns = data.get("netns")
    steps = data.get("steps")
    if not isinstance(netns, int) or isinstance(netns, bool):
        raise StateError(f"{where}: netns must be an integer, got {netns!r}")
    if not isinstance(steps, list):
        raise StateError(f"{where}: steps must be a list, got {steps!r}")
    parsed: list[Step] = []
    for index, item in enumerate(steps):
        try:
            parsed.append(step_from_dict(item))
        except ValueError as exc:
            raise StateError(f"{where}: steps[{index}]: {exc}") from None
    spec = None
    if data.get("spec") is not None:
        try:
            spec = spec_from_dict(data["spec"])
        except ValueError as exc:
            raise StateError(f"{where}: spec: {exc}") from None
    return State(netns, tuple(parsed), spec)


def load(path: str | Path) -> State | None:
    """The recorded state, or None when there is none (nothing was started)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{file}: cannot read: {exc}") from None
    return loads(text, str(file))


def save(path: str | Path, state: State) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(file.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)
