"""Tracking, notifications, sync groups and IPv6, with two directors on the real kernel."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.core import Lab
from lab.daemons import Director, director_config, holds, vrrp_instance, wait_for
from lab.topology import BACKEND_GW4, VIP4, VIP6


def instance(priority: int, **extra: Any) -> dict[str, Any]:
    return vrrp_instance(priority, f"{VIP4}/24", **extra)


class Pair:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.running: list[Director] = []

    def start(self, node: str, instances: list[dict[str, Any]], **vrrp: Any) -> Director:
        cfg = director_config(self.tmp, node, instances, **vrrp)
        d = Director(self.lab, node, cfg, self.tmp / f"{node}.log")
        self.running.append(d)
        return d


@pytest.fixture
def pair(lab: Lab, tmp_path: Path) -> Iterator[Pair]:
    p = Pair(lab, tmp_path)
    try:
        yield p
    finally:
        for d in p.running:
            d.kill()


def recorder(out: Path) -> list[str]:
    """A notify command (no shell) that appends its arguments as one line to `out`."""
    code = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"
    return [sys.executable, "-c", code, str(out)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_notify_per_state_and_generic_with_keepalived_arguments(
    lab: Lab, pair: Pair, tmp_path: Path
) -> None:
    log = tmp_path / "notify.log"
    notify = {
        "master": [*recorder(log), "master-script"],
        "backup": [*recorder(log), "backup-script"],
        "stop": [*recorder(log), "stop-script"],
        "generic": recorder(log),
        "timeout": "5s",
    }
    d1 = pair.start("dir1", [instance(150, notify=notify)])
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    wait_for("master notifications", lambda: len(lines(log)) >= 4)
    got = lines(log)
    assert "backup-script" in got and "INSTANCE VI_1 BACKUP 150" in got
    assert "master-script" in got and "INSTANCE VI_1 MASTER 150" in got
    assert d1.stop() == 0
    # The stop notifications are spawned before exit; wait for them to land.
    wait_for("stop notifications", lambda: "INSTANCE VI_1 STOP 150" in lines(log))
    assert "stop-script" in lines(log)


def test_tracked_interface_weight_moves_mastership(lab: Lab, pair: Pair) -> None:
    track = {"interfaces": [{"name": "eth1", "weight": -60}]}
    d1 = pair.start("dir1", [instance(150, track=track)])
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    d2 = pair.start("dir2", [instance(100)])
    wait_for("dir2 BACKUP", lambda: d2.state() == "BACKUP")
    with lab.link_cut("dir1", "eth1"):
        wait_for("dir1 priority 90", lambda: (d1.instance() or {}).get("priority") == 90)
        wait_for("dir2 MASTER", lambda: d2.state() == "MASTER")
        wait_for("dir1 BACKUP", lambda: d1.state() == "BACKUP")
        assert holds(lab, "dir2", f"{VIP4}/24") and not holds(lab, "dir1", f"{VIP4}/24")
    wait_for("dir1 priority back", lambda: (d1.instance() or {}).get("priority") == 150)
    wait_for("dir1 MASTER again", lambda: d1.state() == "MASTER")


def test_track_script_failure_is_fault_and_recovery(lab: Lab, pair: Pair, tmp_path: Path) -> None:
    flag = tmp_path / "healthy"
    flag.touch()
    script = {
        "name": "flag",
        "command": ["test", "-f", str(flag)],
        "interval": "100ms",
        "timeout": "1s",
        "weight": 0,
        "fall": 2,
        "rise": 2,
    }
    d1 = pair.start("dir1", [instance(150, track={"scripts": [script]})])
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    flag.unlink()
    wait_for("dir1 FAULT", lambda: d1.state() == "FAULT")
    inst = d1.instance()
    assert inst is not None and inst["faults"] == ["script flag"]
    assert not holds(lab, "dir1", f"{VIP4}/24")
    assert "script flag failed" in d1.text()
    flag.touch()
    wait_for("dir1 MASTER after recovery", lambda: d1.state() == "MASTER")


def test_track_file_value_times_weight(lab: Lab, pair: Pair, tmp_path: Path) -> None:
    knob = tmp_path / "knob"
    knob.write_text("0\n")
    d1 = pair.start("dir1", [instance(150, track={"files": [{"path": str(knob), "weight": 10}]})])
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    d2 = pair.start("dir2", [instance(100)])
    wait_for("dir2 BACKUP", lambda: d2.state() == "BACKUP")
    knob.write_text("-10\n")  # 150 - 100 = 50 < 100
    wait_for("dir1 priority 50", lambda: (d1.instance() or {}).get("priority") == 50)
    wait_for("dir2 MASTER", lambda: d2.state() == "MASTER")


def test_sync_group_members_follow_each_other(lab: Lab, pair: Pair) -> None:
    def both(priority: int) -> list[dict[str, Any]]:
        gw = instance(
            priority,
            name="VI_GW",
            interface="eth1",
            vrid=52,
            addresses=[f"{BACKEND_GW4}/24"],
        )
        return [instance(priority), gw]

    groups = [{"name": "G1", "instances": ["VI_1", "VI_GW"]}]
    d1 = pair.start("dir1", both(150), sync_groups=groups)
    d2 = pair.start("dir2", both(100), sync_groups=groups)
    wait_for("dir1 both MASTER", lambda: d1.state("VI_1") == d1.state("VI_GW") == "MASTER")
    wait_for("dir2 both BACKUP", lambda: d2.state("VI_1") == d2.state("VI_GW") == "BACKUP")
    # dir1 loses its backend link: VI_GW is FAULT, and VI_1 must follow it out of MASTER even
    # though its own link is fine; dir2 takes both.
    with lab.link_cut("dir1", "eth1"):
        wait_for("dir1 VI_GW FAULT", lambda: d1.state("VI_GW") == "FAULT")
        wait_for("dir1 VI_1 BACKUP", lambda: d1.state("VI_1") == "BACKUP")
        wait_for("dir2 both MASTER", lambda: d2.state("VI_1") == d2.state("VI_GW") == "MASTER")
        assert not holds(lab, "dir1", f"{VIP4}/24")
        assert holds(lab, "dir2", f"{BACKEND_GW4}/24", dev="eth1")
        # VI_1 on dir1 has the higher priority but stays BACKUP while its group is in FAULT.
        status = d1.status()
        assert status is not None
        assert status["vrrp"]["sync_groups"][0]["states"] == ["BACKUP", "FAULT"]
    wait_for("dir1 both MASTER again", lambda: d1.state("VI_1") == d1.state("VI_GW") == "MASTER")
    wait_for("dir2 both BACKUP again", lambda: d2.state("VI_1") == d2.state("VI_GW") == "BACKUP")


def test_ipv6_vrrp_between_two_directors(lab: Lab, pair: Pair) -> None:
    v6 = {"addresses": [f"{VIP6}/64"]}
    d1 = pair.start("dir1", [instance(150, **v6)])
    d2 = pair.start("dir2", [instance(100, **v6)])
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    wait_for("dir2 BACKUP", lambda: d2.state() == "BACKUP")
    inst = d2.instance()
    assert inst is not None and inst["master"].startswith("fe80::")
    assert holds(lab, "dir1", f"{VIP6}/64") and not holds(lab, "dir2", f"{VIP6}/64")
    assert lab.ping("client", str(VIP6))
    with lab.link_cut("dir1", "eth0"):
        wait_for("dir2 MASTER", lambda: d2.state() == "MASTER")
        assert holds(lab, "dir2", f"{VIP6}/64")
    wait_for("dir1 MASTER again", lambda: d1.state() == "MASTER")
    assert d1.stop() == 0 and d2.stop() == 0
    assert not holds(lab, "dir1", f"{VIP6}/64") and not holds(lab, "dir2", f"{VIP6}/64")


def test_status_counts_drops_by_reason(lab: Lab, pair: Pair) -> None:
    # dir2 speaks VRRPv2 on the same VRID: dir1 must count, not obey.
    d1 = pair.start("dir1", [instance(150)])
    wait_for("dir1 MASTER", lambda: d1.state() == "MASTER")
    d2 = pair.start("dir2", [instance(200, version=2, advert_interval="1s")])
    wait_for("dir2 MASTER", lambda: d2.state() == "MASTER")

    def version_drops() -> int:
        inst = d1.instance() or {}
        return int(inst.get("counters", {}).get("drop_version", 0))

    wait_for("version drops counted", lambda: version_drops() >= 2)
    assert d1.state() == "MASTER"  # never obeyed the higher priority in the wrong version
