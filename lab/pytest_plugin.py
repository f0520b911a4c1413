"""pytest fixtures for the namespace lab; enable with `pytest_plugins = ["lab.pytest_plugin"]`.

- `lab`: a fresh standard lab for one test, always torn down.
- `lab_module`: one standard lab shared by a module's tests (for tests that only read).
- `lab_factory`: `lab_factory(build=default_topology) -> Lab` for custom topologies.

Each lab gets a prefix unique to this run (`dt` + 4 random hex digits), so it never collides
with a lab someone started by hand with `python -m lab up`. Missing root or kernel support
fails the test with what to do: a lab test that silently skips proves nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from lab import netns
from lab.core import Lab, LabError, require_support, state_path
from lab.topology import Topology, default_topology

LAB_FIXTURES = frozenset({"lab", "lab_module", "lab_factory"})
TopologyBuilder = Callable[[str], Topology]
LabFactory = Callable[..., Lab]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: needs root and network namespaces on the host kernel")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Any test using a lab fixture is a lab test, so `-m "not lab"` deselects it.
    for item in items:
        if LAB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def unique_prefix() -> str:
    """A prefix no namespace or state file uses yet."""
    for _ in range(20):
        prefix = "dt" + secrets.token_hex(2)
        taken = any(ns.startswith(prefix + "-") for ns in netns.listnetns())
        if not taken and not state_path(prefix).parent.exists():
            return prefix
    raise LabError("no free lab prefix after 20 tries: leftover labs? see `python -m lab list`")


def _start(build: TopologyBuilder) -> Lab:
    try:
        require_support()
        lab = Lab(build(unique_prefix()))
        lab.up()
        return lab
    except LabError as e:
        problem = str(e)
    pytest.fail(
        f"cannot build the namespace lab: {problem}\n"
        "The lab tests need root, iproute2 and a kernel with netns/veth/bridge: "
        "run ./scripts/install-deps, then `sudo make labtests`.",
        pytrace=False,
    )


@pytest.fixture
def lab_factory() -> Iterator[LabFactory]:
    made: list[Lab] = []

    def make(build: TopologyBuilder = default_topology) -> Lab:
        lab = _start(build)
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(made):
            try:
                lab.down()
            except Exception as e:
                errors.append(f"{lab.prefix}: {e}")
        if errors:
            pytest.fail("lab teardown failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    the_lab = _start(default_topology)
    try:
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="module")
def lab_module() -> Iterator[Lab]:
    the_lab = _start(default_topology)
    try:
        yield the_lab
    finally:
        the_lab.down()
