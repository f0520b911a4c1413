"""Which IPVS services the director owns, remembered across restarts.

Without `flush`, the director deletes only services it created: those in its config now, and
those it recorded before (a service dropped from the config between two runs, or left behind by
a crash). The record is written before every change that adds services, so a crash mid-apply
never leaves a service the next run would not recognise.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from director.ipvs.model import ServiceKey

FILENAME = "ipvs-owned.json"


def _encode(key: ServiceKey) -> list[object]:
    return [key.family, key.protocol, key.address, key.port, key.fwmark]


def _decode(item: object) -> ServiceKey | None:
    if not (isinstance(item, list) and len(item) == 5):
        return None
    family, protocol, address, port, fwmark = item
    if not (
        isinstance(family, int)
        and isinstance(protocol, int)
        and isinstance(address, str)
        and isinstance(port, int)
        and isinstance(fwmark, int)
    ):
        return None
    return ServiceKey(family, protocol, address, port, fwmark)


class OwnedStore:
    def __init__(self, state_dir: str | Path | None) -> None:
        self.path = Path(state_dir) / FILENAME if state_dir is not None else None
        self.keys: set[ServiceKey] = self._read()

    def _read(self) -> set[ServiceKey]:
        if self.path is None:
            return set()
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return set()  # none yet, or unreadable: own only what the config names
        items = data.get("services", []) if isinstance(data, dict) else []
        return {k for k in map(_decode, items) if k is not None}

    def owns(self, key: ServiceKey) -> bool:
        return key in self.keys

    def save(self, keys: Iterable[ServiceKey]) -> None:
        new = set(keys)
        if new == self.keys:
            return
        self.keys = new
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"services": [_encode(k) for k in sorted(new)]})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ipvs-owned.")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, self.path)
