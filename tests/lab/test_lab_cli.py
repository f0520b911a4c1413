"""`python -m lab up|status|exec|down` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lab import netns
from lab.core import Lab
from lab.pytest_plugin import unique_prefix
from lab.topology import default_topology

pytestmark = pytest.mark.lab


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique_prefix()
    try:
        yield p
    finally:
        Lab(default_topology(p)).down()  # whatever the test did or failed to do


def ours(prefix: str) -> set[str]:
    """This lab's namespaces as the kernel lists them (other labs may come and go meanwhile)."""
    return {name for name in netns.listnetns() if name.startswith(f"{prefix}-")}


def test_up_status_exec_down(prefix: str) -> None:
    assert ours(prefix) == set()
    up = cli("up", "--prefix", prefix)
    assert up.returncode == 0, up.stderr
    assert ours(prefix) == set(default_topology(prefix).namespaces())

    st = cli("status", "--prefix", prefix)
    assert st.returncode == 0, st.stdout + st.stderr
    assert st.stdout.startswith(f"lab {prefix}: up")
    assert "192.0.2.10/24" in st.stdout and "2001:db8:0:3::21/64" in st.stdout

    addr = cli("exec", "--prefix", prefix, "client", "--", "ip", "-br", "addr")
    assert addr.returncode == 0, addr.stderr
    assert "192.0.2.10/24" in addr.stdout and "2001:db8:0:1::10/64" in addr.stdout
    assert "198.51.100." not in addr.stdout  # the client's own namespace, not dir1's

    assert cli("exec", "--prefix", prefix, "rstun", "--", "sh", "-c", "exit 7").returncode == 7
    echoed = cli("exec", "--prefix", prefix, "rs1", "--", "cat", stdin="through stdin\n")
    assert echoed.stdout == "through stdin\n"
    bridge = cli("exec", "--prefix", prefix, "sw-lan", "--", "ip", "-br", "link", "show", "br0")
    assert bridge.returncode == 0 and bridge.stdout.startswith("br0")

    assert prefix in cli("list").stdout.split()

    down = cli("down", "--prefix", prefix)
    assert down.returncode == 0, down.stderr
    assert ours(prefix) == set()
    gone = cli("status", "--prefix", prefix)
    assert gone.returncode == 1
    assert "absent" in gone.stdout
    assert cli("down", "--prefix", prefix).returncode == 0  # twice is fine


def test_status_reports_a_partial_lab(prefix: str) -> None:
    assert cli("up", "--prefix", prefix).returncode == 0
    netns.remove(f"{prefix}-rstun")
    st = cli("status", "--prefix", prefix)
    assert st.returncode == 1
    assert "PARTIAL" in st.stdout and f"{prefix}-rstun" in st.stdout
    # The switch port whose peer vanished shows up as a problem too.
    assert "rstun-remote" in st.stdout


def test_up_twice_fails_clearly(prefix: str) -> None:
    assert cli("up", "--prefix", prefix).returncode == 0
    again = cli("up", "--prefix", prefix)
    assert again.returncode == 1
    assert "already exists" in again.stderr and f"down --prefix {prefix}" in again.stderr
    assert cli("status", "--prefix", prefix).returncode == 0


def test_exec_errors(prefix: str) -> None:
    absent = cli("exec", "--prefix", prefix, "client", "--", "true")
    assert absent.returncode == 1 and "does not exist" in absent.stderr
    unknown = cli("exec", "--prefix", prefix, "nosuchnode", "--", "true")
    assert unknown.returncode == 1 and "no node" in unknown.stderr


def test_state_file_records_what_up_made(prefix: str) -> None:
    assert cli("up", "--prefix", prefix).returncode == 0
    state = json.loads(Lab(default_topology(prefix)).state_file.read_text())
    assert state["prefix"] == prefix
    assert state["namespaces"] == list(default_topology(prefix).namespaces())
    assert {"netns": f"{prefix}-sw-lan", "name": "br0"} in state["bridges"]
    assert {
        "netns": f"{prefix}-sw-backend",
        "name": "rsnat-backend",
        "peer_netns": f"{prefix}-rsnat",
        "peer": "eth0",
    } in state["veths"]
