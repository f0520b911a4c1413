"""Run tests/vm inside one VM boot and report each inner test back to the outer pytest.

The outer side (tests/test_vm_suite.py, on the host) collects the inner node ids without running
them, boots the VM once, runs the inner pytest there with a JUnit XML report in the writable
results directory, and looks each inner test up in that report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from lab.vm import CHECKOUT, IN_VM_ENV, VmError, VmSetupError, format_tail, run_in_vm

INNER_DIR = "tests/vm"
SUITE_RWDIR = CHECKOUT / "results" / "vm" / "suite"
# Boot is about 20-30 s under TCG; the rest is the inner tests (real traffic through IPVS,
# failovers), several times slower than native: about 10 min on an idle 2-core machine.
SUITE_TIMEOUT = 1800.0
BOOT_TIMEOUT = 180.0


@dataclass(frozen=True)
class Outcome:
    passed: bool
    text: str = ""


@dataclass
class SuiteRun:
    """The inner run as the outer tests see it; error is set when there is no usable report."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    # Reported cases that match no collected id (an inner collection error, a test that exists
    # only inside the VM): they must not vanish.
    unmatched: dict[str, Outcome] = field(default_factory=dict)
    error: str | None = None
    returncode: int | None = None
    output_tail: str = ""
    boot_seconds: float | None = None
    wall_seconds: float | None = None


def collect_inner(checkout: Path = CHECKOUT) -> tuple[list[str], str]:
    """The inner node ids, collected on the host (nothing runs), and pytest's output."""
    env = {**os.environ, IN_VM_ENV: "1"}
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*argv, INNER_DIR],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ids = [line for line in proc.stdout.splitlines() if line.startswith(f"{INNER_DIR}/")]
    if proc.returncode != 0:
        # A collection error must not pass as "fewer tests".
        return [], f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return ids, proc.stdout + proc.stderr


def junit_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) pytest's JUnit XML gives a node id (as _pytest.junitxml does)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def read_junit(path: Path) -> dict[tuple[str, str], Outcome]:
    """Every testcase of a JUnit XML report; failures, errors and skips are not passes."""
    outcomes: dict[tuple[str, str], Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        problems = [
            f"[{child.tag}] {child.get('message', '')}\n{child.text or ''}".rstrip()
            for child in case
            if child.tag in ("failure", "error", "skipped")
        ]
        previous = outcomes.get(key)
        # A test that fails in call and errors in teardown appears twice: keep every problem.
        texts = [previous.text] if previous and previous.text else []
        outcomes[key] = Outcome(
            passed=not problems and (previous is None or previous.passed),
            text="\n".join(texts + problems),
        )
    return outcomes


def boot_console(rwdir: Path) -> str:
    """The kernel console of one more boot running `true`, to explain a VM that did not boot."""
    try:
        result = run_in_vm(["true"], rwdir=rwdir, timeout=BOOT_TIMEOUT, console=True)
    except VmError as exc:
        return f"\n\nboot console of a second attempt ({exc.message}):\n{exc.stderr[-8000:]}"
    return f"\n\na second boot worked (exit {result.returncode}): the first failure was transient"


def run_suite(
    nodeids: list[str], *, rwdir: Path = SUITE_RWDIR, timeout: float = SUITE_TIMEOUT
) -> SuiteRun:
    """Boot the VM once and run the inner pytest there; never raises for VM failures."""
    shutil.rmtree(rwdir, ignore_errors=True)
    rwdir.mkdir(parents=True)
    junit = rwdir / "junit.xml"
    argv = [sys.executable, "-m", "pytest", INNER_DIR, f"--junitxml={junit}"]
    # The checkout is read-only inside the VM: no cache to write. Hypothesis's plugin costs
    # about 14 s of imports under TCG; @given works without it.
    argv += ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-v"]
    try:
        result = run_in_vm(argv, rwdir=rwdir, timeout=timeout, cwd=CHECKOUT)
    except VmSetupError as exc:
        return SuiteRun(error=f"the VM lab is not set up: {exc}")
    except VmError as exc:
        # A timeout means the guest ran (and hung): a second boot would not explain it.
        extra = "" if exc.timed_out else boot_console(rwdir)
        return SuiteRun(error=f"the VM did not run the inner suite: {exc}{extra}")
    (rwdir / "pytest.log").write_text(result.stdout + result.stderr)
    (rwdir / "timing.json").write_text(
        json.dumps({"boot_seconds": result.boot_seconds, "wall_seconds": result.wall_seconds})
    )
    run = SuiteRun(
        returncode=result.returncode,
        output_tail=format_tail(result.stdout, result.stderr),
        boot_seconds=result.boot_seconds,
        wall_seconds=result.wall_seconds,
    )
    if not junit.exists():
        run.error = f"inner pytest exited {result.returncode} without a report\n{run.output_tail}"
        return run
    known = {junit_key(nodeid): nodeid for nodeid in nodeids}
    for key, outcome in read_junit(junit).items():
        if key in known:
            run.outcomes[known[key]] = outcome
        else:
            run.unmatched[" :: ".join(key)] = outcome
    return run
