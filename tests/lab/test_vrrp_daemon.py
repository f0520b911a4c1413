"""Two `director start` daemons in dir1/dir2 sharing a VIP, on the real kernel in the lab."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.core import Lab
from lab.daemons import DIRECTOR, Director, director_config, holds, vrrp_instance, wait_for
from lab.topology import VIP4


def config(tmp: Path, name: str, priority: int, **instance: Any) -> Path:
    return director_config(tmp, name, [vrrp_instance(priority, f"{VIP4}/24", **instance)])


def holds_vip(lab: Lab, node: str) -> bool:
    return holds(lab, node, f"{VIP4}/24")


@pytest.fixture
def pair(lab: Lab, tmp_path: Path) -> Iterator[tuple[Director, Director]]:
    d1 = Director(lab, "dir1", config(tmp_path, "dir1", 150), tmp_path / "dir1.log")
    d2 = Director(lab, "dir2", config(tmp_path, "dir2", 100), tmp_path / "dir2.log")
    try:
        yield d1, d2
    finally:
        d1.kill()
        d2.kill()


def test_election_failover_preemption_and_clean_stop(
    lab: Lab, pair: tuple[Director, Director]
) -> None:
    d1, d2 = pair
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    wait_for("dir2 BACKUP", lambda: d2.state() == "BACKUP")
    wait_for("VIP on dir1", lambda: holds_vip(lab, "dir1"))
    assert not holds_vip(lab, "dir2")
    assert lab.ping("client", str(VIP4))

    status = d2.status()
    assert status is not None
    # The operator's view: `director status` prints the same document.
    cli = subprocess.run(
        [*DIRECTOR, "status", "--socket", d2.socket],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["node"] == status["node"] == "dir2"
    inst = status["vrrp"]["instances"][0]
    assert inst["master"] == lab.addr("dir1", "lan")
    assert inst["counters"]["adverts_received"] > 0
    # dir2 may have won a first election if it started faster than dir1; count from here.
    expired = d2.text().count("master down timer expired")

    # Cut dir1's cable: dir1 sees its link down (FAULT), dir2 takes over.
    with lab.link_cut("dir1", "eth0"):
        wait_for("dir2 MASTER", lambda: d2.state() == "MASTER")
        wait_for("dir1 FAULT", lambda: d1.state() == "FAULT")
        wait_for("VIP on dir2", lambda: holds_vip(lab, "dir2"))
        assert not holds_vip(lab, "dir1")
        assert lab.ping("client", str(VIP4))
        assert d2.text().count("master down timer expired") == expired + 1
    # Cable back: dir1 (higher priority, preempt) takes the VIP back.
    wait_for("dir1 MASTER again", lambda: d1.state() == "MASTER")
    wait_for("dir2 BACKUP again", lambda: d2.state() == "BACKUP")
    wait_for("VIP back on dir1", lambda: holds_vip(lab, "dir1") and not holds_vip(lab, "dir2"))
    assert "higher priority 150 from 192.0.2.2" in d2.text()

    # A planned stop: exit 0, the backup takes over, nothing left behind.
    assert d1.stop() == 0
    assert not holds_vip(lab, "dir1")
    wait_for("dir2 MASTER after handoff", lambda: d2.state() == "MASTER")
    assert "new master 192.0.2.3 heard" in d1.text()
    assert not Path(d1.socket).exists()
    assert d2.stop() == 0
    assert not holds_vip(lab, "dir2")


def test_leftover_vip_from_a_crash_is_removed_before_backup(lab: Lab, tmp_path: Path) -> None:
    d1 = Director(lab, "dir1", config(tmp_path, "dir1", 200), tmp_path / "dir1.log")
    try:
        wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
        # What a killed dir2 would have left behind:
        lab.run("dir2", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"], check=True)
        d2 = Director(lab, "dir2", config(tmp_path, "dir2", 100), tmp_path / "dir2.log")
        try:
            wait_for("dir2 BACKUP", lambda: d2.state() == "BACKUP")
            assert not holds_vip(lab, "dir2")
            assert "leftover VIP" in d2.text()
            assert "-> MASTER" not in d2.text()  # it never held the VIP as master
        finally:
            assert d2.stop() == 0
    finally:
        assert d1.stop() == 0


def test_bad_config_exits_1_and_touches_nothing(lab: Lab, tmp_path: Path) -> None:
    bad = config(tmp_path, "dir1", 300)
    done = lab.run("dir1", [*DIRECTOR, "start", "-c", str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "vrrp.instances[0].priority" in done.stderr
    assert not holds_vip(lab, "dir1")


def test_unknown_interface_is_a_clear_startup_error(lab: Lab, tmp_path: Path) -> None:
    cfg = config(tmp_path, "dir1", 150, interface="eth9")
    done = lab.run("dir1", [*DIRECTOR, "start", "-c", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "eth9" in done.stderr and "Traceback" not in done.stderr
    assert not Path(tmp_path / "dir1.sock").exists()
