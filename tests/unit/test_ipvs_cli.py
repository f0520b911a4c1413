"""`director plan` / `apply` / `flush` argument and config handling. Nothing here writes to a
kernel: plan only reads (on a host without IPVS it plans against an empty table), and the
apply cases stop before touching anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIG = """
node: {{state_dir: {state}}}
services:
  - name: web
    vips: [192.0.2.100, 192.0.2.110-111]
    port: 80
    scheduler: wrr
    forwarding: dr
    real_servers: [{{address: 192.0.2.21, weight: 2}}, {{address: 192.0.2.22}}]
"""


def director(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "director", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp: Path, text: str) -> Path:
    path = tmp / "director.yaml"
    path.write_text(text.format(state=tmp / "state"))
    return path


def test_plan_lists_every_kernel_service_of_a_group_and_changes_nothing(tmp_path: Path) -> None:
    cfg = write(tmp_path, CONFIG)
    done = director("plan", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    services = [line for line in lines if line.startswith("+ service")]
    assert services == [f"+ service TCP 192.0.2.{n}:80 wrr" for n in (100, 110, 111)]
    assert "+ real server 192.0.2.21:80 in TCP 192.0.2.111:80: dr weight 2" in lines
    assert not (tmp_path / "state").exists(), "plan records nothing"


def test_apply_requires_once(tmp_path: Path) -> None:
    done = director("apply", "-c", str(write(tmp_path, CONFIG)))
    assert done.returncode == 2
    assert "--once is required" in done.stderr


def test_a_bad_config_is_reported_with_its_location_and_nothing_runs(tmp_path: Path) -> None:
    cfg = write(tmp_path, CONFIG.replace("scheduler: wrr", "scheduler: fastest"))
    for command in (["plan"], ["apply", "--once"], ["flush"]):
        done = director(*command, "-c", str(cfg))
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert ":7:16: services[0].scheduler:" in done.stderr, done.stderr
        assert done.stdout == ""
