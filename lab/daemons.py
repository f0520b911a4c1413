"""Directors as processes in lab namespaces, for tests, benchmarks and the demo."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from director.api.control import ControlError, request
from lab.core import Lab

DIRECTOR = [sys.executable, "-m", "director"]


def director_config(tmp: Path, name: str, instances: list[dict[str, Any]], **vrrp: Any) -> Path:
    """Write a config for node `name` whose control socket lives in `tmp`."""
    body = {
        "node": {
            "name": name,
            "control_socket": str(tmp / f"{name}.sock"),
            "state_dir": str(tmp / name),
        },
        "vrrp": {"instances": instances, **vrrp},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def vrrp_instance(priority: int, vip: str, **extra: Any) -> dict[str, Any]:
    """The lab's usual instance: VI_1, VRID 51 on eth0, VRRPv3 at 100 ms, one GARP."""
    return {
        "name": "VI_1",
        "interface": "eth0",
        "vrid": 51,
        "priority": priority,
        "version": 3,
        "advert_interval": "100ms",
        "addresses": [vip],
        "garp": {"delay": "0s", "repeat": 1},
        **extra,
    }


class Director:
    """`director start` in a lab node, logging to a file, with status over its socket."""

    def __init__(self, lab: Lab, node: str, cfg: Path, log: Path) -> None:
        self.lab, self.node, self.cfg, self.log_path = lab, node, cfg, log
        self.log: IO[str] = log.open("w")
        self.proc = lab.popen(
            node, [*DIRECTOR, "start", "-c", str(cfg)], stdout=self.log, stderr=self.log
        )
        self.socket = str(cfg.parent / f"{node}.sock")

    def status(self) -> dict[str, Any] | None:
        """The daemon's status over its control socket, None while it does not answer. Asked
        in-process rather than through `director status`: a Python start-up per poll costs
        seconds in the VM (the CLI itself is tested in tests/lab/test_vrrp_daemon.py)."""
        try:
            answer = request(self.socket, {"command": "status"}, timeout=10)
        except (ControlError, OSError, ValueError):
            return None
        status = answer.get("status")
        return status if answer.get("ok") and isinstance(status, dict) else None

    def instance(self, name: str | None = None) -> dict[str, Any] | None:
        status = self.status()
        if status is None:
            return None
        for inst in status["vrrp"]["instances"]:
            if name is None or inst["name"] == name:
                found: dict[str, Any] = inst
                return found
        return None

    def state(self, name: str | None = None) -> str | None:
        inst = self.instance(name)
        return None if inst is None else str(inst["state"])

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if not self.log.closed:
            self.log.close()

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll daemon or kernel state until `check` holds (bounded in time)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def holds(lab: Lab, node: str, address: str, dev: str = "eth0") -> bool:
    """Whether `address` (with its prefix, as `ip -br addr` shows it) is on `dev` in `node`."""
    out = lab.run(node, ["ip", "-br", "addr", "show", "dev", dev], capture_output=True, text=True)
    return address in out.stdout.split()
