"""`make demo` runs end to end and keeps its promise: a planned stop loses no probe."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lab.host import ip_netns_list

pytestmark = pytest.mark.lab


def test_demo_runs_and_the_planned_stop_loses_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lab.demo"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "lab torn down."):
        assert step in out, out
    assert "dir2 took over" in out and "preempted" in out
    planned = re.search(r"^\s+planned-stop\s+\d+ ms\s+(\d+)\s", out, re.M)
    assert planned is not None, out
    assert planned.group(1) == "0", out  # make before break
    cut = re.search(r"^\s+link-cut\s+\d+ ms\s+(\d+)\s", out, re.M)
    assert cut is not None and int(cut.group(1)) > 0, out  # a cut is a real outage
    assert not {n for n in ip_netns_list() if n.startswith("demo-")}
