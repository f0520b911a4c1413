"""`python -m lab up|down|status|exec|vm|list`: the namespace lab from a shell (as root)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

from lab import netns
from lab.core import Lab, LabError, LabStatus, recorded_prefixes
from lab.topology import DEFAULT_PREFIX, default_topology

# Lets a shell session pick its lab once (`export LAB_PREFIX=me`) instead of on every command.
PREFIX_ENV = "LAB_PREFIX"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab",
        description="Build the director lab (client, dir1, dir2, rs1-3, rsnat, router, rstun) "
        "in network namespaces. Needs root.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--prefix",
        default=os.environ.get(PREFIX_ENV, DEFAULT_PREFIX),
        help=f"name prefix of every namespace (default: ${PREFIX_ENV} or {DEFAULT_PREFIX})",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[common], help="build the lab")
    down = sub.add_parser("down", parents=[common], help="remove the lab (safe to repeat)")
    down.add_argument("--all", action="store_true", help="every lab that has a state file")
    sub.add_parser("status", parents=[common], help="show the lab; exit 0 only if fully up")
    sub.add_parser("list", help="prefixes of labs that are up (have a state file)")
    ex = sub.add_parser(
        "exec",
        parents=[common],
        help="run a command in a node's namespace",
        usage="python -m lab exec [--prefix P] NODE -- CMD [ARG...]",
    )
    ex.add_argument("node", help="node name (client, dir1, ...) or sw-SEGMENT for a switch")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments")
    vm = sub.add_parser("vm", help="run a command in the VM lab (see lab/vm.py)")
    vm.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["vm"]:
        # Everything after `vm` (including any `--`) is the VM runner's to parse.
        return _vm(args_in[1:])
    cmd: list[str] = []
    if args_in[:1] == ["exec"] and "--" in args_in:
        cut = args_in.index("--")
        args_in, cmd = args_in[:cut], args_in[cut + 1 :]
    args = _parser().parse_args(args_in)
    try:
        if args.command == "up":
            return _up(args.prefix)
        if args.command == "down":
            return _down(args.prefix, args.all)
        if args.command == "status":
            return _status(args.prefix)
        if args.command == "list":
            for prefix in recorded_prefixes():
                print(prefix)
            return 0
        if args.command == "exec":
            return _exec(args.prefix, args.node, cmd or _strip_dashes(args.cmd))
    except (LabError, KeyError, netns.NetnsError, PermissionError) as e:
        print(f"lab: {e}", file=sys.stderr)
        return 1
    raise AssertionError(args.command)


def _strip_dashes(cmd: list[str]) -> list[str]:
    return cmd[1:] if cmd[:1] == ["--"] else cmd


def _up(prefix: str) -> int:
    lab = Lab(default_topology(prefix))
    lab.up()
    print(f"lab {prefix} is up: {len(lab.namespaces())} namespaces ({', '.join(lab.namespaces())})")
    print(
        f"  try: python -m lab exec --prefix {prefix} client -- ping -c1 {lab.addr('rs1', 'lan')}"
    )
    return 0


def _down(prefix: str, everything: bool) -> int:
    prefixes = recorded_prefixes() if everything else [prefix]
    for p in prefixes:
        Lab(default_topology(p)).down()
        print(f"lab {p} is down")
    return 0


def _status(prefix: str) -> int:
    st = Lab(default_topology(prefix)).status()
    print(format_status(st))
    return 0 if st.up else 1


def format_status(st: LabStatus) -> str:
    verdict = "up" if st.up else ("absent" if st.absent else "PARTIAL")
    lines = [f"lab {st.prefix}: {verdict}" + (f" (state {st.state_file})" if st.state_file else "")]
    if st.absent:
        return lines[0]
    width = max(len(ns.name) for ns in st.namespaces)
    for ns in st.namespaces:
        if not ns.present:
            lines.append(f"  {ns.name:<{width}}  absent")
            continue
        links = "; ".join(
            " ".join([link.ifname, link.operstate, *link.addresses]) for link in ns.links
        )
        lines.append(f"  {ns.name:<{width}}  {links}")
        lines += [f"  {'':<{width}}  ! {p}" for p in ns.problems]
    return "\n".join(lines)


def _exec(prefix: str, node: str, cmd: list[str]) -> int:
    if not cmd:
        print("lab: exec needs a command: python -m lab exec NODE -- CMD [ARG...]", file=sys.stderr)
        return 2
    argv = Lab(default_topology(prefix)).exec_argv(node, cmd)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: stdin/stdout/signals and the exit code are the command's own, and a
    # backgrounded `python -m lab exec dir1 -- daemon &` is the daemon's pid, not a Python's.
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"lab: cannot run {argv[0]}: {e}", file=sys.stderr)
        return 127
    raise AssertionError("unreachable")  # pragma: no cover


def _vm(argv: list[str]) -> int:
    # Imported lazily: the VM runner is a separate module with its own dependencies.
    module = importlib.import_module("lab.vm")
    vm_main = cast(Callable[[list[str]], int], module.main)
    return vm_main(argv)
