"""Health-check benchmark: how many checks a second one core sustains, and CPU per check
against keepalived's checker, in the same invocation.

Part 1, on the host, loopback only. N real servers are N listening sockets on 127.77.x.y (one
`targets` process pinned to CPU 1, answering HTTP or accepting TCP). The checker (the director's
HealthRunner on the daemon's event loop, `checker` role) is pinned to CPU 0 and checks every one
of them every `--interval` with a new connection each. For each N of a rising series it
measures, after a warm-up, the schedule lag (how late each check starts against its due time)
and its CPU. Reported: the highest N whose worst lag stays under 10 % of the interval.

Part 2, in the VM (keepalived's checker needs IPVS, which the host kernel lacks): one boot runs
`vm-compare`, which starts `--vm-servers` targets and then, alternating, `keepalived -C` and the
director's checker on the same targets with the same interval and checker, pinned alike. CPU
of each checker process comes from /proc/PID/stat over the same window; checks are counted by
the targets (connections served), so both sides are counted alike. Reported: CPU per check of
each and their ratio (director / keepalived; the target is <= 1). Absolute times under TCG mean
little; the ratio is the figure.

    python -m lab.bench health [--kinds http,tcp] [--counts 2000,4000,...] [--interval 1]
        [--warmup 3] [--seconds 5] [--vm-servers 300] [--vm-seconds 20] [--vm-rounds 2]
        [--skip-vm] [--json OUT]

Every process is pinned, bounded in time and ended by its pid; every loop is bounded in count.
Nothing is asserted: figures and PASS/MISS against the targets are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from lab.bench.failover import BenchError, end_process
from lab.vm import CHECKOUT, VmError, VmSetupError, run_in_vm

CLK_TCK = os.sysconf("SC_CLK_TCK")
BASE = "127.77"  # the targets' addresses: 127.77.0.1 ... (loopback only)
PER_OCTET = 250
MAX_TARGETS = 60_000
PORT = 18_080
CHECKER_CPU, TARGETS_CPU = "0", "1"
TARGET_RATE = {"http": 5000, "tcp": 10_000}  # checks per second on one core (issue 5)
LAG_SHARE = 0.10  # of the interval
DISTURBED = 0.10  # other processes' share of the checker's CPU that voids a trial
ATTEMPTS = 3  # per N, while other work disturbs the trials
DEFAULT_COUNTS = (2000, 4000, 6000, 8000, 10_000, 12_000, 14_000, 16_000)
NOFILE = 70_000
HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
MAX_SECONDS = 3600.0


def address(i: int) -> str:
    return f"{BASE}.{i // PER_OCTET}.{i % PER_OCTET + 1}"


def raise_nofile() -> None:
    """Room for tens of thousands of sockets (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


# ---------------------------------------------------------------- targets role


def serve_targets(mode: str, count: int, port: int, max_seconds: float) -> int:
    """`count` listeners on 127.77.x.y:port in one epoll loop, as lean as Python gets: HTTP
    answers one canned response and closes; TCP accepts and closes. SIGUSR1 prints `served N`.
    """
    raise_nofile()
    served = 0
    ep = select.epoll()
    listeners: dict[int, socket.socket] = {}
    conns: dict[int, socket.socket] = {}
    for i in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address(i), port))
        sock.listen(1024)
        sock.setblocking(False)
        listeners[sock.fileno()] = sock
        ep.register(sock.fileno(), select.EPOLLIN)

    def report(_sig: int, _frame: FrameType | None) -> None:
        print(f"served {served}", flush=True)

    signal.signal(signal.SIGUSR1, report)
    print(f"ready {count}", flush=True)
    end = time.monotonic() + max_seconds
    while time.monotonic() < end:
        for fd, _ in ep.poll(1.0):
            listener = listeners.get(fd)
            if listener is None:
                conn = conns.pop(fd)
                with contextlib.suppress(OSError):
                    if conn.recv(4096):
                        conn.send(HTTP_REPLY)
                ep.unregister(fd)
                conn.close()
                served += 1
                continue
            for _ in range(64):
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        break
                    raise
                if mode == "tcp":
                    conn.close()
                    served += 1
                else:
                    conn.setblocking(False)
                    conns[conn.fileno()] = conn
                    ep.register(conn.fileno(), select.EPOLLIN)
    return 0


# ---------------------------------------------------------------- checker role


def run_checker(
    kind: str,
    count: int,
    port: int,
    interval: float,
    max_seconds: float,
    slack: float | None = None,
    plain_loop: bool = False,
) -> int:
    """The director's HealthRunner on the daemon's loop, checking `count` targets. Prints
    `started`; SIGUSR1 starts a window (stats reset), SIGUSR2 ends it with a JSON line."""
    from director import loop as precise_loop
    from director.config.models import Service
    from director.health.runner import HealthRunner, RunnerStats

    raise_nofile()
    service = Service.model_validate(
        {
            "name": "bench",
            "vip": "10.255.255.1",
            "port": port,
            "check": {kind: {}, "interval": interval, "timeout": interval},
            "real_servers": [{"address": address(i)} for i in range(count)],
        }
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner = HealthRunner([service], lambda *_: None, slack=slack)
        done = asyncio.Event()
        started = [time.process_time(), loop.time()]

        def begin() -> None:
            runner.stats = RunnerStats()
            started[:] = [time.process_time(), loop.time()]

        def end() -> None:
            cpu, wall = time.process_time() - started[0], loop.time() - started[1]
            stats = runner.stats.as_dict()
            up = sum(1 for w in runner.weights("bench").values() if w)
            figures = {**stats, "failures": stats["failed"], "cpu": cpu, "wall": wall, "up": up}
            print("window " + json.dumps(figures), flush=True)

        loop.add_signal_handler(signal.SIGUSR1, begin)
        loop.add_signal_handler(signal.SIGUSR2, end)
        loop.add_signal_handler(signal.SIGTERM, done.set)
        runner.start()
        print("started", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), max_seconds)
        await runner.stop()

    if plain_loop:
        asyncio.run(main())
    else:
        precise_loop.run(main())
    return 0


# ---------------------------------------------------------------- orchestration helpers


class Lines:
    """A child's stdout lines, consumed in order, read with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.lines: list[str] = []

    def next(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            while self.lines:
                line = self.lines.pop(0)
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {prefix!r} line within {timeout:.0f}s")
            readable, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise BenchError(f"process ended before a {prefix!r} line")
                self.buffer += chunk
                *done, self.buffer = self.buffer.split(b"\n")
                self.lines += [line.decode(errors="replace") for line in done]


class Child:
    def __init__(self, argv: list[str], cpu: str | None, log: IO[bytes] | None = None) -> None:
        pinned = ["taskset", "-c", cpu, *argv] if cpu is not None else argv
        self.proc = subprocess.Popen(
            pinned,
            stdout=subprocess.PIPE,
            stderr=log if log is not None else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            cwd=CHECKOUT,
        )
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        end_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def me(*role: str) -> list[str]:
    return [sys.executable, "-m", "lab.bench.health", *role]


class Targets(Child):
    def __init__(self, mode: str, count: int, port: int) -> None:
        argv = me("targets", "--mode", mode, "--count", str(count), "--port", str(port))
        super().__init__(argv, TARGETS_CPU)
        self.port = port
        self.lines.next("ready", 120)

    def served(self) -> int:
        self.signal(signal.SIGUSR1)
        return int(self.lines.next("served", 30).split()[1])


def free_port(count: int) -> int:
    """A port free on the first and last target address (others are assumed alike)."""
    for port in range(PORT, PORT + 200):
        try:
            for i in (0, count - 1):
                with socket.socket() as sock:
                    sock.bind((address(i), port))
        except OSError:
            continue
        return port
    raise BenchError("no free port for the targets")


# ---------------------------------------------------------------- a quiet machine


def cpu_sample() -> dict[str, tuple[int, int]]:
    """Per CPU (`cpu0`, ...): (idle + iowait ticks, all ticks), from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(f) for f in fields]
            out[name] = (ticks[3] + ticks[4], sum(ticks))
    return out


def busy_shares(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    shares = {}
    for name, (idle, total) in after.items():
        d_total = total - before[name][1]
        if d_total > 0:
            shares[name] = 1 - (idle - before[name][0]) / d_total
    return shares


def busy_share(seconds: float = 1.0) -> float:
    """The busiest CPU's non-idle share over `seconds`."""
    before = cpu_sample()
    time.sleep(seconds)
    return max(busy_shares(before, cpu_sample()).values(), default=0.0)


def wait_for_quiet(limit: float, threshold: float = 0.15) -> float:
    """Wait (at most `limit` seconds) until no CPU is busier than `threshold`: other people's
    work on a shared machine makes a pinned checker wait for the CPU, which is not the
    checker's lag. Returns the busiest CPU's share when the trial starts."""
    deadline = time.monotonic() + limit
    while True:
        share = busy_share()
        if share <= threshold or time.monotonic() > deadline:
            return share


# ---------------------------------------------------------------- part 1: rate and lag


@dataclass
class Trial:
    kind: str
    count: int
    checks_per_s: float
    cpu_percent: float
    cpu_per_check_us: float
    lag_max_ms: float
    lag_p99_ms: float
    lag_mean_ms: float
    failures: int
    passed: bool
    busy_before: float  # the busiest CPU's share just before (other people's work)
    others: float  # share of the checker's CPU used by other processes during the window
    attempts: int = 1

    @property
    def disturbed(self) -> bool:
        return self.others > DISTURBED


def trial(
    kind: str, count: int, interval: float, warmup: float, seconds: float, quiet: float
) -> Trial:
    quiet_share = wait_for_quiet(quiet)
    port = free_port(count)
    targets = Targets(kind, count, port)
    checker: Child | None = None
    try:
        argv = me("checker", "--kind", kind, "--count", str(count), "--port", str(port))
        checker = Child([*argv, "--interval", str(interval)], CHECKER_CPU)
        checker.lines.next("started", 120)
        time.sleep(warmup)
        checker.signal(signal.SIGUSR1)
        before = cpu_sample()
        time.sleep(seconds)
        checker.signal(signal.SIGUSR2)
        after = cpu_sample()
        window = json.loads(checker.lines.next("window", 60).split(" ", 1)[1])
    finally:
        if checker is not None:
            checker.stop()
        targets.stop()
    finished = window["finished"]
    lag_max = window["lag_max"]
    # What ran on the checker's CPU besides the checker: other people's work there makes the
    # checker wait for its CPU, which the lag would then wrongly charge to it.
    busy = busy_shares(before, after).get(f"cpu{CHECKER_CPU}", 0.0)
    others = max(0.0, busy - window["cpu"] / window["wall"])
    return Trial(
        kind=kind,
        count=count,
        checks_per_s=finished / window["wall"],
        cpu_percent=100 * window["cpu"] / window["wall"],
        cpu_per_check_us=1e6 * window["cpu"] / max(1, finished),
        lag_max_ms=1000 * lag_max,
        lag_p99_ms=1000 * window["lag_p99"],
        lag_mean_ms=1000 * window["lag_mean"],
        failures=window["failures"],
        passed=lag_max < LAG_SHARE * interval and window["failures"] == 0,
        busy_before=quiet_share,
        others=others,
    )


def rate_series(
    kind: str,
    counts: Sequence[int],
    interval: float,
    warmup: float,
    seconds: float,
    quiet: float,
) -> list[Trial]:
    trials: list[Trial] = []
    for count in counts:
        for attempt in range(1, ATTEMPTS + 1):
            result = trial(kind, count, interval, warmup, seconds, quiet)
            result.attempts = attempt
            if not result.disturbed:
                break
            print(f"  (N={count}: disturbed by other work, {100 * result.others:.0f} %; again)")
        trials.append(result)
        print(trial_line(result), flush=True)
        if not result.passed:
            break
    return trials


def trial_line(t: Trial) -> str:
    verdict = "ok" if t.passed else "over"
    return (
        f"  {t.kind:4} N={t.count:6}  {t.checks_per_s:8.0f} checks/s  CPU {t.cpu_percent:5.1f} %"
        f"  {t.cpu_per_check_us:5.1f} us/check  lag max {t.lag_max_ms:7.1f} ms"
        f"  p99 <= {t.lag_p99_ms:6.1f} ms  mean {t.lag_mean_ms:6.2f} ms"
        f"  failures {t.failures}  {verdict}  (others on CPU {CHECKER_CPU}:"
        f" {100 * t.others:.0f} %{', DISTURBED' if t.disturbed else ''})"
    )


# ---------------------------------------------------------------- part 2: against keepalived


def keepalived_conf(kind: str, count: int, port: int, interval: float) -> str:
    if kind == "http":
        checker = (
            "HTTP_GET {\n      url {\n        path /\n        status_code 200\n      }\n"
            f"      connect_timeout {interval:g}\n      retry 0\n    }}"
        )
    else:
        checker = f"TCP_CHECK {{\n      connect_timeout {interval:g}\n      retry 0\n    }}"
    servers = "".join(
        f"  real_server {address(i)} {port} {{\n    weight 1\n    {checker}\n  }}\n"
        for i in range(count)
    )
    return (
        "global_defs {\n  router_id bench\n}\n"
        f"virtual_server 10.255.255.1 {port} {{\n  delay_loop {interval:g}\n  lb_algo rr\n"
        f"  lb_kind DR\n  protocol TCP\n{servers}}}\n"
    )


def user_system(pid: int) -> tuple[int, int]:
    """utime and stime of a process, in clock ticks (fields 14 and 15 of stat(5))."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])


def measure(targets: Targets, pid: int, warmup: float, seconds: float) -> dict[str, float]:
    """CPU of `pid` (user and system) and connections served over a window, after a warm-up."""
    time.sleep(warmup)
    (user0, sys0), served0, t0 = user_system(pid), targets.served(), time.monotonic()
    time.sleep(seconds)
    (user1, sys1), served1, t1 = user_system(pid), targets.served(), time.monotonic()
    checks = served1 - served0
    user, system = (user1 - user0) / CLK_TCK, (sys1 - sys0) / CLK_TCK
    return {
        "checks": checks,
        "seconds": t1 - t0,
        "cpu": user + system,
        "user": user,
        "system": system,
        "cpu_per_check_us": 1e6 * (user + system) / max(1, checks),
    }


def keepalived_run(
    targets: Targets,
    kind: str,
    count: int,
    interval: float,
    timing: tuple[float, float],
    work: Path,
) -> dict[str, float]:
    conf = work / f"keepalived-{kind}.conf"
    conf.write_text(keepalived_conf(kind, count, targets.port, interval))
    pidfile, checkers = work / "keepalived.pid", work / "checkers.pid"
    for stale in (pidfile, checkers):
        stale.unlink(missing_ok=True)
    log = (work / f"keepalived-{kind}.log").open("ab")
    argv = ["keepalived", "-C", "-n", "-l", "-f", str(conf), "-p", str(pidfile)]
    parent = Child([*argv, "-c", str(checkers)], CHECKER_CPU, log)
    log.close()
    try:
        deadline = time.monotonic() + 60
        while not (checkers.exists() and checkers.read_text().strip()):
            if time.monotonic() > deadline or parent.proc.poll() is not None:
                raise BenchError(f"keepalived -C did not start its checker (see {log.name})")
            time.sleep(0.05)
        pid = int(checkers.read_text().split()[0])
        return measure(targets, pid, *timing)
    finally:
        parent.stop()


def director_run(
    targets: Targets,
    kind: str,
    count: int,
    interval: float,
    timing: tuple[float, float],
    extra: Sequence[str] = (),
) -> dict[str, float]:
    argv = me("checker", "--kind", kind, "--count", str(count), "--port", str(targets.port))
    checker = Child([*argv, "--interval", str(interval), *extra], CHECKER_CPU)
    try:
        checker.lines.next("started", 300)
        return measure(targets, checker.pid, *timing)
    finally:
        checker.stop()


def vm_compare(
    kinds: Sequence[str],
    count: int,
    interval: float,
    warmup: float,
    seconds: float,
    rounds: int,
    work: Path,
    extra: Sequence[str] = (),
) -> int:
    """Runs inside the VM: keepalived -C and the director's checker, alternating."""
    raise_nofile()
    subprocess.run(["modprobe", "ip_vs"], check=True, timeout=60)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False, timeout=30)
    out: dict[str, Any] = {"count": count, "interval": interval, "runs": []}
    for kind in kinds:
        targets = Targets(kind, count, free_port(count))
        timing = (warmup, seconds)
        try:
            for n in range(rounds):
                for impl in ("keepalived", "director"):
                    if impl == "keepalived":
                        fig = keepalived_run(targets, kind, count, interval, timing, work)
                    else:
                        fig = director_run(targets, kind, count, interval, timing, extra)
                    run = {"kind": kind, "impl": impl, "round": n, **fig}
                    out["runs"].append(run)
                    print("run " + json.dumps(run), flush=True)
        finally:
            targets.stop()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def compare_vm(args: argparse.Namespace) -> dict[str, Any]:
    rwdir = Path(tempfile.mkdtemp(prefix="health-bench-", dir="/tmp"))
    try:
        argv = me(
            "vm-compare",
            "--kinds",
            ",".join(args.kinds),
            "--count",
            str(args.vm_servers),
            "--interval",
            str(args.interval),
            "--warmup",
            str(args.vm_warmup),
            "--seconds",
            str(args.vm_seconds),
            "--rounds",
            str(args.vm_rounds),
            "--work",
            str(rwdir),
        )
        result = run_in_vm(argv, rwdir=rwdir, timeout=args.vm_timeout, cwd=CHECKOUT)
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        if result.returncode != 0 or not lines:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise BenchError(f"vm-compare failed (exit {result.returncode}):\n{tail}")
        data: dict[str, Any] = json.loads(lines[-1].split(" ", 1)[1])
        data["boot_seconds"] = result.boot_seconds
        return data
    finally:
        shutil.rmtree(rwdir, ignore_errors=True)


def summarise_vm(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind in sorted({run["kind"] for run in data["runs"]}):
        runs = {
            impl: [r for r in data["runs"] if r["kind"] == kind and r["impl"] == impl]
            for impl in ("director", "keepalived")
        }
        per = {impl: [r["cpu_per_check_us"] for r in rs] for impl, rs in runs.items()}
        rate = {
            impl: statistics.median(r["checks"] / r["seconds"] for r in rs)
            for impl, rs in runs.items()
        }
        director = statistics.median(per["director"])
        keepalived = statistics.median(per["keepalived"])
        rows.append(
            {
                "kind": kind,
                "director_us": director,
                "keepalived_us": keepalived,
                "ratio": director / keepalived if keepalived else float("inf"),
                "director_runs": per["director"],
                "keepalived_runs": per["keepalived"],
                "director_checks_per_s": rate["director"],
                "keepalived_checks_per_s": rate["keepalived"],
            }
        )
    return rows


# ---------------------------------------------------------------- report


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def report(args: argparse.Namespace, series: dict[str, list[Trial]], vm: Any) -> str:
    lines = [f"Health-check benchmark ({machine()})"]
    if any(t.disturbed for trials in series.values() for t in trials):
        lines.append(
            "  note: other work shared the checker's CPU in trials marked DISTURBED (after"
            f" {ATTEMPTS} attempts); their lag is the wait for the CPU, not the checker's"
        )
    lines.append(
        f"\nPart 1, host loopback: checker on CPU {CHECKER_CPU}, targets on CPU {TARGETS_CPU}, "
        f"interval {args.interval:g}s, a new connection per check, {args.seconds:g}s windows"
    )
    for kind, trials in series.items():
        lines.append(f"\n{kind.upper()}:")
        lines += [trial_line(t) for t in trials]
        best = max((t for t in trials if t.passed), key=lambda t: t.count, default=None)
        sustained = best.checks_per_s if best else 0.0
        target = TARGET_RATE[kind]
        top = f"N={best.count}" if best else "none"
        limit = f"{LAG_SHARE * args.interval * 1000:.0f} ms"
        cap = "" if len(trials) == 0 or not trials[-1].passed else " (the series' largest N)"
        lines.append(
            f"  highest N with lag < {limit}: {top}{cap}, {sustained:.0f} checks/s on one core;"
            f" target >= {target}: {'PASS' if sustained >= target else 'MISS'}"
        )
    if vm is None:
        lines.append("\nPart 2 (keepalived -C in the VM): skipped")
    elif isinstance(vm, str):
        lines.append(f"\nPart 2 (keepalived -C in the VM): error: {vm}")
    else:
        lines.append(
            f"\nPart 2, VM (TCG, Debian kernel with IPVS, boot {vm['boot_seconds']:.0f}s): "
            f"{vm['count']} real servers at {vm['interval']:g}s, both checkers on CPU "
            f"{CHECKER_CPU}, targets on CPU {TARGETS_CPU}, alternating, median of runs"
            f" (busiest host CPU before: {100 * vm.get('busy_before', 0):.0f} %)"
        )
        for row in summarise_vm(vm):
            verdict = "PASS" if row["ratio"] <= 1.0 else "MISS"
            lines.append(
                f"  {row['kind'].upper():4}  director {row['director_us']:6.0f} us/check"
                f" ({row['director_checks_per_s']:.0f}/s)   keepalived"
                f" {row['keepalived_us']:6.0f} us/check ({row['keepalived_checks_per_s']:.0f}/s)"
                f"   ratio {row['ratio']:.2f}  target <= 1: {verdict}"
            )
            runs = ", ".join(
                f"{d:.0f}/{k:.0f}"
                for d, k in zip(row["director_runs"], row["keepalived_runs"], strict=False)
            )
            lines.append(f"        runs (director/keepalived us): {runs}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def _csv_ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x]
    if not values or any(not 0 < v <= MAX_TARGETS for v in values):
        raise argparse.ArgumentTypeError(f"counts between 1 and {MAX_TARGETS}")
    return values


def _kinds(text: str) -> list[str]:
    kinds = [k for k in text.split(",") if k]
    if not kinds or any(k not in TARGET_RATE for k in kinds):
        raise argparse.ArgumentTypeError("kinds: http and/or tcp")
    return kinds


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    role = argv[0] if argv and argv[0] in ("targets", "checker", "vm-compare") else "run"
    if role != "run":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="python -m lab.bench health", description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    if role == "targets":
        parser.add_argument("--mode", choices=["http", "tcp"], required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--port", type=int, required=True)
        args = parser.parse_args(argv)
        return serve_targets(args.mode, min(args.count, MAX_TARGETS), args.port, args.max_seconds)
    if role == "checker":
        parser.add_argument("--kind", choices=["http", "tcp"], required=True)
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--interval", type=float, default=1.0)
        parser.add_argument("--slack", type=float, help="override the runner's grouping slack")
        parser.add_argument(
            "--plain-loop", action="store_true", help="asyncio's loop, not the daemon's"
        )
        args = parser.parse_args(argv)
        count = min(args.count, MAX_TARGETS)
        return run_checker(
            args.kind,
            count,
            args.port,
            args.interval,
            args.max_seconds,
            args.slack,
            args.plain_loop,
        )
    parser.add_argument("--kinds", type=_kinds, default=["http", "tcp"])
    parser.add_argument("--interval", type=float, default=1.0)
    if role == "vm-compare":
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--warmup", type=float, default=5.0)
        parser.add_argument("--seconds", type=float, default=20.0)
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--work", type=Path, required=True)
        parser.add_argument("--director-args", default="", help="extra checker options")
        args = parser.parse_args(argv)
        rounds = max(1, min(args.rounds, 10))
        return vm_compare(
            args.kinds,
            args.count,
            args.interval,
            args.warmup,
            args.seconds,
            rounds,
            args.work,
            args.director_args.split(),
        )
    parser.add_argument("--counts", type=_csv_ints, default=list(DEFAULT_COUNTS))
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--vm-servers", type=int, default=300)
    parser.add_argument("--vm-warmup", type=float, default=8.0)
    parser.add_argument("--vm-seconds", type=float, default=20.0)
    parser.add_argument("--vm-rounds", type=int, default=2)
    parser.add_argument("--vm-timeout", type=float, default=1200.0)
    parser.add_argument("--skip-vm", action="store_true")
    parser.add_argument("--skip-host", action="store_true")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=600.0,
        help="wait up to this long before each trial for the CPUs to be idle",
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every child is stopped by its pid on the way out.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    for tool in ("taskset",) + (() if args.skip_vm else ("keepalived",)):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install util-linux keepalived", file=sys.stderr)
            return 2
    series: dict[str, list[Trial]] = {}
    if not args.skip_host:
        print(f"Part 1 ({machine()}):", flush=True)
        for kind in args.kinds:
            series[kind] = rate_series(
                kind, args.counts, args.interval, args.warmup, args.seconds, args.quiet_wait
            )
    vm: Any = None
    if not args.skip_vm:
        print("Part 2: booting the VM for keepalived -C ...", flush=True)
        busy = wait_for_quiet(args.quiet_wait)
        try:
            vm = compare_vm(args)
            vm["busy_before"] = busy
        except (BenchError, VmError, VmSetupError) as exc:
            vm = str(exc)
    text = report(args, series, vm)
    print("\n" + text, end="")
    if args.json is not None:
        figures = {
            "machine": machine(),
            "series": {k: [asdict(t) for t in v] for k, v in series.items()},
            "vm": vm if not isinstance(vm, dict) else {**vm, "summary": summarise_vm(vm)},
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
