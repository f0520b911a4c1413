"""`director start` with IPVS in the VM lab: drift repair, ownership, clean stop, and failover
between two directors with the connection sync daemon and a NAT gateway VIP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.core import Lab
from lab.daemons import Director, wait_for
from lab.lvs import (
    BACKEND_GW,
    PY,
    VIP,
    backends,
    fetch,
    ipvsadm,
    prepare_dr,
    run,
    web_service,
    write_config,
)

URL = f"http://{VIP}/"
ADVERT = "200ms"


def front(priority: int) -> dict[str, Any]:
    return {
        "name": "VI_1",
        "interface": "eth0",
        "vrid": 51,
        "priority": priority,
        "advert_interval": ADVERT,
        "addresses": [f"{VIP}/24"],
        "garp": {"delay": "0s", "repeat": 2},
    }


def gateway(priority: int) -> dict[str, Any]:
    return {
        "name": "VI_GW",
        "interface": "eth1",
        "vrid": 52,
        "priority": priority,
        "advert_interval": ADVERT,
        "addresses": [f"{BACKEND_GW}/24"],
        "garp": {"delay": "0s", "repeat": 2},
    }


DR_REALS = [{"address": "192.0.2.21"}, {"address": "192.0.2.22"}]
NAT_REALS = [{"address": "198.51.100.21", "port": 8081}]


@pytest.fixture
def started(lab: Lab, tmp_path: Path) -> Iterator[list[Director]]:
    """Directors started by the test; killed (not just stopped) if the test fails."""
    running: list[Director] = []
    try:
        yield running
    finally:
        for d in running:
            d.kill()


def start(lab: Lab, tmp: Path, node: str, running: list[Director], **body: Any) -> Director:
    services = body.pop("services", [])
    cfg = write_config(tmp / f"{node}.yaml", node, services, **body)
    d = Director(lab, node, cfg, tmp / f"{node}.log")
    running.append(d)
    wait_for(f"{node} control socket", lambda: d.status() is not None, timeout=60)
    return d


def sysctl_value(lab: Lab, node: str, name: str) -> str:
    return run(lab, node, ["sysctl", "-n", name]).strip()


def test_reconciler_repairs_drift_keeps_foreign_services_and_cleans_up_on_stop(
    lab: Lab, tmp_path: Path, started: list[Director]
) -> None:
    run(lab, "dir1", ["modprobe", "ip_vs"])
    run(lab, "dir1", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    run(lab, "dir1", ["ipvsadm", "-A", "-t", "192.0.2.200:443", "-s", "rr"])
    d = start(
        lab,
        tmp_path,
        "dir1",
        started,
        services=[web_service("nat", NAT_REALS)],
        ipvs={"resync_interval": "1s"},
    )
    service_line = f"TCP  {VIP}:80 rr"
    wait_for("the service", lambda: service_line in ipvsadm(lab, "dir1"))
    assert sysctl_value(lab, "dir1", "net.ipv4.ip_forward") == "1", "NAT needs forwarding"
    for name in ("expire_nodest_conn", "expire_quiescent_template", "conntrack"):
        assert sysctl_value(lab, "dir1", f"net.ipv4.vs.{name}") == "1", name

    run(lab, "dir1", ["ipvsadm", "-C"])  # an operator wipes the table
    wait_for("drift repaired", lambda: service_line in ipvsadm(lab, "dir1"), timeout=20)
    status = d.status()
    assert status is not None and status["ipvs"]["drift_repairs"] >= 1, status
    assert "192.0.2.200:443" not in ipvsadm(lab, "dir1"), "-C removed the foreign service too"

    run(lab, "dir1", ["ipvsadm", "-A", "-t", "192.0.2.200:443", "-s", "rr"])
    d.proc.send_signal(15)
    assert d.proc.wait(timeout=60) == 0, d.text()
    table = ipvsadm(lab, "dir1")
    assert f"{VIP}:80" not in table, "stop removes the services the director added"
    assert "192.0.2.200:443" in table, "and only those"
    assert sysctl_value(lab, "dir1", "net.ipv4.ip_forward") == "0", "sysctl restored on stop"


def hold(lab: Lab) -> subprocess.Popen[str]:
    return lab.popen(
        "client",
        [PY, "-m", "lab.web", "hold", URL, "--timeout", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def ask(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("get\n")
    proc.stdin.flush()
    answer: dict[str, Any] = json.loads(proc.stdout.readline())
    return answer


def pair(lab: Lab, tmp: Path, running: list[Director], **body: Any) -> tuple[Director, Director]:
    instances = body.pop("instances")
    extra = body.pop("vrrp", {})
    directors = []
    for node, priority in (("dir1", 150), ("dir2", 100)):
        vrrp = {"instances": [inst(priority) for inst in instances], **extra}
        directors.append(start(lab, tmp, node, running, vrrp=vrrp, **body))
    d1, d2 = directors
    wait_for("dir1 master", lambda: d1.state("VI_1") == "MASTER", timeout=30)
    wait_for("dir2 backup", lambda: d2.state("VI_1") == "BACKUP", timeout=30)
    return d1, d2


def test_established_connections_survive_failover_with_the_sync_daemon(
    lab: Lab, tmp_path: Path, started: list[Director]
) -> None:
    for node in ("rs1", "rs2"):
        prepare_dr(lab, node)
    sync = {"instance": "VI_1", "interface": "eth0", "sync_id": 9}
    with backends(lab, [("rs1", "rs1", ["0.0.0.0:80"]), ("rs2", "rs2", ["0.0.0.0:80"])]):
        d1, d2 = pair(
            lab,
            tmp_path,
            started,
            instances=[front],
            services=[web_service("dr", DR_REALS)],
            ipvs={"sync_daemon": sync},
        )
        assert "master" in run(lab, "dir1", ["ipvsadm", "-L", "--daemon"])
        assert "backup" in run(lab, "dir2", ["ipvsadm", "-L", "--daemon"])
        # IPVS is programmed on the backup too, so a failover changes no rule.
        wait_for("dir2's table", lambda: "192.0.2.22:80" in ipvsadm(lab, "dir2"), timeout=20)
        assert f"TCP  {VIP}:80 rr" in ipvsadm(lab, "dir2") and d2.state("VI_1") == "BACKUP"
        client = hold(lab)
        try:
            first = ask(client)
            assert "error" not in first, first
            # The backup learns the connection from the master's sync messages.
            wait_for(
                "connection synced to dir2",
                lambda: "ESTABLISHED" in run(lab, "dir2", ["ipvsadm", "-Lnc"]),
                timeout=20,
            )
            with lab.link_cut("dir1", "eth0"):
                wait_for("dir2 master", lambda: d2.state("VI_1") == "MASTER", timeout=30)
                after = ask(client)
                assert "error" not in after, f"the connection died in the failover: {after}"
                assert after["name"] == first["name"], "it still reaches the same real server"
                assert after["port"] == first["port"], "on the same TCP connection"
                assert after["count"] == first["count"] + 1
                assert "master" in run(lab, "dir2", ["ipvsadm", "-L", "--daemon"])
        finally:
            client.kill()
            client.wait(timeout=10)
        for d in (d1, d2):
            d.proc.send_signal(15)
            assert d.proc.wait(timeout=60) == 0, d.text()
        assert "master" not in run(lab, "dir2", ["ipvsadm", "-L", "--daemon"])


def test_nat_gateway_vip_follows_the_master(
    lab: Lab, tmp_path: Path, started: list[Director]
) -> None:
    with backends(lab, [("rsnat", "nat-a", ["0.0.0.0:8081"])]):
        _, d2 = pair(
            lab,
            tmp_path,
            started,
            instances=[front, gateway],
            vrrp={"sync_groups": [{"name": "LB", "instances": ["VI_1", "VI_GW"]}]},
            services=[web_service("nat", NAT_REALS)],
        )
        got = fetch(lab, URL, 4)
        assert got["names"] == {"nat-a": 4}, got
        # Cut on dir1's side: its front instance goes to FAULT and the sync group takes the
        # gateway instance along, as a dead NIC would.
        with lab.link_cut("dir1", "eth0", side="node"):
            wait_for("dir2 master", lambda: d2.state("VI_1") == "MASTER", timeout=30)
            # The sync group moved the backends' gateway along with the front VIP.
            wait_for("gateway on dir2", lambda: d2.state("VI_GW") == "MASTER", timeout=30)
            got = fetch(lab, URL, 4)
            assert got["names"] == {"nat-a": 4}, got
            assert got["clients"] == [lab.addr("client", "lan")]
