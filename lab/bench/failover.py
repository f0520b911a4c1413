"""VRRP failover benchmark: director against keepalived 2.2.7, in the same lab, same invocation.

For each advert setting, each scenario and each run, alternating the two implementations
(director, keepalived, director, keepalived ...):

- two daemons, dir1 priority 150 and dir2 priority 100, one VRRP instance holding the lab VIP;
  both freshly started for every run and stopped by pid after it;
- an echo responder (`lab.probe respond`) on dir1 and dir2, a prober in `client` sending a UDP
  probe to VIP:9999 every 2 ms and recording the VRRP adverts it hears;
- `cut`: dir1's cable is pulled on the switch side (one netlink call on an already open socket,
  timed with CLOCK_MONOTONIC); blackout = cut -> first reply from dir2;
- `stop`: dir1 gets SIGTERM (director: make-before-break handoff; keepalived: priority 0 and
  VIP removal); probes lost and the largest gap between replies.

Then the CPU of one instance at 10 ms adverts (master and backup, from /proc/PID/stat) and a soak
of 255 instances at 100 ms adverts on one interface, counting transitions after the settle.
The figures are printed with PASS/MISS against the targets; nothing is asserted.

    python -m lab.bench failover [--runs 3] [--settings v2-1s,v3-100ms,v3-20ms,v3-10ms]
        [--skip-keepalived] [--cpu-seconds 30] [--soak-seconds 600|0] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import re
import secrets
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

import yaml

from lab import netns
from lab.core import Lab, LabError
from lab.probe import DEFAULT_PORT, ProbeRecord, analyse, summary, vrrp_timeline
from lab.topology import VIP4, default_topology

Impl = Literal["director", "keepalived"]
Scenario = Literal["cut", "stop"]

VRID = 51
MASTER_PRIORITY = 150
BACKUP_PRIORITY = 100
DIR1_ADDR = "192.0.2.2"
DIR2_ADDR = "192.0.2.3"
PROBE_INTERVAL = 0.002
# Probing before the fault, + one advert interval: the old master's replies and at least one
# of its adverts are on record.
BASELINE = 0.3
TAIL = 0.3  # probing after the new master's first reply
TARGET_MARGIN = 0.010  # blackout target: Master_Down_Interval + 10 ms
TARGET_RATIO = 1.05
TARGET_CPU = 2.0  # % of one core, one instance at 10 ms adverts
SOAK_INSTANCES = 255
SOAK_SAMPLE = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    key: str
    version: int
    interval: float  # Advertisement_Interval, seconds

    def skew(self, priority: int = BACKUP_PRIORITY) -> float:
        if self.version == 2:
            return (256 - priority) / 256
        return (256 - priority) / 256 * self.interval

    def mdi(self, priority: int = BACKUP_PRIORITY) -> float:
        """RFC Master_Down_Interval of a backup with `priority`."""
        return 3 * self.interval + self.skew(priority)

    @property
    def director_interval(self) -> str:
        if self.version == 2:
            return f"{round(self.interval)}s"
        return f"{round(self.interval * 1000)}ms"

    @property
    def keepalived_interval(self) -> str:
        return f"{self.interval:g}"


SETTINGS = {
    s.key: s
    for s in (
        Setting("v2-1s", 2, 1.0),
        Setting("v3-1s", 3, 1.0),
        Setting("v3-100ms", 3, 0.1),
        Setting("v3-50ms", 3, 0.05),
        Setting("v3-20ms", 3, 0.02),
        Setting("v3-10ms", 3, 0.01),
    )
}
DEFAULT_SETTINGS = ("v2-1s", "v3-100ms", "v3-20ms", "v3-10ms")


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    vrid: int
    priority: int
    vip: str  # with prefix length
    setting: Setting


# ---------------------------------------------------------------- small helpers


class BenchError(RuntimeError):
    pass


def wait_until(what: str, check: Callable[[], bool], timeout: float, step: float = 0.02) -> None:
    """Poll `check` until it holds; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(step)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def rss_kib(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE // 1024


class LineReader:
    """Lines from a child's stdout pipe, read from the descriptor with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.lines: list[str] = []
        self.eof = False

    def _read(self, timeout: float) -> None:
        readable, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not readable:
            return
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.eof = True
            return
        self.buffer += chunk
        *done, self.buffer = self.buffer.split(b"\n")
        self.lines += [line.decode(errors="replace") for line in done]

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise BenchError(f"no {prefix!r} line within {timeout:.1f}s (got {self.lines})")
            self._read(min(left, 0.5))


def end_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM by pid, wait; SIGKILL by pid if it does not go. Its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode


# ---------------------------------------------------------------- daemons


class Daemon:
    """A VRRP daemon in a lab node (ended by pid); subclasses say how to run and read it."""

    impl: ClassVar[Impl]

    def __init__(self, lab: Lab, node: str, workdir: Path, specs: Sequence[InstanceSpec]) -> None:
        self.lab, self.node, self.specs = lab, node, list(specs)
        self.dir = workdir / f"{self.impl}-{node}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "log"
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = self.lab.popen(
            self.node, self.argv(), stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # `ip netns exec` execs: this is the daemon itself

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def states(self) -> dict[str, str]:
        raise NotImplementedError

    def transitions(self) -> int:
        raise NotImplementedError

    def cpu_pids(self) -> dict[str, int]:
        """The processes whose CPU is reported, by role."""
        raise NotImplementedError

    def terminate(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        code = None if self.proc is None else end_process(self.proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def all_in(self, state: str) -> bool:
        if not self.alive():
            raise BenchError(f"{self.impl} on {self.node} exited:\n{self.log_tail()}")
        got = self.states()
        return len(got) == len(self.specs) and all(s == state for s in got.values())

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def control_request(path: str, command: str, timeout: float = 5.0) -> dict[str, Any]:
    """One request on a director's control socket (a UNIX socket: any namespace reaches it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        data = b""
        for _ in range(4096):  # bounded: 4096 reads of up to 64 KiB
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n"):
                break
    answer: dict[str, Any] = json.loads(data)
    return answer


class DirectorDaemon(Daemon):
    impl = "director"

    def __init__(self, lab: Lab, node: str, workdir: Path, specs: Sequence[InstanceSpec]) -> None:
        super().__init__(lab, node, workdir, specs)
        self.socket = str(self.dir / "control.sock")
        self.config = self.dir / "director.yaml"
        body = {
            "node": {"name": node, "control_socket": self.socket, "state_dir": str(self.dir)},
            "vrrp": {
                "instances": [
                    {
                        "name": s.name,
                        "interface": "eth0",
                        "vrid": s.vrid,
                        "priority": s.priority,
                        "version": s.setting.version,
                        "advert_interval": s.setting.director_interval,
                        "addresses": [s.vip],
                    }
                    for s in self.specs
                ]
            },
        }
        self.config.write_text(yaml.safe_dump(body, sort_keys=False))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "director", "start", "-c", str(self.config)]

    def status(self) -> dict[str, Any] | None:
        try:
            answer = control_request(self.socket, "status")
        except (OSError, ValueError):
            return None
        status: dict[str, Any] | None = answer.get("status") if answer.get("ok") else None
        return status

    def instances(self) -> list[dict[str, Any]]:
        status = self.status()
        return [] if status is None else list(status["vrrp"]["instances"])

    def states(self) -> dict[str, str]:
        return {i["name"]: i["state"] for i in self.instances()}

    def transitions(self) -> int:
        return sum(
            n
            for i in self.instances()
            for key, n in i["counters"].items()
            if key.startswith("became_")
        )

    def heard_master(self) -> bool:
        got = self.instances()
        return len(got) == len(self.specs) and all(
            i["counters"].get("adverts_received", 0) > 0 for i in got
        )

    def cpu_pids(self) -> dict[str, int]:
        return {"director": self.pid}


KEEPALIVED_STATE = re.compile(rb"\(([^)\s]+)\) Entering (\w+) STATE")


class KeepalivedDaemon(Daemon):
    impl = "keepalived"

    def __init__(self, lab: Lab, node: str, workdir: Path, specs: Sequence[InstanceSpec]) -> None:
        super().__init__(lab, node, workdir, specs)
        self.config = self.dir / "keepalived.conf"
        self.pidfile = self.dir / "keepalived.pid"
        self.vrrp_pidfile = self.dir / "vrrp.pid"
        parts = [f"global_defs {{\n    router_id {node}\n}}\n"]
        for s in self.specs:
            parts.append(
                f"vrrp_instance {s.name} {{\n"
                "    state BACKUP\n"
                "    interface eth0\n"
                f"    virtual_router_id {s.vrid}\n"
                f"    priority {s.priority}\n"
                f"    advert_int {s.setting.keepalived_interval}\n"
                f"    version {s.setting.version}\n"
                f"    virtual_ipaddress {{\n        {s.vip} dev eth0\n    }}\n"
                "}\n"
            )
        self.config.write_text("".join(parts))
        self._offset = 0
        self._states: dict[str, str] = {}
        self._transitions = 0

    def argv(self) -> list[str]:
        return [
            "keepalived",
            "-P",
            "-n",
            "-l",
            # No -D: at 255 instances its extra lines (one per GARP) slowed the VRRP process
            # enough to overflow its receive buffer, and the backup flapped.
            "-f",
            str(self.config),
            "-p",
            str(self.pidfile),
            "-r",
            str(self.vrrp_pidfile),
        ]

    def _scan(self) -> None:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only
        for m in KEEPALIVED_STATE.finditer(data[:end]):
            self._states[m.group(1).decode()] = m.group(2).decode()
            self._transitions += 1
        self._offset += end

    def states(self) -> dict[str, str]:
        self._scan()
        return dict(self._states)

    def transitions(self) -> int:
        self._scan()
        return self._transitions

    def vrrp_pid(self) -> int:
        wait_until(
            "keepalived's VRRP pid file",
            lambda: self.vrrp_pidfile.exists() and self.vrrp_pidfile.read_text().strip() != "",
            10,
        )
        return int(self.vrrp_pidfile.read_text().split()[0])

    def cpu_pids(self) -> dict[str, int]:
        return {"keepalived-vrrp": self.vrrp_pid(), "keepalived-parent": self.pid}


DAEMONS: dict[Impl, type[Daemon]] = {"director": DirectorDaemon, "keepalived": KeepalivedDaemon}


# ---------------------------------------------------------------- the lab around the runs


class Prober:
    """`lab.probe probe` in the client node, to VIP:PORT every 2 ms, watching VRRP on eth0."""

    def __init__(
        self, lab: Lab, out: Path, duration: float, interval: float = PROBE_INTERVAL
    ) -> None:
        self.out = out
        self.err = out.with_suffix(".err").open("wb")
        argv = [sys.executable, "-m", "lab.probe", "probe", "--to", f"{VIP4}:{DEFAULT_PORT}"]
        argv += ["--interval", str(interval), "--duration", f"{duration:.3f}"]
        argv += ["--json", str(out), "--watch-vrrp", "eth0", "--quiet"]
        self.proc = lab.popen("client", argv, stdout=subprocess.PIPE, stderr=self.err)
        assert self.proc.stdout is not None
        self.lines = LineReader(self.proc.stdout)

    def wait_for(self, prefix: str, timeout: float) -> str:
        return self.lines.wait_for(prefix, timeout)

    def finish(self) -> ProbeRecord:
        code = end_process(self.proc, timeout=15)
        self.close()
        if code != 0 or not self.out.exists():
            raise BenchError(f"prober failed (exit {code}): {self.out.with_suffix('.err')}")
        return ProbeRecord.load(self.out)

    def close(self) -> None:
        end_process(self.proc, timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


class BenchLab:
    """One lab for the whole benchmark: responders on both directors, a cable cutter for dir1."""

    def __init__(self, lab: Lab, workdir: Path, max_seconds: float) -> None:
        self.lab = lab
        self.workdir = workdir
        self.responders: list[subprocess.Popen[Any]] = []
        self.notes: list[str] = []
        self.cut_open = False
        self._switch: Any = None
        try:
            for node in ("dir1", "dir2"):
                argv = [sys.executable, "-m", "lab.probe", "respond", "--name", node]
                argv += ["--port", str(DEFAULT_PORT), "--max-seconds", f"{max_seconds:.0f}"]
                proc = lab.popen(node, argv, stdout=subprocess.PIPE)
                self.responders.append(proc)
                assert proc.stdout is not None
                LineReader(proc.stdout).wait_for(f"ready {node}", 15)
            # Opened once, so a cut is one netlink message (opening one takes milliseconds).
            self._switch = netns.ipr(lab.ns_name("sw-lan"))
            port = lab.topology.port_name("dir1", "lan")
            found = self._switch.link_lookup(ifname=port)
            if not found:
                raise BenchError(f"no switch port {port}")
            self._port_index = int(found[0])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._switch is not None:
            with contextlib.suppress(Exception):
                self._switch.close()
            self._switch = None
        for proc in self.responders:
            end_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()

    def cut(self) -> tuple[float, float]:
        """Pull dir1's cable (switch side). (monotonic before, after) the netlink call."""
        before = time.monotonic()
        self._switch.link("set", index=self._port_index, state="down")
        after = time.monotonic()
        self.cut_open = True
        return before, after

    def restore(self) -> None:
        self.lab.set_link("dir1", "eth0", True)
        self.cut_open = False

    def holds(self, node: str, address: str) -> bool:
        out = self.lab.run(
            node, ["ip", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True
        )
        return f" {address}/" in out.stdout

    def clean(self) -> None:
        """Before a run: cable in, no VIP left on a director, the client's ARP entry gone."""
        if self.cut_open:
            self.restore()
        for node in ("dir1", "dir2"):
            if self.holds(node, str(VIP4)):
                self.notes.append(f"leftover VIP on {node} removed before a run")
                self.lab.run(node, ["ip", "addr", "del", f"{VIP4}/24", "dev", "eth0"])
        self.lab.run("client", ["ip", "neigh", "flush", "to", str(VIP4)], check=True)


# ---------------------------------------------------------------- one run


def start_pair(
    bl: BenchLab,
    impl: Impl,
    specs1: Sequence[InstanceSpec],
    specs2: Sequence[InstanceSpec],
    rundir: Path,
    setting: Setting,
) -> tuple[Daemon, Daemon]:
    """dir1 MASTER (every instance), then dir2 BACKUP having heard it."""
    cls = DAEMONS[impl]
    d1 = cls(bl.lab, "dir1", rundir, specs1)
    d2 = cls(bl.lab, "dir2", rundir, specs2)
    startup = 20 + 2 * setting.mdi(MASTER_PRIORITY) + len(specs1) * 0.2
    try:
        d1.start()
        wait_until(f"{impl} dir1 MASTER", lambda: d1.all_in("MASTER"), startup, step=0.05)
        d2.start()
        wait_until(f"{impl} dir2 BACKUP", lambda: d2.all_in("BACKUP"), startup, step=0.05)
        # A fresh backup must have heard the master before the fault: two adverts' time.
        if isinstance(d2, DirectorDaemon):
            wait_until("dir2 heard dir1", d2.heard_master, 2 * setting.interval + 5)
        time.sleep(2 * setting.interval + 0.1)
        if not (d1.all_in("MASTER") and d2.all_in("BACKUP")):
            raise BenchError(f"{impl}: pair not settled: {d1.states()} / {d2.states()}")
    except BaseException:
        stop_pair(d1, d2)
        raise
    return d1, d2


def stop_pair(*daemons: Daemon) -> None:
    for d in daemons:
        d.terminate()
    for d in daemons:
        d.stop(timeout=15)


def one_run(
    bl: BenchLab, impl: Impl, setting: Setting, scenario: Scenario, run: int
) -> dict[str, Any]:
    rundir = bl.workdir / f"{setting.key}-{scenario}-{run}"
    rundir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "impl": impl,
        "setting": setting.key,
        "scenario": scenario,
        "run": run,
    }
    vip = f"{VIP4}/24"
    s1 = [InstanceSpec("VI_1", VRID, MASTER_PRIORITY, vip, setting)]
    s2 = [InstanceSpec("VI_1", VRID, BACKUP_PRIORITY, vip, setting)]
    bl.clean()
    d1, d2 = start_pair(bl, impl, s1, s2, rundir, setting)
    mdi = setting.mdi()
    prober: Prober | None = None
    try:
        baseline = BASELINE + setting.interval
        prober = Prober(bl.lab, rundir / f"{impl}-probe.json", baseline + TAIL + 3 * mdi + 10)
        prober.wait_for("first-reply dir1", 10)
        time.sleep(baseline)
        if scenario == "cut":
            before, after = bl.cut()
            at = before
            result["cut_call"] = after - before
        else:
            at = time.monotonic()
            d1.terminate()
        try:
            prober.wait_for("first-reply dir2", 2 * mdi + 5)
        except BenchError as e:
            result["error"] = f"dir2 never answered: {e}"
        if scenario == "stop":
            code = d1.wait(2 * mdi + 10)
            result["exit"] = code
        time.sleep(TAIL)
        record = prober.finish()
        prober = None
    finally:
        if prober is not None:
            prober.close()
        stop_pair(d1, d2)
        if bl.cut_open:
            bl.restore()
    a = analyse(record.probes, new="dir2", old="dir1", cut=at)
    tl = vrrp_timeline(record.adverts, vrid=VRID, old_src=DIR1_ADDR, new_src=DIR2_ADDR, at=at)
    result.update(
        at=at,
        blackout=a.blackout,
        lost=a.lost,
        lost_after=a.lost_after_start,
        max_gap=a.max_gap,
        per_responder=a.per_responder,
        sent=a.sent,
        duplicates=record.duplicates,
        send_errors=record.send_errors,
        # The fault's phase in the advert cycle, and the blackout split in two.
        phase=None if tl.last_old is None else at - tl.last_old,
        detect=None if tl.first_new is None or tl.last_old is None else tl.first_new - tl.last_old,
        announce=None
        if tl.first_new is None or a.first_new is None
        else a.first_new - tl.first_new,
        # Phase-free: what the blackout is when the cut falls just after an advert (worst case).
        worst=None if tl.last_old is None or a.first_new is None else a.first_new - tl.last_old,
        takeover=None if tl.first_new is None else tl.first_new - at,
        zero_advert=None if tl.old_zero is None else tl.old_zero - at,
        mdi=mdi,
    )
    return result


# ---------------------------------------------------------------- CPU and soak


def measure_cpu(pids: dict[str, int], seconds: float) -> dict[str, dict[str, float]]:
    """CPU % of one core of each process over `seconds` of wall time, and its RSS."""
    t0 = time.monotonic()
    start = {role: cpu_ticks(pid) for role, pid in pids.items()}
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    wall = time.monotonic() - t0
    return {
        role: {
            "cpu_percent": 100.0 * (cpu_ticks(pid) - start[role]) / CLK_TCK / wall,
            "rss_kib": float(rss_kib(pid)),
        }
        for role, pid in pids.items()
    }


def cpu_run(bl: BenchLab, impl: Impl, setting: Setting, seconds: float) -> dict[str, Any]:
    rundir = bl.workdir / f"cpu-{setting.key}"
    rundir.mkdir(parents=True, exist_ok=True)
    vip = f"{VIP4}/24"
    bl.clean()
    d1, d2 = start_pair(
        bl,
        impl,
        [InstanceSpec("VI_1", VRID, MASTER_PRIORITY, vip, setting)],
        [InstanceSpec("VI_1", VRID, BACKUP_PRIORITY, vip, setting)],
        rundir,
        setting,
    )
    # The master's advert timing, seen from the client (probing only twice a second).
    prober: Prober | None = None
    try:
        prober = Prober(bl.lab, rundir / f"{impl}-adverts.json", seconds + 30, interval=0.5)
        prober.wait_for("started", 10)
        pids = {f"master {k}": v for k, v in d1.cpu_pids().items()}
        pids |= {f"backup {k}": v for k, v in d2.cpu_pids().items()}
        figures = measure_cpu(pids, seconds)
        settled = d1.all_in("MASTER") and d2.all_in("BACKUP")
        record = prober.finish()
        prober = None
    finally:
        if prober is not None:
            prober.close()
        stop_pair(d1, d2)
    times = [a.at for a in record.adverts if a.src == DIR1_ADDR and a.vrid == VRID]
    periods = sorted(b - a for a, b in itertools.pairwise(times))
    adverts = {
        "count": len(times),
        "period_median": statistics.median(periods) if periods else None,
        "period_p99": periods[int(0.99 * (len(periods) - 1))] if periods else None,
        "period_max": periods[-1] if periods else None,
        # Gaps past twice the interval: a third of the way to a backup's Master_Down_Interval.
        "gaps_over_2x": sum(1 for x in periods if x > 2 * setting.interval),
    }
    return {
        "impl": impl,
        "setting": setting.key,
        "seconds": seconds,
        "settled": settled,
        "adverts": adverts,
        **figures,
    }


def soak_specs(priority: int, setting: Setting, count: int) -> list[InstanceSpec]:
    # RFC 2544 benchmark range, /32 per instance; it exists only inside the lab.
    return [
        InstanceSpec(f"VI_{n}", n, priority, f"198.18.{n // 256}.{n % 256}/32", setting)
        for n in range(1, count + 1)
    ]


def soak_run(
    bl: BenchLab, impl: Impl, setting: Setting, seconds: float, count: int
) -> dict[str, Any]:
    rundir = bl.workdir / f"soak-{impl}"
    rundir.mkdir(parents=True, exist_ok=True)
    bl.clean()
    t_start = time.monotonic()
    d1, d2 = start_pair(
        bl,
        impl,
        soak_specs(MASTER_PRIORITY, setting, count),
        soak_specs(BACKUP_PRIORITY, setting, count),
        rundir,
        setting,
    )
    settle = time.monotonic() - t_start
    samples: list[dict[str, Any]] = []
    try:
        base = (d1.transitions(), d2.transitions())
        pids = {f"dir1 {k}": v for k, v in d1.cpu_pids().items()}
        pids |= {f"dir2 {k}": v for k, v in d2.cpu_pids().items()}
        ticks0 = {role: cpu_ticks(pid) for role, pid in pids.items()}
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            time.sleep(min(SOAK_SAMPLE, max(0.0, deadline - time.monotonic())))
            if not (d1.alive() and d2.alive()):
                raise BenchError(
                    f"a daemon exited during the soak:\n{d1.log_tail()}\n{d2.log_tail()}"
                )
            now = (d1.transitions(), d2.transitions())
            if now != base or not samples or time.monotonic() >= deadline:
                samples.append({"t": round(time.monotonic() - t0, 1), "transitions": now})
        wall = time.monotonic() - t0
        end = (d1.transitions(), d2.transitions())
        cpu = {
            role: {
                "cpu_percent": 100.0 * (cpu_ticks(pid) - ticks0[role]) / CLK_TCK / wall,
                "rss_kib": float(rss_kib(pid)),
            }
            for role, pid in pids.items()
        }
        final = {
            "dir1_all_master": d1.all_in("MASTER"),
            "dir2_all_backup": d2.all_in("BACKUP"),
        }
    finally:
        stop_pair(d1, d2)
    return {
        "impl": impl,
        "setting": setting.key,
        "instances": count,
        "seconds": wall,
        "settle_seconds": settle,
        "spurious": (end[0] - base[0]) + (end[1] - base[1]),
        "transitions_dir1": end[0] - base[0],
        "transitions_dir2": end[1] - base[1],
        "samples": samples,
        "cpu": cpu,
        **final,
    }


# ---------------------------------------------------------------- report


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def cpu_line(role: str, fig: dict[str, Any], mark: str = "") -> str:
    """One process's CPU and memory line of the report."""
    rss = fig["rss_kib"] / 1024
    return f"  {role:26} {fig['cpu_percent']:6.2f} % of a core, RSS {rss:.1f} MiB{mark}\n"


def stats_ms(values: Sequence[float]) -> str:
    s = summary(values)
    if s is None:
        return "-"
    return f"{s['median'] * 1000:.1f} ({s['min'] * 1000:.1f}-{s['max'] * 1000:.1f})"


def values(results: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in results if r.get(key) is not None and "error" not in r]


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def report(data: dict[str, Any], out: IO[str]) -> None:
    runs: list[dict[str, Any]] = data["runs"]
    impls: list[Impl] = data["impls"]

    def pick(setting: str, scenario: str, impl: str) -> list[dict[str, Any]]:
        return [
            r for r in runs if (r["setting"], r["scenario"], r["impl"]) == (setting, scenario, impl)
        ]

    def line(*cols: str, widths: Sequence[int]) -> None:
        out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip() + "\n")

    def compare(metric: str, title: str) -> None:
        out.write(title)
        w = (9, 7, 7, 24, 24, 6, 8, 6)
        line(
            "setting",
            "MDI",
            "target",
            "director",
            "keepalived",
            "ratio",
            "<=MDI+10",
            "<=1.05",
            widths=w,
        )
        for key in data["settings"]:
            s = SETTINGS[key]
            target = s.mdi() + TARGET_MARGIN
            dr = values(pick(key, "cut", "director"), metric)
            kr = values(pick(key, "cut", "keepalived"), metric)
            failed = any("error" in r for r in pick(key, "cut", "director"))
            if not dr and not kr and not failed:
                continue
            ratio = statistics.median(dr) / statistics.median(kr) if dr and kr else None
            line(
                key,
                fmt_ms(s.mdi()),
                fmt_ms(target),
                stats_ms(dr),
                stats_ms(kr) if "keepalived" in impls else "skipped",
                "-" if ratio is None else f"{ratio:.2f}",
                # A run where the new master never answered is a miss, not a missing value.
                verdict(False if failed else (max(dr) <= target) if dr else None),
                verdict(None if ratio is None else ratio <= TARGET_RATIO),
                widths=w,
            )

    if any(r["scenario"] == "cut" for r in runs):
        compare(
            "blackout",
            "\nVRRP failover, master link cut (switch side), 2 ms UDP probes\n"
            "blackout = cut -> first reply from the new master; ms, median (min-max) of the runs\n",
        )
        compare(
            "worst",
            "\nThe same runs, phase-free: old master's last advert -> first reply from the new\n"
            "master (= the blackout of a cut just after an advert, the worst case; fairer for\n"
            "the ratio)\n",
        )
        out.write(
            "\nBlackout split (medians, ms): phase = cut - old master's last advert; detect =\n"
            "that advert -> new master's first advert (RFC: MDI); announce = that advert ->\n"
            "first reply\n"
        )
        w2 = (9, 11, 8, 8, 9, 8)
        line("setting", "impl", "phase", "detect", "announce", "lost", widths=w2)
        for key in data["settings"]:
            for impl in impls:
                rs = pick(key, "cut", impl)
                if not rs:
                    continue
                med = {
                    k: (statistics.median(v) if (v := values(rs, k)) else None)
                    for k in ("phase", "detect", "announce", "lost")
                }
                line(
                    key,
                    impl,
                    fmt_ms(med["phase"]),
                    fmt_ms(med["detect"]),
                    fmt_ms(med["announce"]),
                    "-" if med["lost"] is None else f"{med['lost']:.0f}",
                    widths=w2,
                )
    if any(r["scenario"] == "stop" for r in runs):
        out.write("\nPlanned stop (SIGTERM to the master): probes lost per run; max reply gap ms\n")
        w3 = (9, 11, 12, 19, 19, 7)
        line("setting", "impl", "lost", "max gap", "handoff", "0 lost", widths=w3)
        for key in data["settings"]:
            for impl in impls:
                rs = pick(key, "stop", impl)
                if not rs:
                    continue
                ok = [r for r in rs if "error" not in r]
                lost = ",".join(str(r["lost"]) for r in ok) or "-"
                line(
                    key,
                    impl,
                    lost,
                    stats_ms(values(rs, "max_gap")),
                    stats_ms(values(rs, "blackout")),
                    verdict(all(r["lost"] == 0 for r in ok) if ok else None)
                    if impl == "director"
                    else "",
                    widths=w3,
                )
    for r in runs:
        if "error" in r:
            out.write(
                f"  error: {r['impl']} {r['setting']} {r['scenario']} #{r['run']}: {r['error']}\n"
            )
    for cpu in data.get("cpu", []):
        if "error" in cpu:
            out.write(f"\nCPU, {cpu['impl']}: error: {cpu['error']}\n")
            continue
        out.write(
            f"\nCPU, {cpu['impl']}, one instance at {cpu['setting']}, {cpu['seconds']:.0f} s:\n"
        )
        adv = cpu.get("adverts") or {}
        if adv.get("period_median") is not None:
            out.write(
                f"  master's adverts seen by the client: {adv['count']}, period median "
                f"{fmt_ms(adv['period_median'])} ms, p99 {fmt_ms(adv['period_p99'])} ms, "
                f"max {fmt_ms(adv['period_max'])} ms, {adv['gaps_over_2x']} gap(s) > 2 intervals\n"
            )
        for role, fig in cpu.items():
            if isinstance(fig, dict) and "cpu_percent" in fig:
                mark = ""
                if cpu["impl"] == "director" and role.startswith("master"):
                    mark = f"  {verdict(fig['cpu_percent'] <= TARGET_CPU)} (<= {TARGET_CPU} %)"
                out.write(cpu_line(role, fig, mark))
    for soak in data.get("soak", []):
        if "error" in soak:
            out.write(f"\nSoak, {soak['impl']}: error: {soak['error']}\n")
            continue
        out.write(
            f"\nSoak, {soak['impl']}: {soak['instances']} instances at {soak['setting']} on eth0, "
            f"{soak['seconds']:.0f} s after a {soak['settle_seconds']:.1f} s settle: "
            f"{soak['spurious']} transitions (dir1 {soak['transitions_dir1']}, "
            f"dir2 {soak['transitions_dir2']})  {verdict(soak['spurious'] == 0)}\n"
        )
        for role, fig in soak["cpu"].items():
            out.write(cpu_line(role, fig))
    for note in data.get("notes", []):
        out.write(f"note: {note}\n")


# ---------------------------------------------------------------- main


def unique_prefix() -> str:
    for _ in range(20):
        prefix = "fb" + secrets.token_hex(2)
        if not any(ns.startswith(prefix + "-") for ns in netns.listnetns()):
            return prefix
    raise BenchError("no free lab prefix")


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {os.cpu_count()} x {cpu}, Linux {platform.release()}"


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the lab is torn down either way.

    Only in this process: pyroute2 forks helpers (to open sockets in a namespace) and ends them
    with SIGTERM; a child that unwound this program's stack would tear the lab down.
    """
    me = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != me:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lab.bench failover",
        description="VRRP failover: director against keepalived in the namespace lab",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS))
    parser.add_argument("--scenarios", default="cut,stop", help="cut, stop or both")
    parser.add_argument("--skip-keepalived", action="store_true")
    parser.add_argument("--cpu-seconds", type=float, default=30.0, help="0: no CPU measurement")
    parser.add_argument("--cpu-setting", default="v3-10ms")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="0: no soak")
    parser.add_argument("--soak-instances", type=int, default=SOAK_INSTANCES)
    parser.add_argument(
        "--soak-impls", default="director", help="director and/or keepalived (comma-separated)"
    )
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--workdir", default=None, help="logs and records (default results/bench)")
    args = parser.parse_args(argv)
    wanted = [s for s in args.settings.split(",") if s]
    unknown = [s for s in [*wanted, args.cpu_setting] if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    args.settings = wanted
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if not set(args.scenarios) <= {"cut", "stop"}:
        parser.error("--scenarios: cut, stop")
    if not 0 <= args.runs <= 50:
        parser.error("--runs must be in 0..50")
    if not 0 <= args.cpu_seconds <= 3600 or not 0 <= args.soak_seconds <= 86400:
        parser.error("--cpu-seconds <= 3600, --soak-seconds <= 86400")
    if not 1 <= args.soak_instances <= 255:
        parser.error("--soak-instances must be in 1..255")
    args.soak_impls = [s for s in args.soak_impls.split(",") if s]
    if not set(args.soak_impls) <= {"director", "keepalived"}:
        parser.error("--soak-impls: director, keepalived")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    impls: list[Impl] = ["director"] if args.skip_keepalived else ["director", "keepalived"]
    soak_impls: list[Impl] = [
        i for i in ("director", "keepalived") if i in args.soak_impls and i in impls
    ]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(args.workdir or f"results/bench/failover-{stamp}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_before": os.getloadavg(),
        "impls": impls,
        "settings": args.settings,
        "runs": [],
        "cpu": [],
        "soak": [],
        "notes": [],
    }
    # A bound for the responders: generous against the planned work.
    budget = 3600 + args.soak_seconds * 2 + args.cpu_seconds * 4 + args.runs * 600
    print(f"failover benchmark: {data['machine']}; logs in {workdir}", flush=True)
    try:
        with terminate_as_interrupt(), Lab(default_topology(unique_prefix())) as lab:
            bl = BenchLab(lab, workdir, budget)
            try:
                for key in args.settings:
                    setting = SETTINGS[key]
                    for scenario in args.scenarios:
                        for run in range(args.runs):
                            for impl in impls:  # alternating: A B A B ...
                                try:
                                    r = one_run(bl, impl, setting, scenario, run)
                                except BenchError as e:
                                    r = {
                                        "impl": impl,
                                        "setting": key,
                                        "scenario": scenario,
                                        "run": run,
                                        "error": str(e),
                                    }
                                data["runs"].append(r)
                                print(
                                    f"  {key:9} {scenario:4} #{run} {impl:10} "
                                    + (
                                        f"error: {r['error'][:100]}"
                                        if "error" in r
                                        else f"blackout {fmt_ms(r['blackout'])} ms, "
                                        f"lost {r['lost']}, max gap {fmt_ms(r['max_gap'])} ms, "
                                        f"detect {fmt_ms(r['detect'])} ms"
                                    ),
                                    flush=True,
                                )
                if args.cpu_seconds > 0:
                    for impl in impls:
                        try:
                            c = cpu_run(bl, impl, SETTINGS[args.cpu_setting], args.cpu_seconds)
                        except BenchError as e:
                            c = {"impl": impl, "setting": args.cpu_setting, "error": str(e)}
                        data["cpu"].append(c)
                        print(f"  cpu {impl}: {json.dumps(c)}", flush=True)
                if args.soak_seconds > 0:
                    for impl in soak_impls:
                        try:
                            s = soak_run(
                                bl,
                                impl,
                                SETTINGS["v3-100ms"],
                                args.soak_seconds,
                                args.soak_instances,
                            )
                        except BenchError as e:
                            s = {"impl": impl, "error": str(e)}
                        data["soak"].append(s)
                        print(f"  soak {impl}: {s.get('spurious', s.get('error'))}", flush=True)
            finally:
                data["notes"] += bl.notes
                bl.close()
    except (LabError, BenchError) as e:
        print(f"failover benchmark: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("failover benchmark: interrupted; the lab is down", file=sys.stderr)
        return 130
    finally:
        data["load_after"] = os.getloadavg()
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        (workdir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    data["notes"].append(
        f"load average {data['load_before'][0]:.2f} before, {data['load_after'][0]:.2f} after"
    )
    report(data, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
