"""realserver: prepare this host to sit behind the director (DR, TUN or NAT), verify it, and
revert exactly what was changed.

  realserver start --vip 192.0.2.100/80 [--vip ...] [--mode dr|tun|nat] [--client-iface eth0]
  realserver start -c /etc/director/realserver.yaml [--self 192.0.2.21]
  realserver status [--json]       what start changed, and whether it still holds
  realserver check [--json]        VIPs present, ARP silent, service ports listening
  realserver stop                  restore every value start changed, remove what it added

Exit status: 0 done (or nothing to do), 1 the kernel refused or a check failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from realserver import state as state_file
from realserver.apply import StepFailed, apply_all
from realserver.kernel import Kernel, KernelError
from realserver.plan import Snapshot, plan_revert, plan_start
from realserver.spec import Spec, SpecError, add_spec_arguments, spec_from_args
from realserver.state import STATE_DIR, State, StateError
from realserver.steps import AddFou, DelFou, Step
from realserver.verify import (
    check,
    describe_spec,
    failed,
    format_findings,
    format_status,
    read_listeners,
    status_report,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOCK_TIMEOUT = 30.0


class Failure(Exception):
    """Ends the command with a message on stderr and `code`."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class _Version(argparse.Action):
    """--version, reading the package metadata only when asked (it is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("director")
        except metadata.PackageNotFoundError:  # a checkout that is not installed
            version = "unknown"
        print(f"realserver {version}")  # on stdout, as argparse's own version action does
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realserver",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=str(STATE_DIR),
        help=f"where the per-network-namespace state files live (default {STATE_DIR})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser("start", parents=[common], help="apply the setup (all or nothing)")
    add_spec_arguments(start)
    start.add_argument("--dry-run", action="store_true", help="print the changes, make none")

    stop = sub.add_parser("stop", parents=[common], help="revert what start changed")
    stop.add_argument("--dry-run", action="store_true", help="print the changes, make none")

    for name, text in (
        ("status", "what start changed and whether the live system still matches"),
        ("check", "verify the backend: VIPs, ARP, rp_filter, routes, listening ports"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text)
        add_spec_arguments(cmd)
        cmd.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "check": cmd_check}
    try:
        return commands[args.command](args)
    except SpecError as exc:
        print(f"realserver: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"realserver: {exc}", file=sys.stderr)
        return exc.code
    except (StateError, KernelError) as exc:
        print(f"realserver: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError as exc:
        print(f"realserver: {exc} (realserver needs root)", file=sys.stderr)
        return EXIT_FAILED


# ---------------------------------------------------------------- helpers


def _paths(args: argparse.Namespace) -> tuple[int, Path]:
    netns = state_file.netns_inode()
    return netns, state_file.state_path(netns, args.state_dir)


@contextmanager
def _locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One start or stop at a time per network namespace: both read, change and record."""
    lock = path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Failure(
                        f"another realserver still holds {lock} after {timeout:.0f} s"
                    ) from None
                time.sleep(0.05)  # nothing to wait on but the other process's exit
        yield
    finally:
        os.close(fd)


def _needs_fou(spec: Spec | None, recorded: Sequence[Step]) -> bool:
    gue = spec is not None and any(v.tunnel and v.tunnel.type == "gue" for v in spec.vips)
    return gue or any(isinstance(s, AddFou | DelFou) for s in recorded)


def _given_spec(args: argparse.Namespace) -> Spec | None:
    """The setup on the command line of status/check, or None to use the recorded one."""
    if args.vip or args.config:
        return spec_from_args(args)
    extra = [
        flag
        for flag, given in (
            ("--self", args.self_address is not None),
            ("--mode", args.mode != "dr"),
            ("--tunnel", args.tunnel is not None),
            ("--gue-port", args.gue_port is not None),
            ("--iface", args.iface != "lo"),
            ("--dummy", args.dummy),
            ("--client-iface", bool(args.client_iface)),
            ("--set-gateway", args.gateway is not None),
        )
        if given
    ]
    if extra:
        raise SpecError(f"{', '.join(extra)}: give the VIPs too (--vip or --config)")
    return None


def _print_steps(title: str, steps: Sequence[Step]) -> None:
    print(title)
    for step in steps:
        print(f"  {step.describe()}")


# ---------------------------------------------------------------- commands


def cmd_start(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    netns, path = _paths(args)
    with _locked(path), Kernel() as kernel:
        recorded = state_file.load(path)
        if recorded is not None and recorded.spec is not None and recorded.spec != spec:
            was = "; ".join(describe_spec(recorded.spec))
            raise Failure(
                f"already started here with another setup ({was}): run `realserver stop` "
                "first, or start with the same setup",
                EXIT_USAGE,
            )
        snapshot = kernel.snapshot(with_fou=_needs_fou(spec, ()))
        steps = plan_start(spec, snapshot)
        if args.dry_run:
            _print_steps(f"start would make {len(steps)} change(s):", steps)
            return EXIT_OK
        earlier = recorded.steps if recorded is not None else ()

        def record(done: Sequence[Step]) -> None:
            # Write-ahead: a step is in the file before the kernel sees it, so a crash midway
            # still leaves `stop` what it needs.
            if recorded is None and not done:
                state_file.remove(path)
            else:
                state_file.save(path, State(netns, (*earlier, *done), spec))

        if not steps:
            if recorded is None:  # nothing to revert, but status and check reuse the setup
                state_file.save(path, State(netns, (), spec))
            print("nothing to change: the setup is already in place")
            return EXIT_OK
        try:
            apply_all(steps, kernel.execute, record)
        except StepFailed as exc:
            if exc.rollback_errors:
                raise Failure(
                    f"start failed: {exc}; what is left is recorded in {path}: run "
                    "`realserver stop` to remove it"
                ) from None
            raise Failure(f"start failed: {exc}; every change was rolled back") from None
        _print_steps(f"started: {len(steps)} change(s) made", steps)
    return EXIT_OK


def cmd_stop(args: argparse.Namespace) -> int:
    _, path = _paths(args)
    with _locked(path), Kernel() as kernel:
        recorded = state_file.load(path)
        if recorded is None:
            print(
                f"realserver was not started in this network namespace (no {path}): nothing to stop"
            )
            return EXIT_OK
        snapshot = kernel.snapshot(with_fou=_needs_fou(None, recorded.steps))
        steps = plan_revert(recorded.steps, snapshot)
        if args.dry_run:
            _print_steps(f"stop would make {len(steps)} change(s):", steps)
            return EXIT_OK
        errors: list[str] = []
        done: list[Step] = []
        for step in steps:
            # Carry on past a failure: every other change still gets its revert, and the
            # state file stays, so running stop again retries only what is left.
            try:
                kernel.execute(step)
            except Exception as exc:
                errors.append(f"{step.describe()}: {exc}")
                continue
            done.append(step)
        if errors:
            _print_steps(f"reverted {len(done)} change(s):", done)
            raise Failure(
                "stop incomplete, state kept in "
                f"{path} (run stop again once fixed): " + "; ".join(errors)
            )
        state_file.remove(path)
    _print_steps(f"stopped: {len(steps)} change(s) reverted", steps)
    return EXIT_OK


def _observe(spec: Spec | None, recorded: State | None) -> Snapshot:
    with Kernel() as kernel:
        return kernel.snapshot(
            with_fou=_needs_fou(spec, recorded.steps if recorded is not None else ())
        )


def cmd_status(args: argparse.Namespace) -> int:
    netns, path = _paths(args)
    recorded = state_file.load(path)
    spec = _given_spec(args) or (recorded.spec if recorded is not None else None)
    report = status_report(recorded, path, netns, spec, _observe(spec, recorded))
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    _, path = _paths(args)
    recorded = state_file.load(path)
    spec = _given_spec(args) or (recorded.spec if recorded is not None else None)
    if spec is None:
        raise Failure(
            f"nothing to check: realserver was not started here (no {path}); "
            "give the setup with --vip or --config",
            EXIT_USAGE,
        )
    findings = check(spec, _observe(spec, recorded), read_listeners())
    if args.json:
        data = {"ok": not failed(findings), "findings": [f.to_dict() for f in findings]}
        print(json.dumps(data, indent=2))
    else:
        print(format_findings(findings))
    return EXIT_FAILED if failed(findings) else EXIT_OK
