"""`make demo`: a live VRRP failover on the built-in lab, measured from the client's side.

Two directors (dir1 priority 150, dir2 priority 100) share the VIP 192.0.2.100 with VRRPv3 at
100 ms. Both run a UDP echo responder that names itself in every reply; the client probes the
VIP every 2 ms. The demo cuts dir1's cable, restores it, then stops dir1 cleanly, and reports
who answered and how long the VIP was silent each time. Everything is torn down at the end,
also on failure or Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from lab.core import Lab
from lab.daemons import Director, director_config, holds, vrrp_instance, wait_for
from lab.probe import Analysis, ProbeRecord, analyse
from lab.topology import VIP4, default_topology

PORT = 9999
INTERVAL = 0.002
# RFC 5798: Master_Down_Interval of the backup (priority 100) at 100 ms adverts.
MASTER_DOWN = 3 * 0.1 + (256 - 100) / 256 * 0.1
PROBE = [sys.executable, "-m", "lab.probe"]


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Phase:
    name: str
    analysis: Analysis


@contextmanager
def responder(lab: Lab, node: str, logs: Path) -> Iterator[subprocess.Popen[str]]:
    proc = lab.popen(
        node,
        [*PROBE, "respond", "--name", node, "--port", str(PORT), "--max-seconds", "600"],
        stdout=subprocess.PIPE,
        stderr=(logs / f"{node}-responder.log").open("w"),
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"echo responder in {node} did not start: {line!r}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


class Prober:
    """Probes the VIP from the client until stopped; the record is analysed afterwards."""

    def __init__(self, lab: Lab, out: Path) -> None:
        self.out = out
        self.proc = lab.popen(
            "client",
            [
                *PROBE,
                "probe",
                "--to",
                f"{VIP4}:{PORT}",
                "--interval",
                str(INTERVAL),
                "--duration",
                "60",
                "--json",
                str(out),
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.started = threading.Event()
        self.answered = threading.Event()
        # A thread reads the prober's events: select() on a buffered pipe misses lines that
        # an earlier readline() already pulled into the buffer.
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        if not self.started.wait(timeout=10):
            raise RuntimeError("prober did not start")

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("started"):
                self.started.set()
            elif line.startswith("first-reply"):
                self.answered.set()

    def finish(self) -> ProbeRecord:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return ProbeRecord.load(self.out)


def phase(
    lab: Lab, logs: Path, name: str, new: str, act: Callable[[], None], settle: Callable[[], None]
) -> Phase:
    """Probe while `act` happens (its instant is the cut), until `settle` returns, then a
    little longer so the new responder's replies are on record."""
    prober = Prober(lab, logs / f"{name}.json")
    try:
        if not prober.answered.wait(timeout=5):
            raise RuntimeError(f"{name}: the VIP did not answer the client")
        cut = time.monotonic()
        act()
        settle()
        time.sleep(0.3)  # a few more probes to see the new responder answer steadily
    finally:
        record = prober.finish()
    return Phase(name, analyse(record.probes, new=new, cut=cut))


def main() -> int:
    if os.geteuid() != 0:
        say("make demo needs root (network namespaces, raw sockets); run it as root.")
        return 1
    logs = Path(tempfile.mkdtemp(prefix="director-demo-"))
    say("director demo: VRRP failover on the built-in lab (network namespaces on this machine)")
    say(f"logs: {logs}")
    phases: list[Phase] = []
    Lab(default_topology("demo")).down()  # what an interrupted earlier demo may have left
    with ExitStack() as stack:
        lab = stack.enter_context(Lab(default_topology("demo")))
        say("[1/5] lab up: client, dir1, dir2, rs1-3 on lan 192.0.2.0/24 (and backend, remote)")
        directors: dict[str, Director] = {}
        for node, prio in (("dir1", 150), ("dir2", 100)):
            cfg = director_config(logs, node, [vrrp_instance(prio, f"{VIP4}/24")])
            directors[node] = Director(lab, node, cfg, logs / f"{node}.log")
            stack.callback(directors[node].kill)
            stack.enter_context(responder(lab, node, logs))
        d1, d2 = directors["dir1"], directors["dir2"]
        wait_for("dir1 MASTER", lambda: d1.state() == "MASTER" and d2.state() == "BACKUP")
        wait_for("VIP on dir1", lambda: holds(lab, "dir1", f"{VIP4}/24"))
        say(
            f"[2/5] directors up: dir1 MASTER (priority 150), dir2 BACKUP (priority 100); "
            f"VIP {VIP4} on dir1"
        )

        cut = phase(
            lab,
            logs,
            "link-cut",
            "dir2",
            act=lambda: lab.set_link("dir1", "eth0", up=False),
            settle=lambda: wait_for("dir2 MASTER", lambda: d2.state() == "MASTER"),
        )
        phases.append(cut)
        say(
            f"[3/5] cut dir1's cable: dir2 took over; the client is answered by dir2 "
            f"({_who(cut)}); blackout {_ms(cut.analysis.blackout)}"
        )

        back = phase(
            lab,
            logs,
            "preemption",
            "dir1",
            act=lambda: lab.set_link("dir1", "eth0", up=True),
            settle=lambda: wait_for("dir1 MASTER", lambda: d1.state() == "MASTER"),
        )
        phases.append(back)
        say(
            f"[4/5] cable back: dir1 (higher priority) preempted; answered by "
            f"{_who(back)}; switch-over gap {_ms(back.analysis.blackout)}"
        )

        planned = phase(
            lab,
            logs,
            "planned-stop",
            "dir2",
            act=lambda: d1.proc.send_signal(signal.SIGTERM),
            settle=lambda: wait_for("dir2 MASTER", lambda: d2.state() == "MASTER"),
        )
        phases.append(planned)
        code = d1.proc.wait(timeout=30)
        say(
            f"[5/5] planned stop of dir1 (exit {code}), make-before-break handoff: "
            f"{planned.analysis.lost_after_start} probes lost, answered by {_who(planned)}"
        )
        assert d2.stop() == 0
    say()
    say("summary (client -> VIP, UDP probe every 2 ms)")
    say(f"  {'event':<14} {'new master answers after':>25} {'probes lost':>12}  reference")
    refs = {
        "link-cut": f"RFC Master_Down_Interval {MASTER_DOWN * 1000:.0f} ms",
        "preemption": "the old master answers meanwhile",
        "planned-stop": "keepalived loses Skew_Time (about 61 ms)",
    }
    for p in phases:
        a = p.analysis
        say(f"  {p.name:<14} {_ms(a.blackout):>25} {a.lost_after_start:>12}  {refs[p.name]}")
    say("lab torn down.")
    return 0


def _who(p: Phase) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(p.analysis.per_responder.items()))


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


if __name__ == "__main__":
    sys.exit(main())
