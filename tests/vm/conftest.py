"""tests/vm runs only inside the VM lab, started by tests/test_vm_suite.py (one boot per run).

On the host (DIRECTOR_IN_VM unset) nothing here is collected: the host kernel has no IPVS,
dummy or tunnel interfaces, and these tests must never program the host's kernel.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

IN_VM = os.environ.get("DIRECTOR_IN_VM") == "1"

if not IN_VM:
    # Relative to this directory: every file and directory below it.
    collect_ignore_glob = ["*"]


def pytest_report_header() -> str:
    if IN_VM:
        return "tests/vm: inside the VM lab"
    return "tests/vm: ignored outside the VM lab; run tests/test_vm_suite.py"


@pytest.fixture(scope="session", autouse=True)
def _inside_vm() -> None:
    """Refuse to touch a kernel that is not the VM's, even if DIRECTOR_IN_VM is set by hand."""
    cmdline = Path("/proc/cmdline").read_text()
    # virtme-ng boots the guest with its own parameters (virtme.exec=..., virtme_root_user=1).
    assert "virtme" in cmdline, f"not inside a virtme-ng VM (kernel cmdline: {cmdline!r})"


def _modprobe(*modules: str) -> None:
    result = subprocess.run(["modprobe", "-a", *modules], capture_output=True, text=True)
    assert result.returncode == 0, f"modprobe {' '.join(modules)} failed: {result.stderr}"


@pytest.fixture(scope="session")
def modprobe() -> Callable[..., None]:
    """Load kernel modules, failing with modprobe's message."""
    return _modprobe


@pytest.fixture
def netns_name() -> Iterator[str]:
    """A fresh network namespace, removed afterwards: IPVS tables and links are per netns."""
    name = f"dvm-{os.getpid()}-{os.urandom(3).hex()}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)
