"""tests/vm, run inside ONE VM boot (Debian's stock kernel: IPVS, dummy, tunnels).

Each inner test shows up here as its own test, passing or failing with the inner failure text.
A VM that does not boot, an inner run that reports nothing, or an empty inner collection fails
every test here: none of them is ever skipped.
"""

from __future__ import annotations

import pytest

from lab.vmsuite import SUITE_RWDIR, SUITE_TIMEOUT, SuiteRun, collect_inner, run_suite

INNER_IDS, COLLECT_OUTPUT = collect_inner()
# Stands in for the inner tests when none were collected, so that this file fails rather than
# pytest skipping an empty parametrization.
NOTHING_COLLECTED = "<no inner test collected>"

# The first test's setup boots the VM and runs the whole inner suite.
pytestmark = [pytest.mark.vm, pytest.mark.timeout(SUITE_TIMEOUT + 300)]


@pytest.fixture(scope="session")
def suite() -> SuiteRun:
    return run_suite(INNER_IDS)


@pytest.mark.parametrize("nodeid", INNER_IDS or [NOTHING_COLLECTED])
def test_in_vm(nodeid: str, suite: SuiteRun) -> None:
    if nodeid == NOTHING_COLLECTED:
        pytest.fail(f"no test collected from tests/vm:\n{COLLECT_OUTPUT}", pytrace=False)
    if suite.error is not None:
        pytest.fail(suite.error, pytrace=False)
    outcome = suite.outcomes.get(nodeid)
    if outcome is None:
        pytest.fail(
            f"{nodeid} is missing from the inner report (inner exit {suite.returncode}; "
            f"see {SUITE_RWDIR}/pytest.log)\n{suite.output_tail}",
            pytrace=False,
        )
    if not outcome.passed:
        pytest.fail(f"inside the VM:\n{outcome.text}", pytrace=False)


def test_inner_run_complete(suite: SuiteRun) -> None:
    """What no single inner test accounts for: collection errors, a crashed inner pytest."""
    if suite.error is not None:
        pytest.fail(suite.error, pytrace=False)
    assert not suite.unmatched, (
        f"inner results for tests not collected on the host: {suite.unmatched}"
    )
    failed = [nodeid for nodeid, outcome in suite.outcomes.items() if not outcome.passed]
    # pytest exits 1 exactly when some test failed; anything else is the run itself failing.
    expected = 1 if failed else 0
    assert suite.returncode == expected, (
        f"inner pytest exited {suite.returncode} (expected {expected})\n{suite.output_tail}"
    )
