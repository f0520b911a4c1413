"""keepalived's priority arithmetic for tracked interfaces, scripts and files."""

from __future__ import annotations

from director.vrrp.tracking import Effect, RiseFall, Tracked, effective


def test_weights_follow_keepalived() -> None:
    assert effective(100, []) == Effect(100, ())
    assert effective(100, [Tracked("s", -20, healthy=False)]).priority == 80
    assert effective(100, [Tracked("s", -20, healthy=True)]).priority == 100
    assert effective(100, [Tracked("s", 30, healthy=True)]).priority == 130
    assert effective(100, [Tracked("s", 30, healthy=False)]).priority == 100
    assert effective(100, [Tracked("eth1", 0, healthy=False)]) == Effect(100, ("eth1",))
    assert effective(100, [Tracked("eth1", 0, healthy=True)]).fault is False


def test_files_multiply_and_can_fault() -> None:
    assert effective(100, [Tracked("f", 5, value=-3)]).priority == 85
    assert effective(100, [Tracked("f", 1, value=-254)]).faults == ("f",)


def test_clamped_and_owner_fixed() -> None:
    assert effective(250, [Tracked("s", 30)]).priority == 254
    assert effective(10, [Tracked("s", -50, healthy=False)]).priority == 1
    assert effective(255, [Tracked("s", -50, healthy=False)], owner=True).priority == 255


def test_rise_and_fall() -> None:
    state = RiseFall(rise=2, fall=3)
    assert state.healthy
    assert [state.record(False) for _ in range(3)] == [False, False, True]
    assert not state.healthy
    assert state.record(True) is False
    assert state.record(False) is False  # the streak of successes is broken
    assert [state.record(True), state.record(True)] == [False, True]
    assert state.healthy
