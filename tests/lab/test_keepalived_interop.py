"""Interoperability matrix: `director start` and keepalived 2.2.7 as VRRP peers in the lab.

Six modes: VRRPv2 with `pass`, VRRPv2 with `ah`, VRRPv3 multicast, VRRPv3 unicast, VRRPv3 over
IPv6 (multicast from link-local sources) and VRRPv3 over IPv6 unicast (keepalived sends those
with hop limit 64). The director always runs in dir1, keepalived in dir2; for each mode:

- the higher priority wins, in both roles, and the backup stays backup for longer than its
  Master_Down_Interval (so it accepts every advert of the other implementation);
- a planned stop of the master hands off by priority 0 in both directions: the backup takes over
  after its skew time, well before Master_Down_Interval, and says so in its log or status;
- preemption: the lower priority starts first and becomes master, the higher one takes over;
  with `preempt: false` / `nopreempt` the later higher priority stays backup (both directions);
- no dual master: a helper in each node samples the VIP every 5 ms (and at once on every
  address change the kernel reports) all along, and the longest time both nodes held it is at
  most one advert interval. The largest overlap expected is the director's handoff grace: a
  stopping master keeps the VIP for half the new master's interval (at most 50 ms) after hearing
  it, so the new master's GARP reaches the clients first.

Advert interval 1 s for v2 (keepalived takes whole seconds there), 100 ms for v3. One lab for the
module; the daemons are started and stopped (by pid) per scenario.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from director.api.control import ControlError, request
from lab.core import Lab
from lab.daemons import Director, director_config, vrrp_instance
from lab.keepalived import (
    Keepalived,
    KeepalivedInstance,
    VipWatch,
    keepalived_conf,
    longest_overlap,
    wait_until,
    watching,
)
from lab.topology import VIP4, VIP6

pytestmark = pytest.mark.lab

PASSWORD = "s3cret"
HIGH, LOW = 150, 100
POLL = 0.02  # state polling step; the VIP itself is sampled every 5 ms by the watchers
# keepalived 2.2.7's log as a backup taking over on priority 0 (its skew timer, then MASTER).
PRIORITY0_TAKEOVER = (
    r"\(VI_1\) Backup received priority 0 advertisement\n"
    r".*\(VI_1\) Receive advertisement timeout\n"
    r".*\(VI_1\) Entering MASTER STATE"
)
# Worst dual-master overlap per mode, for the summary printed at the end of the module.
OVERLAPS: dict[str, float] = {}
TAKEOVERS: dict[str, float] = {}


@dataclass(frozen=True)
class Mode:
    id: str
    version: int
    family: int
    interval: float  # seconds
    vrid: int
    auth: str | None = None  # "pass" | "ah"
    unicast: bool = False

    @property
    def vip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return VIP4 if self.family == 4 else VIP6

    @property
    def vip_cidr(self) -> str:
        return f"{self.vip}/24" if self.family == 4 else f"{self.vip}/64"

    @property
    def dir1(self) -> str:
        return "192.0.2.2" if self.family == 4 else "2001:db8:0:1::2"

    @property
    def dir2(self) -> str:
        return "192.0.2.3" if self.family == 4 else "2001:db8:0:1::3"

    def skew(self, priority: int) -> float:
        if self.version == 2:
            return (256 - priority) / 256
        return (256 - priority) * self.interval / 256

    def master_down(self, priority: int) -> float:
        """RFC 3768 / 5798 Master_Down_Interval of a backup with `priority`."""
        return 3 * self.interval + self.skew(priority)


MODES = [
    Mode("v2-pass", 2, 4, 1.0, vrid=71, auth="pass"),
    Mode("v2-ah", 2, 4, 1.0, vrid=72, auth="ah"),
    Mode("v3-multicast", 3, 4, 0.1, vrid=73),
    Mode("v3-unicast", 3, 4, 0.1, vrid=74, unicast=True),
    Mode("v3-ipv6", 3, 6, 0.1, vrid=75),
    # Not in the list: keepalived's IPv6 unicast adverts carry hop limit 64.
    Mode("v3-ipv6-unicast", 3, 6, 0.1, vrid=76, unicast=True),
]


# -- the two daemons ---------------------------------------------------------------------------


def director_cfg(tmp: Path, mode: Mode, priority: int, *, preempt: bool = True) -> Path:
    extra: dict[str, Any] = {
        "vrid": mode.vrid,
        "version": mode.version,
        "advert_interval": "1s" if mode.version == 2 else "100ms",
        "preempt": preempt,
    }
    if mode.auth is not None:
        extra["auth"] = {"type": mode.auth, "password": PASSWORD}
    if mode.unicast:
        extra["unicast"] = {"source": mode.dir1, "peers": [mode.dir2]}
    return director_config(tmp, "dir1", [vrrp_instance(priority, mode.vip_cidr, **extra)])


def keepalived_config(mode: Mode, priority: int, *, nopreempt: bool = False) -> str:
    inst = KeepalivedInstance(
        vrid=mode.vrid,
        priority=priority,
        vips=(mode.vip_cidr,),
        version=mode.version,
        advert_int=mode.interval,
        nopreempt=nopreempt,
        auth_type=None if mode.auth is None else mode.auth.upper(),
        auth_pass=PASSWORD,
        unicast_src=mode.dir2 if mode.unicast else None,
        unicast_peers=(mode.dir1,) if mode.unicast else (),
    )
    return keepalived_conf([inst], router_id="ka_dir2")


class FastDirector(Director):
    """lab.daemons.Director whose status comes straight from the control socket (no CLI
    process per poll: the scenarios poll every 20 ms)."""

    def status(self) -> dict[str, Any] | None:
        assert self.proc.poll() is None, f"director exited:\n{self.text()}"
        try:
            answer = request(self.socket, {"command": "status"}, timeout=5)
        except (ControlError, OSError, ValueError):
            return None  # not listening yet
        status: dict[str, Any] = answer["status"]
        return status


def stop_director(d: Director) -> None:
    """SIGTERM (a master hands off and removes its VIP); SIGKILL only if that hangs."""
    try:
        d.stop(timeout=15)
    except subprocess.TimeoutExpired:
        d.kill()


@dataclass
class Scenario:
    """Both daemons of one scenario, the VIP watchers, and what is checked all along."""

    lab: Lab
    mode: Mode
    tmp: Path
    watches: dict[str, VipWatch]
    director: FastDirector | None = None
    keepalived: Keepalived | None = None
    peer_address: str = ""  # keepalived's VRRP source as the director sees it
    notes: list[str] = field(default_factory=list)

    def start_director(self, priority: int, *, preempt: bool = True) -> FastDirector:
        cfg = director_cfg(self.tmp, self.mode, priority, preempt=preempt)
        d = FastDirector(self.lab, "dir1", cfg, self.tmp / "dir1.log")
        self.director = d
        return d

    def start_keepalived(self, priority: int, *, nopreempt: bool = False) -> Keepalived:
        conf = keepalived_config(self.mode, priority, nopreempt=nopreempt)
        ka = Keepalived(self.lab, "dir2", conf, self.tmp / "keepalived")
        ka.start()
        self.keepalived = ka
        return ka

    def stop(self) -> None:
        """The director first: as master it hands off to keepalived in a skew time, where
        stopping last it would keep the VIP for a whole Master_Down_Interval (no one to hand
        off to). Each by pid; keepalived's SIGTERM sends priority 0 and removes its VIP."""
        try:
            if self.director is not None:
                stop_director(self.director)
        finally:
            if self.keepalived is not None:
                self.keepalived.stop()

    def vip(self, node: str) -> bool:
        return bool(self.watches[node].present())

    def roles(self, master: str) -> str | None:
        """None when `master` ("director" or "keepalived") is MASTER with the VIP and the other
        is BACKUP without it; otherwise what differs."""
        d, ka = self.director, self.keepalived
        assert d is not None and ka is not None
        assert ka.running, f"keepalived exited:\n{ka.log()}"
        want = {"director": "MASTER", "keepalived": "BACKUP"}
        if master == "keepalived":
            want = {"director": "BACKUP", "keepalived": "MASTER"}
        got = {
            "director": d.state(),
            "keepalived": ka.state(),
            "vip dir1": self.vip("dir1"),
            "vip dir2": self.vip("dir2"),
        }
        expected = {
            **want,
            "vip dir1": master == "director",
            "vip dir2": master == "keepalived",
        }
        return None if got == expected else f"expected {expected}, got {got}"

    def wait_roles(self, master: str, timeout: float) -> float:
        return wait_until(f"{master} MASTER", lambda: self.roles(master) is None, timeout, POLL)

    def hold_roles(self, master: str, seconds: float) -> None:
        """The roles do not change for `seconds` (polled all along)."""
        deadline = time.monotonic() + seconds
        polls = 0
        while time.monotonic() < deadline and polls < 100_000:
            problem = self.roles(master)
            assert problem is None, f"after {polls} polls: {problem}\n{self.logs()}"
            polls += 1
            time.sleep(POLL)
        assert polls >= seconds / POLL / 4, polls  # really watched

    def logs(self) -> str:
        out = []
        if self.director is not None:
            out.append("--- director ---\n" + self.director.text())
        if self.keepalived is not None:
            out.append("--- keepalived ---\n" + self.keepalived.log())
        return "\n".join(out)


def link_local(lab: Lab, node: str) -> str:
    done = lab.run(
        node,
        ["ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(done.stdout.split()[3].split("/")[0])


def remove_leftover_vip(lab: Lab, mode: Mode) -> list[str]:
    """A scenario that failed half-way may leave the VIP behind: remove it (and say where)."""
    found = []
    for node in ("dir1", "dir2"):
        out = lab.run(node, ["ip", "-o", "addr", "show", "dev", "eth0"], capture_output=True)
        if f" {mode.vip}/" in out.stdout.decode():
            lab.run(node, ["ip", "addr", "del", mode.vip_cidr, "dev", "eth0"], check=False)
            found.append(node)
    return found


@contextmanager
def scenario(lab: Lab, mode: Mode, tmp: Path) -> Iterator[Scenario]:
    """Watchers on both nodes for the whole scenario; daemons stopped by pid at the end; the
    longest dual-master overlap checked against one advert interval."""
    assert not remove_leftover_vip(lab, mode), "a VIP was left by an earlier scenario"
    try:
        with ExitStack() as outer:
            watches = outer.enter_context(watching(lab, mode.vip, tmp, ("dir1", "dir2")))
            sc = Scenario(lab, mode, tmp, watches)
            # keepalived's VRRP source: IPv6 multicast goes out from the link-local address.
            v6_multicast = mode.family == 6 and not mode.unicast
            sc.peer_address = link_local(lab, "dir2") if v6_multicast else mode.dir2
            try:
                yield sc
            except BaseException:
                print(sc.logs())
                raise
            finally:
                sc.stop()
            # Daemons stopped: no VIP may be left on either node.
            wait_until(
                "VIP released on both nodes",
                lambda: not sc.vip("dir1") and not sc.vip("dir2"),
                timeout=5,
                step=POLL,
            )
            end = time.monotonic()
            a, b = watches["dir1"].timeline(), watches["dir2"].timeline()
    finally:
        # Whatever happened, the next scenario starts without the VIP.
        leftover = remove_leftover_vip(lab, mode)
    assert not leftover, f"VIP left on {leftover}"
    overlap, at = longest_overlap(a, b, end)
    OVERLAPS[mode.id] = max(OVERLAPS.get(mode.id, 0.0), overlap)
    gaps = [w.summary.get("max_gap", 0.0) for w in watches.values()]
    print(
        f"{mode.id}: longest dual-master overlap {overlap * 1000:.1f} ms"
        f" (largest gap between samples {max(gaps) * 1000:.1f} ms)"
    )
    if at is not None:
        for node, line in (("dir1", a), ("dir2", b)):
            near = [(round((t - at) * 1000, 1), p) for t, p in line if abs(t - at) < 1]
            print(f"  {node} around it (ms from its start, present): {near}")
    assert overlap <= mode.interval, (
        f"both nodes held {mode.vip} for {overlap:.3f} s from t={at}: dir1 {a}, dir2 {b}"
    )


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    yield
    for mode in MODES:
        if mode.id in OVERLAPS:
            print(
                f"\n{mode.id}: worst dual-master overlap {OVERLAPS[mode.id] * 1000:.1f} ms "
                f"(limit {mode.interval * 1000:.0f} ms)"
                + (
                    f", slowest priority-0 takeover {TAKEOVERS[mode.id] * 1000:.0f} ms"
                    if mode.id in TAKEOVERS
                    else ""
                )
            )


def record_takeover(mode: Mode, seconds: float) -> None:
    TAKEOVERS[mode.id] = max(TAKEOVERS.get(mode.id, 0.0), seconds)


# -- (a) + (d): director master, keepalived backup; the director stops --------------------------


@pytest.mark.parametrize("mode", MODES, ids=[m.id for m in MODES])
def test_director_master_keepalived_backup_then_priority0_handoff(
    lab_module: Lab, tmp_path: Path, mode: Mode
) -> None:
    with scenario(lab_module, mode, tmp_path) as sc:
        ka = sc.start_keepalived(LOW)
        d = sc.start_director(HIGH)
        sc.wait_roles("director", timeout=2 * mode.master_down(LOW) + 10)
        # keepalived accepts our adverts: it stays backup past its own Master_Down_Interval.
        sc.hold_roles("director", mode.master_down(LOW) + mode.interval)

        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)  # a master sends priority 0 and hands off
        wait_until(
            "keepalived MASTER after our priority 0",
            lambda: ka.state() == "MASTER" and sc.vip("dir2"),
            timeout=mode.master_down(LOW) + 5,
            step=POLL,
        )
        assert d.stop() == 0, d.text()
        assert not sc.vip("dir1")
        took = sc.watches["dir2"].first_present_after(t0)
        assert took is not None
        # Priority 0 makes the backup wait its skew time only, not Master_Down_Interval.
        record_takeover(mode, took - t0)
        assert took - t0 < mode.master_down(LOW) / 2, (took - t0, sc.logs())
        # keepalived's own account: the priority-0 advert set its timer to the skew time.
        after = ka.log().split("Entering BACKUP STATE")[-1]
        assert re.search(PRIORITY0_TAKEOVER, after), ka.log()
        # Graceful handoff: the director kept the VIP until it heard keepalived as master.
        assert f"new master {sc.peer_address} heard" in d.text(), d.text()


# -- (b) + (d): keepalived master, director backup; keepalived stops ----------------------------


@pytest.mark.parametrize("mode", MODES, ids=[m.id for m in MODES])
def test_keepalived_master_director_backup_then_priority0_handoff(
    lab_module: Lab, tmp_path: Path, mode: Mode
) -> None:
    with scenario(lab_module, mode, tmp_path) as sc:
        ka = sc.start_keepalived(HIGH)
        d = sc.start_director(LOW)
        sc.wait_roles("keepalived", timeout=2 * mode.master_down(LOW) + 10)
        sc.hold_roles("keepalived", mode.master_down(LOW) + mode.interval)
        inst = d.instance()
        assert inst is not None
        assert inst["master"] == sc.peer_address
        assert inst["counters"].get("drop_auth", 0) == 0, inst["counters"]
        became_master = inst["counters"].get("became_master", 0)

        t0 = time.monotonic()
        assert ka.stop() == 0, ka.log()
        wait_until(
            "director MASTER after keepalived's priority 0",
            lambda: d.state() == "MASTER" and sc.vip("dir1"),
            timeout=mode.master_down(LOW) + 5,
            step=POLL,
        )
        assert "sent 0 priority" in ka.log(), ka.log()
        took = sc.watches["dir1"].first_present_after(t0)
        assert took is not None
        record_takeover(mode, took - t0)
        assert took - t0 < mode.master_down(LOW) / 2, (took - t0, sc.logs())
        inst = d.instance()
        assert inst is not None
        assert inst["counters"]["became_master"] == became_master + 1
        assert inst["counters"]["priority_zero_received"] >= 1
        reason = inst["last_transition"]["reason"]
        assert reason == f"master {sc.peer_address} resigned (priority 0)", sc.logs()
        assert not sc.vip("dir2")


# -- (c) preemption and nopreempt, both directions ---------------------------------------------

FIRST = ["director-first", "keepalived-first"]


def start_lower_first(sc: Scenario, first: str) -> str:
    """Start the lower priority one alone and wait until it is MASTER with the VIP; its name."""
    mode = sc.mode
    if first == "director-first":
        d = sc.start_director(LOW)
        wait_until(
            "director MASTER alone",
            lambda: d.state() == "MASTER" and sc.vip("dir1"),
            timeout=mode.master_down(LOW) + 10,
            step=POLL,
        )
        return "director"
    ka = sc.start_keepalived(LOW)
    wait_until(
        "keepalived MASTER alone",
        lambda: ka.state() == "MASTER" and sc.vip("dir2"),
        timeout=mode.master_down(LOW) + 10,
        step=POLL,
    )
    return "keepalived"


@pytest.mark.parametrize("first", FIRST)
@pytest.mark.parametrize("mode", MODES, ids=[m.id for m in MODES])
def test_preemption_higher_priority_takes_over(
    lab_module: Lab, tmp_path: Path, mode: Mode, first: str
) -> None:
    with scenario(lab_module, mode, tmp_path) as sc:
        lower = start_lower_first(sc, first)
        if lower == "director":
            ka = sc.start_keepalived(HIGH)
            sc.wait_roles("keepalived", timeout=mode.master_down(HIGH) + 10)
            assert sc.director is not None
            text = sc.director.text()
            assert f"higher priority {HIGH} from {sc.peer_address}" in text, text
            assert ka.states() == ["BACKUP", "MASTER"], ka.log()
        else:
            sc.start_director(HIGH)
            sc.wait_roles("director", timeout=mode.master_down(HIGH) + 10)
            assert sc.keepalived is not None
            log = sc.keepalived.log()
            assert sc.keepalived.states() == ["BACKUP", "MASTER", "BACKUP"], log
            assert f"higher priority {HIGH}, ours {LOW}" in log, log
        # Settled: the new backup does not come back.
        sc.hold_roles("keepalived" if lower == "director" else "director", 2 * mode.interval)


@pytest.mark.parametrize("first", FIRST)
@pytest.mark.parametrize("mode", MODES, ids=[m.id for m in MODES])
def test_nopreempt_later_higher_priority_stays_backup(
    lab_module: Lab, tmp_path: Path, mode: Mode, first: str
) -> None:
    with scenario(lab_module, mode, tmp_path) as sc:
        lower = start_lower_first(sc, first)
        if lower == "director":
            ka = sc.start_keepalived(HIGH, nopreempt=True)
            wait_until("keepalived BACKUP", lambda: ka.state() == "BACKUP", 10, POLL)
        else:
            d = sc.start_director(HIGH, preempt=False)
            wait_until("director BACKUP", lambda: d.state() == "BACKUP", 10, POLL)
        # Past the higher one's Master_Down_Interval and then some: nobody moves.
        sc.hold_roles(lower, mode.master_down(HIGH) + mode.interval)
        if lower == "keepalived":
            inst = sc.director.instance() if sc.director else None
            assert inst is not None and inst["master"] == sc.peer_address, inst
        else:
            assert sc.keepalived is not None and sc.keepalived.states() == ["BACKUP"]


def test_longest_overlap_arithmetic() -> None:
    """The dual-master measure itself (no lab): spans closed at `end`, the longest intersection."""
    a = [(0.0, False), (1.0, True), (2.0, False), (5.0, True)]
    b = [(0.0, True), (1.5, False), (4.0, True), (5.25, False), (6.0, True)]
    assert longest_overlap(a, b, end=6.1) == (0.5, 1.0)
    assert longest_overlap(a, [(0.0, False)], end=10.0) == (0.0, None)
    assert longest_overlap([(0.0, True)], [(3.0, True)], end=3.5) == (0.5, 3.0)
