"""up/down leave the host as it was; down kills what runs in the lab; faults on links."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import netns
from lab.core import Lab, LabError
from lab.host import ip_netns_list, root_link_names
from lab.pytest_plugin import LabFactory, unique_prefix
from lab.topology import Node, Topology, default_topology

pytestmark = pytest.mark.lab


def _net_inodes(lab: Lab) -> set[str]:
    """`net:[inode]` of each lab namespace, as /proc/PID/ns/net links read."""
    return {f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]" for ns in lab.namespaces()}


def _pids_in(links: set[str]) -> set[int]:
    out = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/net") in links:
                    out.add(int(entry.name))
            except OSError:
                continue
    return out


@pytest.fixture
def fresh_lab() -> Iterator[Lab]:
    """A lab the test brings up itself; torn down afterwards whatever happened."""
    lab = Lab(default_topology(unique_prefix()))
    try:
        yield lab
    finally:
        lab.down()


def _ours(lab: Lab) -> set[str]:
    """This lab's namespaces as the kernel lists them (other labs may come and go meanwhile)."""
    return {name for name in ip_netns_list() if name.startswith(f"{lab.prefix}-")}


def test_up_then_down_leaves_the_host_as_it_was(fresh_lab: Lab) -> None:
    links_before = root_link_names()
    assert _ours(fresh_lab) == set()
    fresh_lab.up()
    assert set(fresh_lab.namespaces()) == _ours(fresh_lab)
    assert root_link_names() == links_before
    inodes = _net_inodes(fresh_lab)
    tracked = fresh_lab.popen("dir1", ["sleep", "300"])
    # Started behind the lab's back, as `python -m lab exec rsnat -- sleep 300 &` would be.
    untracked = subprocess.Popen(
        ["ip", "netns", "exec", fresh_lab.ns_name("rsnat"), "sleep", "300"]
    )
    try:
        # Wait (bounded) until both have entered their namespace: kernel state, so poll.
        deadline = time.monotonic() + 5
        while {tracked.pid, untracked.pid} - _pids_in(inodes):
            assert time.monotonic() < deadline, "sleepers never entered the lab"
            time.sleep(0.01)

        fresh_lab.down()

        assert tracked.returncode is not None  # reaped by down()
        assert untracked.wait(timeout=5) == -15  # SIGTERM, by pid
        assert _pids_in(inodes) == set()
        assert _ours(fresh_lab) == set()
        assert root_link_names() == links_before
        assert not fresh_lab.state_file.exists()
        assert not fresh_lab.state_file.parent.exists()
        fresh_lab.down()  # twice is fine
        assert _ours(fresh_lab) == set()
    finally:
        if untracked.poll() is None:
            untracked.kill()
            untracked.wait(timeout=5)


def test_processes_ignoring_sigterm_are_killed(fresh_lab: Lab) -> None:
    fresh_lab.up()
    proc = fresh_lab.popen(
        "rs2",
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    fresh_lab.down(grace=0.3)
    assert proc.returncode == -9  # SIGTERM ignored, so SIGKILL after the grace


def test_up_refuses_an_existing_lab_and_leaves_it_alone(fresh_lab: Lab) -> None:
    fresh_lab.up()
    with pytest.raises(LabError, match="already exists"):
        Lab(fresh_lab.topology).up()
    assert fresh_lab.is_up()


def test_up_failing_half_way_removes_what_it_made() -> None:
    good = default_topology(unique_prefix())
    # The kernel has no such sysctl: up fails after the switches and some nodes exist.
    broken = Node("zz", (), sysctls=(("net.ipv4.no_such_sysctl", "1"),))
    topo = Topology(good.prefix, good.segments, (*good.nodes, broken))
    lab = Lab(topo)
    try:
        with pytest.raises(LabError, match=r"creating node namespace .*-zz"):
            lab.up()
        assert _ours(lab) == set()
        assert not lab.state_file.exists()
    finally:
        lab.down()


def test_down_without_state_file_uses_the_topology(fresh_lab: Lab) -> None:
    fresh_lab.up()
    fresh_lab.state_file.unlink()
    Lab(default_topology(fresh_lab.prefix)).down()
    assert not set(fresh_lab.namespaces()) & ip_netns_list()


def test_down_removes_recorded_namespaces_of_a_custom_topology() -> None:
    """A lab built from a custom topology is removed by a plain `down --prefix P`."""
    good = default_topology(unique_prefix())
    extra = Node("extra", ())
    lab = Lab(Topology(good.prefix, good.segments, (*good.nodes, extra)))
    try:
        lab.up()
        assert netns.exists(f"{good.prefix}-extra")
        Lab(good).down()  # knows nothing of `extra`, but the state file does
        assert not set(lab.namespaces()) & ip_netns_list()
    finally:
        lab.down()


def test_set_link_cuts_and_restores_both_sides(lab: Lab) -> None:
    dir1 = lab.addr("dir1", "lan")
    dir1_6 = lab.addr("dir1", "lan", 6)
    assert lab.ping("client", dir1)
    for side in ("switch", "node"):
        with lab.link_cut("dir1", "eth0", side=side):
            assert not lab.ping("client", dir1, wait=0.3)
            state = lab.run("dir1", ["cat", "/sys/class/net/eth0/operstate"], capture_output=True)
            assert state.stdout.strip() in (b"down", b"lowerlayerdown")
            # The other director and the backend are unaffected.
            assert lab.ping("client", lab.addr("dir2", "lan"))
            assert lab.ping("dir1", lab.addr("rsnat", "backend"))
        assert lab.ping("client", dir1), side
        assert lab.ping("client", dir1_6), side
        # Routes survive (switch side) or are restored (node side).
        assert lab.ping("dir1", lab.addr("rstun", "remote")), side
        assert lab.ping("dir1", lab.addr("rstun", "remote", 6)), side
    assert lab.is_up()


def test_fixture_labs_have_unique_prefixes(lab: Lab, lab_factory: LabFactory) -> None:
    other = lab_factory()
    assert other.prefix != lab.prefix
    assert lab.prefix.startswith("dt") and other.prefix.startswith("dt")
    assert lab.is_up() and other.is_up()
    assert Path(f"/run/{other.prefix}-lab/state.json").exists()
