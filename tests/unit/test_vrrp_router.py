"""The VRRP state machine driven through a fake network and a fake clock (RFC 5798 6.4)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from director.vrrp.router import (
    Action,
    AddVips,
    Announce,
    RemoveVips,
    Router,
    RouterConfig,
    SendAdvert,
    State,
    Transition,
)


def addr(last: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(f"192.0.2.{last}")


def config(
    name: str, priority: int, last: int, *, version: int = 3, interval_cs: int = 100, **kw: object
) -> RouterConfig:
    return RouterConfig(
        name=name,
        vrid=51,
        version=version,
        priority=priority,
        interval_cs=interval_cs,
        primary=addr(last),
        **kw,
    )  # type: ignore[arg-type]


@dataclass
class Node:
    router: Router
    holds_vip: bool = False
    linked: bool = True  # a cut link: nothing in, nothing out
    sent: list[int] = field(default_factory=list)  # priorities advertised
    transitions: list[Transition] = field(default_factory=list)


class Net:
    """Delivers adverts instantly to every other linked router and runs timers in order."""

    def __init__(self, *configs: RouterConfig) -> None:
        self.now = 0.0
        self.nodes = {c.name: Node(Router(c)) for c in configs}
        self.vip_log: list[tuple[float, str, bool]] = []

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def start(self, *names: str) -> None:
        for name in names or tuple(self.nodes):
            self.apply(name, self[name].router.start(self.now))

    def apply(self, name: str, actions: list[Action]) -> None:
        node = self[name]
        for action in actions:
            if isinstance(action, SendAdvert):
                node.sent.append(action.priority)
                if node.linked:
                    self.deliver(name, action.priority)
            elif isinstance(action, AddVips):
                node.holds_vip = True
                self.vip_log.append((self.now, name, True))
            elif isinstance(action, RemoveVips):
                node.holds_vip = False
                self.vip_log.append((self.now, name, False))
            elif isinstance(action, Transition):
                node.transitions.append(action)

    def deliver(self, sender: str, priority: int) -> None:
        src = self[sender].router.config
        for name, node in self.nodes.items():
            if name != sender and node.linked:
                got = node.router.receive(src.primary, priority, src.interval_cs, self.now)
                self.apply(name, got)

    def run_until(self, end: float) -> None:
        for _ in range(100_000):  # bounded: a livelock fails the test instead of hanging
            due = [
                (n.router.deadline, name)
                for name, n in self.nodes.items()
                if n.router.deadline is not None
            ]
            if not due:
                break
            when, name = min(due)
            if when > end:
                break
            self.now = max(self.now, when)
            self.apply(name, self[name].router.timer(self.now))
        else:
            raise AssertionError("simulation did not settle")
        self.now = end

    def state(self, name: str) -> State:
        return self[name].router.state

    def vip_holders(self) -> list[str]:
        return [name for name, n in self.nodes.items() if n.holds_vip]


def two(**kw: object) -> Net:
    net = Net(config("A", 150, 2, **kw), config("B", 100, 3, **kw))  # type: ignore[arg-type]
    net.start()
    net.run_until(10)
    return net


def test_timers_match_the_rfc() -> None:
    v2 = Router(config("X", 100, 2, version=2, interval_cs=100))
    assert v2.skew_time == pytest.approx(156 / 256)
    assert v2.master_down_interval == pytest.approx(3.609, abs=1e-3)  # LAB.md's reference
    v3 = Router(config("X", 100, 2, interval_cs=10))
    assert v3.master_down_interval == pytest.approx(0.361, abs=1e-3)
    v3_20 = Router(config("X", 100, 2, interval_cs=2))
    assert v3_20.master_down_interval == pytest.approx(0.072, abs=1e-3)


def test_initialize_to_backup_then_highest_priority_becomes_master() -> None:
    net = Net(config("A", 150, 2), config("B", 100, 3))
    net.start()
    assert net.state("A") is net.state("B") is State.BACKUP
    assert net["A"].transitions[0] == Transition(State.INIT, State.BACKUP, "started")
    net.run_until(10)
    assert net.state("A") is State.MASTER
    assert net.state("B") is State.BACKUP
    assert net.vip_holders() == ["A"]
    # A's Master_Down_Interval (3 + 106/256) ran out first.
    (when, who, added), *_ = net.vip_log
    assert (who, added) == ("A", True)
    assert when == pytest.approx(3 + 106 / 256)
    assert net["A"].transitions[-1].reason == "master down timer expired"
    assert net["B"].router.master == addr(2)


def test_address_owner_goes_straight_to_master() -> None:
    net = Net(config("A", 255, 2), config("B", 100, 3))
    net.start("A")
    assert net.state("A") is State.MASTER
    assert net["A"].transitions == [
        Transition(State.INIT, State.MASTER, "address owner (priority 255)")
    ]
    net.start("B")
    net.run_until(20)
    assert net.vip_holders() == ["A"]
    # The owner ignores tracking: its priority stays 255.
    net.apply("A", net["A"].router.set_priority(100, net.now))
    assert net["A"].router.priority == 255


def test_master_sends_adverts_every_interval() -> None:
    net = two()
    before = len(net["A"].sent)
    net.run_until(20)
    assert len(net["A"].sent) - before == 10
    assert set(net["A"].sent) == {150}
    assert net["B"].sent == []  # a backup is silent


def test_link_cut_backup_takes_over_after_master_down_interval() -> None:
    net = two()
    last_advert = net["A"].router.deadline - 1.0  # type: ignore[operator]
    net["A"].linked = False
    net.run_until(20)
    assert net.state("B") is State.MASTER
    took = next(t for t, who, added in net.vip_log if who == "B" and added)
    assert took == pytest.approx(last_advert + 3 + 156 / 256)
    assert net["B"].transitions[-1].reason == "master down timer expired"
    # The cut master still believes it is master: only the link was cut (split brain by design).
    assert net.state("A") is State.MASTER


def test_link_restored_higher_priority_preempts() -> None:
    net = two()
    net["A"].linked = False
    net.run_until(20)
    net["A"].linked = True
    net.run_until(30)
    assert net.state("A") is State.MASTER
    assert net.state("B") is State.BACKUP
    assert net.vip_holders() == ["A"]
    assert net["B"].transitions[-1].reason == "higher priority 150 from 192.0.2.2"


def test_master_answers_lower_priority_advert_at_once() -> None:
    net = two()
    b = net["B"].router
    actions = net["A"].router.receive(addr(3), 100, 100, net.now)
    assert actions == [SendAdvert(150)]
    assert b.state is State.BACKUP


def test_restarted_higher_priority_preempts_after_its_timer() -> None:
    net = Net(config("A", 150, 2), config("B", 100, 3))
    net.start("B")
    net.run_until(10)
    assert net.state("B") is State.MASTER
    net.start("A")
    net.run_until(20)
    assert net.state("A") is State.MASTER
    assert net.state("B") is State.BACKUP
    assert net.vip_holders() == ["A"]


def test_nopreempt_keeps_the_current_master() -> None:
    net = Net(config("A", 150, 2, preempt=False), config("B", 100, 3))
    net.start("B")
    net.run_until(10)
    net.start("A")
    net.run_until(60)
    assert net.state("B") is State.MASTER
    assert net.state("A") is State.BACKUP
    assert net.vip_holders() == ["B"]


def test_preempt_delay_holds_back_preemption() -> None:
    net = Net(config("A", 150, 2, preempt_delay=10.0), config("B", 100, 3))
    net.start("B")
    net.run_until(10)
    net.start("A")  # at t=10: may preempt from t=20
    net.run_until(19.9)
    assert net.state("A") is State.BACKUP
    net.run_until(40)
    assert net.state("A") is State.MASTER
    took = next(t for t, who, added in net.vip_log if who == "A" and added)
    assert 20 < took < 20 + 1 + 3.5


def test_equal_priority_higher_address_wins_between_masters() -> None:
    net = Net(config("A", 100, 2), config("B", 100, 3))
    net.start("A")
    net.run_until(10)
    net.start("B")
    net.run_until(30)
    # A backup that hears an equal priority keeps the current master (RFC 5798 6.4.2).
    assert net.state("A") is State.MASTER
    assert net.state("B") is State.BACKUP
    # Two masters at once (a healed partition): the higher primary address wins.
    net["B"].linked = False
    net.run_until(40)
    assert net.state("B") is State.MASTER
    net["B"].linked = True
    net.run_until(50)
    assert net.state("B") is State.MASTER
    assert net.state("A") is State.BACKUP
    assert net.vip_holders() == ["B"]
    assert net["A"].transitions[-1].reason == "equal priority 100 and higher address 192.0.2.3"


def test_stop_strict_priority_zero_backup_takes_over_after_skew() -> None:
    net = two(graceful_handoff=False)
    stop_at = net.now
    net.apply("A", net["A"].router.stop(net.now))
    assert net["A"].sent[-1] == 0
    assert net.state("A") is State.STOP
    assert not net["A"].holds_vip  # strict: removed at once
    net.run_until(20)
    took = next(t for t, who, added in net.vip_log if who == "B" and added)
    assert took == pytest.approx(stop_at + 156 / 256)  # Skew_Time of B
    assert net["B"].transitions[-1].reason == "master 192.0.2.2 resigned (priority 0)"


def test_stop_graceful_keeps_vip_until_new_master_speaks() -> None:
    net = two()
    stop_at = net.now
    net.apply("A", net["A"].router.stop(net.now))
    assert net.state("A") is State.STOPPING
    assert net["A"].holds_vip
    net.run_until(20)
    assert net.state("A") is State.STOP
    assert net.state("B") is State.MASTER
    b_added = next(t for t, who, added in net.vip_log if who == "B" and added)
    a_removed = [t for t, who, added in net.vip_log if who == "A" and not added][-1]
    assert b_added == pytest.approx(stop_at + 156 / 256)
    # Make before break: A keeps the VIP a moment after B took it, so B's GARP reaches the
    # clients first; half B's advert interval (0.5 s) capped at 50 ms.
    assert a_removed == pytest.approx(b_added + 0.05)
    assert net["A"].transitions[-1].reason == "new master 192.0.2.3 heard"


def test_handoff_grace_is_under_one_advert_interval() -> None:
    net = Net(config("A", 150, 2, interval_cs=2), config("B", 100, 3, interval_cs=2))
    net.start()
    net.run_until(10)
    net.apply("A", net["A"].router.stop(net.now))
    net.run_until(20)
    b_added = next(t for t, who, added in net.vip_log if who == "B" and added)
    a_removed = [t for t, who, added in net.vip_log if who == "A" and not added][-1]
    assert a_removed - b_added == pytest.approx(0.01)  # 20 ms adverts: 10 ms overlap


def test_stop_graceful_alone_gives_up_after_master_down_interval() -> None:
    net = Net(config("A", 150, 2))
    net.start()
    net.run_until(10)
    stop_at = net.now
    net.apply("A", net["A"].router.stop(net.now))
    net.run_until(30)
    assert net.state("A") is State.STOP
    removed = next(t for t, who, added in net.vip_log if not added)
    assert removed == pytest.approx(stop_at + 3 + 106 / 256)


def test_stop_from_backup() -> None:
    net = two()
    net.apply("B", net["B"].router.stop(net.now))
    assert net.state("B") is State.STOP
    assert net["B"].sent == []
    assert net["B"].router.deadline is None


def test_backup_learns_master_interval_in_v3() -> None:
    net = Net(config("A", 150, 2, interval_cs=10), config("B", 100, 3, interval_cs=100))
    net.start()
    net.run_until(10)
    b = net["B"].router
    assert b.master_interval_cs == 10
    assert b.master_down_interval == pytest.approx(0.3 + 156 * 0.1 / 256)


def test_v2_does_not_learn_interval() -> None:
    net = Net(
        config("A", 150, 2, version=2, interval_cs=100),
        config("B", 100, 3, version=2, interval_cs=200),
    )
    net.start()
    net.run_until(10)
    assert net["B"].router.master_interval_cs == 200


def test_fault_sends_priority_zero_and_recovers_to_backup() -> None:
    net = two()
    fault_at = net.now
    net.apply("A", net["A"].router.set_fault(True, "eth1 down", net.now))
    assert net.state("A") is State.FAULT
    assert net["A"].sent[-1] == 0
    assert not net["A"].holds_vip
    net.run_until(20)
    took = next(t for t, who, added in net.vip_log if who == "B" and added)
    assert took == pytest.approx(fault_at + 156 / 256)
    net.apply("A", net["A"].router.set_fault(False, "eth1 up", net.now))
    assert net["A"].transitions[-1] == Transition(State.FAULT, State.BACKUP, "eth1 up")
    net.run_until(30)
    assert net.state("A") is State.MASTER  # preempts again
    # A router in FAULT ignores adverts and holds no timer.
    net.apply("B", net["B"].router.set_fault(True, "tracked", net.now))
    assert net["B"].router.deadline is None
    assert net["B"].router.receive(addr(2), 150, 100, net.now) == []


def test_priority_change_by_tracking_moves_mastership() -> None:
    net = two()
    net.apply("A", net["A"].router.set_priority(90, net.now))
    net.run_until(20)
    assert net.state("B") is State.MASTER
    assert net.state("A") is State.BACKUP
    assert net["A"].transitions[-1].reason == "higher priority 100 from 192.0.2.3"


def test_three_routers_next_highest_takes_over() -> None:
    net = Net(config("A", 200, 2), config("B", 150, 3), config("C", 100, 4))
    net.start()
    net.run_until(10)
    assert net.vip_holders() == ["A"]
    net["A"].linked = False
    net.run_until(20)
    assert net.state("B") is State.MASTER
    assert net.state("C") is State.BACKUP
    assert net.vip_holders() == ["A", "B"]  # A is cut off, still thinks it is master
    net["A"].linked = True
    net.run_until(30)
    assert net.vip_holders() == ["A"]
    assert net.state("B") is net.state("C") is State.BACKUP


def test_master_receiving_priority_zero_answers() -> None:
    net = two()
    assert net["A"].router.receive(addr(9), 0, 100, net.now) == [SendAdvert(150)]


def test_backup_ignores_lower_priority_when_preempting() -> None:
    net = Net(config("A", 150, 2))
    net.start()
    a = net["A"].router
    deadline = a.deadline
    assert a.receive(addr(3), 100, 100, 1.0) == []
    assert a.deadline == deadline  # not reset: the lower master will be preempted


def test_sync_group_forcing() -> None:
    net = two()
    a = net["A"].router
    assert a.force_master("group", net.now) == []  # already master
    actions = a.force_backup("VI_GW left MASTER", net.now)
    assert actions[0] == RemoveVips()
    assert actions[-1] == Transition(State.MASTER, State.BACKUP, "VI_GW left MASTER")
    actions = net["B"].router.force_master("VI_GW became MASTER", net.now)
    assert actions[:3] == [AddVips(), SendAdvert(100), Announce()]


def test_hold_backup_keeps_a_group_member_from_taking_over() -> None:
    net = two()
    net["A"].linked = False
    net["B"].router.hold_backup = True  # a sync-group peer of B is in FAULT
    net.run_until(30)
    assert net.state("B") is State.BACKUP
    assert net["B"].router.deadline is not None  # still watching
    net["B"].router.hold_backup = False
    net.run_until(40)
    assert net.state("B") is State.MASTER


def test_master_adverts_do_not_drift_when_timers_fire_late() -> None:
    r = Router(config("A", 255, 2, interval_cs=1))
    r.start(0.0)
    fired = []
    for _ in range(100):
        assert r.deadline is not None
        late = r.deadline + 0.0008  # every wake-up 0.8 ms late
        r.timer(late)
        fired.append(late)
    assert r.deadline == pytest.approx(1.01)  # 101 intervals of 10 ms: no accumulated delay
    # A stall of several intervals restarts the cycle instead of sending a burst.
    assert r.deadline is not None
    r.timer(r.deadline + 0.05)
    assert r.deadline == pytest.approx(1.01 + 0.05 + 0.01)
