"""All or nothing: a failing step rolls back what was done and is named in the error."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from realserver.apply import StepFailed, apply_all
from realserver.plan import Link, Snapshot, plan_start, simulate
from realserver.spec import spec_from_flags
from realserver.steps import AddAddress, CreateLink, SetLinkUp, SetSysctl, Step


def fresh() -> Snapshot:
    keys = [
        f"net/ipv4/conf/{d}/{n}"
        for d in ("all", "default", "lo")
        for n in ("arp_ignore", "arp_announce", "rp_filter")
    ]
    return Snapshot(sysctls=dict.fromkeys(keys, 0), links={"lo": Link("", True)})


class FakeKernel:
    def __init__(self, fail_on: Step | None = None, fail_undo: Step | None = None) -> None:
        self.snapshot = fresh()
        self.log: list[Step] = []
        self.fail_on = fail_on
        self.fail_undo = fail_undo

    def __call__(self, step: Step) -> None:
        if step in (self.fail_on, self.fail_undo):
            raise OSError(17, "File exists")
        self.log.append(step)
        self.snapshot = simulate(self.snapshot, [step])


SPEC = spec_from_flags(["10.0.0.100"], "tun")


def test_all_steps_applied_and_recorded() -> None:
    kernel = FakeKernel()
    steps = plan_start(SPEC, kernel.snapshot)
    records: list[list[Step]] = []
    apply_all(steps, kernel, lambda done: records.append(list(done)))
    assert kernel.log == steps
    assert records[-1] == steps
    assert records[0] == steps[:1]  # write-ahead: recorded before it runs


def test_failure_rolls_back_and_names_the_step() -> None:
    kernel = FakeKernel()
    before = kernel.snapshot
    steps = plan_start(SPEC, before)
    failing = AddAddress("tunl0", "10.0.0.100/32", label="tunl0:rs")
    assert failing in steps
    kernel.fail_on = failing
    records: list[Sequence[Step]] = []
    with pytest.raises(StepFailed) as info:
        apply_all(steps, kernel, records.append)
    assert "add address 10.0.0.100/32 on tunl0 label tunl0:rs" in str(info.value)
    assert "File exists" in str(info.value)
    assert info.value.step == failing
    assert kernel.snapshot == before
    assert records[-1] == []


def test_incomplete_rollback_is_reported_and_stays_recorded() -> None:
    kernel = FakeKernel()
    steps = plan_start(SPEC, kernel.snapshot)
    assert steps[2:4] == [CreateLink("tunl0", "ipip"), SetLinkUp("tunl0")]
    kernel.fail_on = steps[-1]
    kernel.fail_undo = SetSysctl("net/ipv4/conf/all/arp_ignore", 0, 1)
    records: list[Sequence[Step]] = []
    with pytest.raises(StepFailed) as info:
        apply_all(steps, kernel, records.append)
    assert info.value.rollback_errors == [
        "could not undo sysctl net.ipv4.conf.all.arp_ignore = 1 (was 0): [Errno 17] File exists"
    ]
    assert "rollback incomplete" in str(info.value)
    assert records[-1] == [steps[0]]
    assert kernel.snapshot.sysctls["net/ipv4/conf/all/arp_ignore"] == 1
    assert "tunl0" not in kernel.snapshot.links
