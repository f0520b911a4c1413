"""IPVS programming benchmark: the director's kernel access against ipvsadm, in one VM boot.

The host kernel has no IPVS, so the host side boots the VM lab (lab.vm) and runs the inner part
there, in a network namespace of its own:

- cold apply of N services x R real servers (default 1,000 and 10,000 x 4): the director's
  whole step (build the desired table, dump, plan, apply in batches) against `ipvsadm-restore`
  of the same rules, in alternating pairs (director, ipvsadm-restore, director, ...), the
  table flushed before every run; the ratio of each pair and their median;
- no-change resync on the largest table: dump + plan (which must come out empty) against
  `ipvsadm -Ln` with its output read through a pipe, also in alternating pairs;
- one real server's weight changed: the plan has one operation and it goes out in one sendmsg.

Under TCG absolute times mean little (LAB.md: the same command swings 2-3x between runs), so
every figure is set against the C tool run in the same boot and the verdict is on the median
ratio. Both sides' results are checked outside the timed part (the director's table and
ipvsadm-restore's are dumped and compared with the desired one). Nothing is asserted as a
test; the exit status is 0 when everything could be measured.

    python -m lab.bench ipvs [--sizes 1000,10000] [--pairs 3,2] [--reals 4]
        [--resync-pairs 2] [--timeout 2400] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

IN_VM_ENV = "DIRECTOR_IN_VM"
TARGET_COLD = 1.0  # director / ipvsadm-restore
TARGET_RESYNC = 1.5  # director dump + plan / ipvsadm -Ln
NETNS_PREFIX = "dbench-ipvs"
DEFAULT_RWDIR = Path(__file__).resolve().parent.parent.parent / "results" / "bench" / "ipvs"
# Bounds for the C tools; far above what 10,000 x 4 took under TCG (LAB.md: up to 30 s).
COMMAND_TIMEOUT = 600.0


@dataclass
class Pair:
    director: float
    baseline: float

    @property
    def ratio(self) -> float:
        return self.director / self.baseline


@dataclass
class SizeResult:
    services: int
    reals: int
    ops: int
    batches: int
    pairs: list[Pair] = field(default_factory=list)

    @property
    def median_ratio(self) -> float:
        return statistics.median(p.ratio for p in self.pairs)


@dataclass
class Results:
    kernel: str
    python: str
    cpu: str
    cold: list[SizeResult] = field(default_factory=list)
    resync: list[Pair] = field(default_factory=list)
    resync_dump: list[float] = field(default_factory=list)
    resync_plan: list[float] = field(default_factory=list)
    resync_services: int = 0
    change_ops: int = 0
    change_batches: int = 0
    change_seconds: float = 0.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------- inside the VM


def build_table(services: int, reals: int) -> dict[Any, Any]:
    """TCP services on 10.0.0.0/8 port 80, wrr, each with real servers of its own (DR, weight
    1, port 80: ipvsadm gives a DR real server the service's port whatever it is told)."""
    from director.ipvs.model import FWD_DROUTE, DestKey, DestSpec, Service, ServiceKey, ServiceSpec

    table = {}
    for i in range(services):
        vip = f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        key = ServiceKey(socket.AF_INET, socket.IPPROTO_TCP, vip, 80)
        dests = {}
        for k in range(i * reals, (i + 1) * reals):
            rip = f"172.{16 + k // 62500}.{k // 250 % 250}.{k % 250 + 1}"
            dests[DestKey(rip, 80)] = DestSpec(FWD_DROUTE, 1)
        table[key] = Service(key, ServiceSpec("wrr"), dests)
    return table


def restore_text(table: dict[Any, Any]) -> str:
    """The same rules as ipvsadm-restore input (the format `ipvsadm -S -n` writes)."""
    lines = []
    for key, service in table.items():
        vip = f"{key.address}:{key.port}"
        lines.append(f"-A -t {vip} -s {service.spec.scheduler}")
        for dest, spec in service.dests.items():
            lines.append(f"-a -t {vip} -r {dest.address}:{dest.port} -g -w {spec.weight}")
    return "\n".join(lines) + "\n"


def _in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    # nsenter is setns + exec: no mount namespace or /sys remount as `ip netns exec` does.
    return ["nsenter", f"--net=/var/run/netns/{netns}", *argv]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def inner(args: argparse.Namespace) -> int:
    from pyroute2 import netns as pr_netns

    from director.ipvs.kernel import IpvsKernel
    from director.ipvs.plan import plan

    cmdline = Path("/proc/cmdline").read_text()
    if "virtme" not in cmdline:
        print("lab.bench.ipvs: refusing to program IPVS outside the VM lab", file=sys.stderr)
        return 2
    subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_wrr"], check=True, timeout=60)
    name = f"{NETNS_PREFIX}-{os.getpid()}"
    pr_netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=60)
        with IpvsKernel(name) as kernel:
            results = Results(
                kernel=platform.release(),
                python=platform.python_version(),
                cpu=_cpu_model(),
            )
            run_inner(args, kernel, name, results, plan)
    finally:
        pr_netns.remove(name)
    print_summary(results)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def everything(_key: object) -> bool:
    return True


def run_inner(
    args: argparse.Namespace,
    kernel: Any,
    ns: str,
    results: Results,
    plan: Callable[..., list[Any]],
) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    pairs = [int(p) for p in args.pairs.split(",")]
    pairs += [pairs[-1]] * (len(sizes) - len(pairs))
    table: dict[Any, Any] = {}
    for services, count in zip(sizes, pairs, strict=False):
        table = build_table(services, args.reals)
        text = restore_text(table)
        size = SizeResult(services, args.reals, 0, 0)
        results.cold.append(size)

        def director(services: int = services, size: SizeResult = size) -> None:
            # The director's whole step: the desired table built (as the daemon builds it from
            # its config), the kernel's dumped, the plan, the batches.
            desired = build_table(services, args.reals)
            ops = plan(desired, kernel.dump(), everything)
            before = kernel.batches_sent
            failures = kernel.apply(ops)
            if failures:
                raise RuntimeError(f"{len(failures)} operations failed, first: {failures[0]}")
            size.ops, size.batches = len(ops), kernel.batches_sent - before

        def baseline(text: str = text) -> None:
            subprocess.run(
                _in_netns(ns, ["ipvsadm-restore"]),
                input=text,
                text=True,
                check=True,
                timeout=COMMAND_TIMEOUT,
            )

        for index in range(count):
            kernel.flush()
            d = _timed(director)
            if index == 0:
                check(kernel, table, "director")
            kernel.flush()
            b = _timed(baseline)
            if index == 0:
                check(kernel, table, "ipvsadm-restore")
            size.pairs.append(Pair(d, b))
            print(
                f"cold apply {services} x {args.reals}, pair {index + 1}: director {d:.2f} s "
                f"({size.ops} ops in {size.batches} sendmsg), ipvsadm-restore {b:.2f} s, "
                f"ratio {d / b:.2f}",
                flush=True,
            )
    # The kernel now holds the largest table (the last run was ipvsadm-restore, checked above
    # for the first pair; check again, untimed, for the later ones).
    if not results.cold or len(results.cold[-1].pairs) > 1:
        check(kernel, table, "ipvsadm-restore")
    results.resync_services = len(table)
    for index in range(args.resync_pairs):
        start = time.perf_counter()
        actual = kernel.dump()
        dumped = time.perf_counter()
        ops = plan(table, actual, everything)
        planned = time.perf_counter()
        if ops:
            raise RuntimeError(f"no-change resync planned {len(ops)} operations")
        b = _timed(
            lambda: subprocess.run(
                _in_netns(ns, ["ipvsadm", "-Ln"]),
                stdout=subprocess.PIPE,
                check=True,
                timeout=COMMAND_TIMEOUT,
            )
        )
        d = planned - start
        results.resync.append(Pair(d, b))
        results.resync_dump.append(dumped - start)
        results.resync_plan.append(planned - dumped)
        print(
            f"no-change resync {len(table)} x {args.reals}, pair {index + 1}: director {d:.2f} s "
            f"(dump {dumped - start:.2f} s, plan {planned - dumped:.2f} s), ipvsadm -Ln "
            f"{b:.2f} s, ratio {d / b:.2f}",
            flush=True,
        )
    single_change(kernel, table, results, plan)


def single_change(
    kernel: Any, table: dict[Any, Any], results: Results, plan: Callable[..., list[Any]]
) -> None:
    from director.ipvs.model import DestSpec, Service

    key = next(iter(table))
    service = table[key]
    real = next(iter(service.dests))
    changed = dict(table)
    old = service.dests[real]
    changed[key] = Service(
        key, service.spec, {**service.dests, real: DestSpec(old.forwarding, old.weight + 4)}
    )
    ops = plan(changed, kernel.dump(), everything)
    before = kernel.batches_sent
    start = time.perf_counter()
    failures = kernel.apply(ops)
    results.change_seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"single change failed: {failures[0]}")
    results.change_ops = len(ops)
    results.change_batches = kernel.batches_sent - before
    if kernel.dump()[key] != changed[key]:
        raise RuntimeError("the single change is not in the kernel")
    print(
        f"one real server changed in {len(table)} services: {len(ops)} op(s), "
        f"{results.change_batches} sendmsg, {results.change_seconds * 1000:.1f} ms",
        flush=True,
    )


def check(kernel: Any, table: dict[Any, Any], who: str) -> None:
    got = kernel.dump()
    if got != table:
        raise RuntimeError(f"after {who} the kernel holds {len(got)} services, not the desired")


def print_summary(results: Results) -> None:
    print()
    print(f"IPVS benchmark, kernel {results.kernel}, Python {results.python}, {results.cpu}")
    for size in results.cold:
        ratios = ", ".join(f"{p.ratio:.2f}" for p in size.pairs)
        print(
            f"cold apply {size.services} x {size.reals}: director "
            f"{statistics.median(p.director for p in size.pairs):.2f} s, ipvsadm-restore "
            f"{statistics.median(p.baseline for p in size.pairs):.2f} s (medians); ratios "
            f"{ratios}; median {size.median_ratio:.2f} (target <= {TARGET_COLD}): "
            f"{verdict(size.median_ratio <= TARGET_COLD)}"
        )
    if results.resync:
        ratio = statistics.median(p.ratio for p in results.resync)
        print(
            f"no-change resync {results.resync_services} services: director "
            f"{statistics.median(p.director for p in results.resync):.2f} s (dump "
            f"{statistics.median(results.resync_dump):.2f} s + plan "
            f"{statistics.median(results.resync_plan):.2f} s), ipvsadm -Ln "
            f"{statistics.median(p.baseline for p in results.resync):.2f} s; ratios "
            f"{', '.join(f'{p.ratio:.2f}' for p in results.resync)}; median {ratio:.2f} "
            f"(target <= {TARGET_RESYNC}): {verdict(ratio <= TARGET_RESYNC)}"
        )
    print(
        f"single change: {results.change_ops} op, {results.change_batches} sendmsg "
        f"(target: one batch): {verdict(results.change_ops == 1 and results.change_batches == 1)}"
    )


# ---------------------------------------------------------------- host side


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.bench ipvs",
        description="Director IPVS programming against ipvsadm-restore / ipvsadm -Ln, in the VM.",
    )
    parser.add_argument("--sizes", default="1000,10000", help="services per table (%(default)s)")
    parser.add_argument(
        "--pairs", default="3,2", help="alternating pairs per size (%(default)s; last repeats)"
    )
    parser.add_argument("--reals", type=int, default=4, help="real servers per service")
    parser.add_argument("--resync-pairs", type=int, default=2, help="no-change resync pairs")
    parser.add_argument("--timeout", type=float, default=2400.0, help="VM time limit, seconds")
    parser.add_argument("--json", default="", help="write the figures here (a path)")
    parser.add_argument("--rwdir", type=Path, default=DEFAULT_RWDIR, help="VM-writable directory")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if args.inner:
        return inner(args)
    if os.environ.get(IN_VM_ENV) == "1":
        # Already inside the VM (run through `python -m lab vm -- ...`).
        return inner(args)
    from lab.vm import CHECKOUT, RUNNER_FAILED, VmError, VmSetupError, run_in_vm

    rwdir: Path = args.rwdir.resolve()
    rwdir.mkdir(parents=True, exist_ok=True)
    json_out = Path(args.json).resolve() if args.json else rwdir / "ipvs.json"
    # The VM can only write under rwdir: write there, copy out afterwards.
    inner_json = json_out if json_out.is_relative_to(rwdir) else rwdir / json_out.name
    inner_argv = [
        sys.executable,
        "-m",
        "lab.bench.ipvs",
        "--inner",
        f"--sizes={args.sizes}",
        f"--pairs={args.pairs}",
        f"--reals={args.reals}",
        f"--resync-pairs={args.resync_pairs}",
        f"--json={inner_json}",
    ]
    # Other work on the host slows the VM's emulated CPUs; the load says how much there was.
    load_before = os.getloadavg()
    try:
        result = run_in_vm(inner_argv, rwdir=rwdir, timeout=args.timeout, cwd=CHECKOUT, echo=True)
    except VmSetupError as exc:
        print(f"lab.bench ipvs: {exc}", file=sys.stderr)
        return RUNNER_FAILED
    except VmError as exc:
        print(f"lab.bench ipvs: {exc.message}", file=sys.stderr)
        return RUNNER_FAILED
    if inner_json != json_out and inner_json.exists():
        json_out.write_text(inner_json.read_text())
    load_after = os.getloadavg()
    print(
        f"lab.bench ipvs: VM boot {result.boot_seconds:.1f} s, total {result.wall_seconds:.1f} s; "
        f"host load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
