"""Real servers an operator drained (`director drain`), remembered across restarts until
`director enable` clears them: maintenance must not end because the daemon restarted."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from director.config.models import Service, parse_endpoint

FILENAME = "drained.json"
Entry = tuple[str, str, int]  # service, real server address, port


def parse_real_server(service: Service, text: str) -> tuple[str, int]:
    """`10.0.0.21`, `10.0.0.21:8080`, `[2001:db8::21]:80`: one of the service's real servers.
    Without a port the address must be on one port only (NAT can put it on several)."""
    try:
        address, port = parse_endpoint(text)
    except ValueError as exc:
        raise ValueError(f"real server {text!r}: {exc}") from None
    found = sorted(
        {
            rs.port if rs.port is not None else service.port or 0
            for rs in service.real_servers
            if rs.address == address
        }
    )
    if port is not None:
        found = [p for p in found if p == port]
    if len(found) == 1:
        return str(address), found[0]
    if found:
        ports = ", ".join(str(p) for p in found)
        raise ValueError(
            f"service {service.name!r} has {address} on ports {ports}: say which, as ADDRESS:PORT"
        )
    known = ", ".join(str(rs.address) for rs in service.real_servers) or "none"
    raise ValueError(f"service {service.name!r} has no real server {text} (it has: {known})")


class DrainedStore:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / FILENAME

    def load(self) -> set[Entry]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return set()
        out: set[Entry] = set()
        for item in data if isinstance(data, list) else []:
            if (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], str)
                and isinstance(item[2], int)
            ):
                out.add((item[0], item[1], item[2]))
        return out

    def save(self, entries: Iterable[Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".drained.")
        with os.fdopen(fd, "w") as f:
            json.dump(sorted(entries), f)
        os.replace(tmp, self.path)
