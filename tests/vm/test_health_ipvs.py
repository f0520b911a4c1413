"""Health checks feeding IPVS in `director start`, with client traffic through the VIP (VM lab):
a real server answering 500 leaves the pool after `fall` failures and returns after `rise`
successes; inhibit keeps it at weight 0; quorum loss brings the sorry server in and out; an
operator's drain holds until enable."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.core import Lab
from lab.daemons import DIRECTOR, Director, wait_for
from lab.lvs import VIP, backends, fetch, ipvsadm, prepare_dr, run, web_service, write_config

URL = f"http://{VIP}/"
FRONT = {"name": "VI_1", "interface": "eth0", "vrid": 51, "addresses": [f"{VIP}/24"]}
CHECK = {"http": {"path": "/", "status": [200]}, "interval": "1s", "timeout": "1s"}
CHECK |= {"rise": 2, "fall": 2}
RS1, RS2, RS3 = "192.0.2.21", "192.0.2.22", "192.0.2.23"


@pytest.fixture
def web(lab: Lab) -> Iterator[Lab]:
    for node in ("rs1", "rs2", "rs3"):
        prepare_dr(lab, node)
    with backends(lab, [(n, n, ["0.0.0.0:80"]) for n in ("rs1", "rs2", "rs3")]):
        yield lab


@pytest.fixture
def daemon(web: Lab, tmp_path: Path) -> Iterator[list[Director]]:
    running: list[Director] = []
    try:
        yield running
    finally:
        for d in running:
            d.kill()


def start(lab: Lab, tmp: Path, running: list[Director], service: dict[str, Any]) -> Director:
    # The front instance alone, no peer: dir1 becomes master and holds the VIP, so the
    # client's traffic reaches IPVS.
    cfg = write_config(tmp / "dir1.yaml", "dir1", [service], vrrp={"instances": [FRONT]})
    d = Director(lab, "dir1", cfg, tmp / "dir1.log")
    running.append(d)
    wait_for("dir1 master", lambda: d.state() == "MASTER", timeout=60)
    return d


def weights(lab: Lab) -> dict[str, int]:
    """Real server -> weight in dir1's IPVS table."""
    out = ipvsadm(lab, "dir1")
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"->\s+([\d.]+):\d+\s+\w+\s+(\d+)", out)
    }


def set_status(lab: Lab, address: str, code: int) -> None:
    run(lab, "client", ["curl", "-s", "-m", "3", "-X", "POST", f"http://{address}/status/{code}"])


def member(d: Director, address: str) -> dict[str, Any]:
    status = d.status()
    assert status is not None
    for svc in status["health"]["services"]:
        for rs in svc["real_servers"]:
            if rs["address"] == address:
                found: dict[str, Any] = rs
                return found
    raise AssertionError(f"{address} not in health status: {status['health']}")


def test_failing_server_leaves_the_pool_and_returns_and_drain_holds(
    web: Lab, tmp_path: Path, daemon: list[Director]
) -> None:
    lab = web
    d = start(
        lab, tmp_path, daemon, web_service("dr", [{"address": RS1}, {"address": RS2}], check=CHECK)
    )
    wait_for("both real servers checked in", lambda: weights(lab) == {RS1: 1, RS2: 1}, 60)
    assert fetch(lab, URL, 4)["names"] == {"rs1": 2, "rs2": 2}

    set_status(lab, RS2, 500)
    wait_for("rs2 removed", lambda: weights(lab) == {RS1: 1}, 60)
    assert "HTTP 500" in str(member(d, RS2)), member(d, RS2)
    assert fetch(lab, URL, 4)["names"] == {"rs1": 4}, "clients stop reaching the failed server"

    set_status(lab, RS2, 200)
    wait_for("rs2 back", lambda: weights(lab) == {RS1: 1, RS2: 1}, 60)
    assert fetch(lab, URL, 4)["names"] == {"rs1": 2, "rs2": 2}

    drain = subprocess.run(
        [*DIRECTOR, "drain", "web", RS1, "--socket", d.socket],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert drain.returncode == 0, drain.stderr
    assert "drained" in drain.stdout
    wait_for("rs1 at weight 0", lambda: weights(lab) == {RS1: 0, RS2: 1}, 30)
    assert fetch(lab, URL, 4)["names"] == {"rs2": 4}
    enable = subprocess.run(
        [*DIRECTOR, "enable", "web", f"{RS1}:80", "--socket", d.socket],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert enable.returncode == 0, enable.stderr
    wait_for("rs1 back at weight 1", lambda: weights(lab) == {RS1: 1, RS2: 1}, 30)
    bad = subprocess.run(
        [*DIRECTOR, "drain", "web", "192.0.2.99", "--socket", d.socket],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1 and "has no real server 192.0.2.99" in bad.stderr


def test_inhibit_and_quorum_loss_switch_to_the_sorry_server_and_back(
    web: Lab, tmp_path: Path, daemon: list[Director]
) -> None:
    lab = web
    service = web_service(
        "dr",
        [{"address": RS1}, {"address": RS2}],
        check=CHECK,
        on_failure="inhibit",
        quorum=2,
        sorry_server=f"{RS3}:80",
    )
    d = start(lab, tmp_path, daemon, service)
    wait_for("both real servers checked in", lambda: weights(lab) == {RS1: 1, RS2: 1}, 60)

    set_status(lab, RS2, 500)
    # rs2 inhibited (weight 0): the live weight 1 is below the quorum of 2.
    wait_for("sorry server in", lambda: weights(lab) == {RS1: 0, RS2: 0, RS3: 1}, 60)
    assert fetch(lab, URL, 4)["names"] == {"rs3": 4}
    status = d.status()
    assert status is not None
    (svc,) = status["health"]["services"]
    assert svc["sorry_active"] and not svc["quorum"]["up"], svc
    assert svc["quorum"]["live_weight"] == 1

    set_status(lab, RS2, 200)
    wait_for("quorum back", lambda: weights(lab) == {RS1: 1, RS2: 1}, 60)
    assert fetch(lab, URL, 4)["names"] == {"rs1": 2, "rs2": 2}
