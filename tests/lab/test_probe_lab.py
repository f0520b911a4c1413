"""lab.probe in the lab: responders on dir1/dir2, the prober in client, replies attributed right.

Every process is started with `lab.popen` (ended by pid here, and by the lab's teardown), every
probe run is bounded by a count and a duration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.bench.failover import LineReader
from lab.core import Lab
from lab.probe import ProbeRecord, analyse
from lab.topology import VIP4

PROBE = [sys.executable, "-m", "lab.probe"]
PORT = "9999"


@pytest.fixture
def responders(lab: Lab) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs = {}
    try:
        for node in ("dir1", "dir2"):
            proc = lab.popen(
                node,
                [*PROBE, "respond", "--name", node, "--port", PORT, "--max-seconds", "120"],
                stdout=subprocess.PIPE,
            )
            procs[node] = proc
            assert proc.stdout is not None
            LineReader(proc.stdout).wait_for(f"ready {node} {PORT}", 15)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def probe(lab: Lab, target: str, count: int = 50) -> ProbeRecord:
    argv = [*PROBE, "probe", "--to", target, "--interval", "0.002", "--count", str(count)]
    argv += ["--duration", "5", "--linger", "0.2", "--json", "-", "--quiet"]
    done = lab.run("client", argv, capture_output=True, text=True, timeout=30, check=True)
    last = done.stdout.strip().splitlines()[-1]
    return ProbeRecord.from_json(json.loads(last))


def test_replies_name_the_node_that_holds_the_address(
    lab: Lab, responders: dict[str, subprocess.Popen[bytes]]
) -> None:
    for node, address in (("dir1", "192.0.2.2:9999"), ("dir2", "192.0.2.3:9999")):
        record = probe(lab, address)
        assert len(record.probes) == 50
        assert {p.responder for p in record.probes} == {node}, record.probes[:3]
        assert all(p.received is not None and p.received > p.sent for p in record.probes)
    # IPv6, answered on the v6 socket of the same responder.
    record = probe(lab, f"[{lab.addr('dir2', 'lan', 6)}]:9999", count=10)
    assert {p.responder for p in record.probes} == {"dir2"}

    # A VIP: the reply must come from the VIP itself (the prober's socket is connected to it,
    # so a reply from dir1's primary address would never reach it).
    lab.run("dir1", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"], check=True)
    record = probe(lab, f"{VIP4}:9999")
    assert analyse(record.probes, new="dir1").per_responder == {"dir1": 50}


def test_a_moving_vip_is_seen_switching_responders(
    lab: Lab, responders: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    lab.run("dir1", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"], check=True)
    out = tmp_path / "probe.json"
    argv = [*PROBE, "probe", "--to", f"{VIP4}:9999", "--interval", "0.002", "--duration", "10"]
    argv += ["--json", str(out), "--watch-vrrp", "eth0", "--quiet"]
    prober = lab.popen("client", argv, stdout=subprocess.PIPE)
    try:
        assert prober.stdout is not None
        lines = LineReader(prober.stdout)
        lines.wait_for("started ", 10)
        lines.wait_for("first-reply dir1 ", 10)
        # Move the VIP; the client's stale ARP entry is flushed, so it asks again.
        lab.run("dir1", ["ip", "addr", "del", f"{VIP4}/24", "dev", "eth0"], check=True)
        lab.run("dir2", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"], check=True)
        lab.run("client", ["ip", "neigh", "flush", "to", str(VIP4)], check=True)
        lines.wait_for("first-reply dir2 ", 10)
    finally:
        os.kill(prober.pid, signal.SIGTERM)
        assert prober.wait(timeout=15) == 0
        if prober.stdout is not None:
            prober.stdout.close()
    record = ProbeRecord.load(out)
    a = analyse(record.probes, new="dir2", old="dir1")
    assert a.per_responder.keys() == {"dir1", "dir2"}
    assert a.start_kind == "last-old-reply"
    assert a.blackout is not None and 0 < a.blackout < 5
    # Stopped early by SIGTERM, well before its 10 s bound.
    assert record.ended - record.started < 10
    assert record.adverts == ()  # nothing speaks VRRP in this test
