"""director: VRRP, IPVS and health checks for a high-availability load balancer."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from director import __version__

if TYPE_CHECKING:
    from director.config import Config

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def cmd_check_config(args: argparse.Namespace) -> int:
    from director.config import ConfigUnreadable, check_text

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{path}: cannot read: {reason}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        report = check_text(text, str(path))
    except ConfigUnreadable as exc:
        print(f"{exc} (not valid YAML)", file=sys.stderr)
        return EXIT_UNREADABLE
    for line in report.lines():
        print(line)
    errors, warnings = len(report.errors), len(report.warnings)
    if errors:
        print(f"{path}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
        return EXIT_INVALID
    assert report.config is not None
    cfg = report.config
    print(
        f"{path}: OK ({len(cfg.vrrp.instances)} vrrp instance(s), "
        f"{len(cfg.services)} service(s), {warnings} warning(s))",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    from director.config import Config

    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "director configuration"
    print(json.dumps(schema, indent=2, sort_keys=True))
    return EXIT_OK


def _load(path: str) -> tuple[int, object]:
    """(exit code, config): a config that does not load is reported like check-config does."""
    from director.config import ConfigInvalid, ConfigUnreadable, load_config

    try:
        report = load_config(path)
    except ConfigUnreadable as exc:
        print(exc, file=sys.stderr)
        return EXIT_UNREADABLE, None
    except ConfigInvalid as exc:
        for line in exc.report.lines():
            print(line, file=sys.stderr)
        return EXIT_INVALID, None
    for line in report.lines():
        print(line, file=sys.stderr)
    return EXIT_OK, report.config


def cmd_start(args: argparse.Namespace) -> int:
    from director import loop
    from director.config import Config
    from director.daemon import Daemon

    code, config = _load(args.config)
    if not isinstance(config, Config):
        return code
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug is per netlink message
    try:
        return int(loop.run(Daemon(config, args.config, keep_ipvs=args.keep_ipvs).run()))
    except Exception as exc:  # startup failures: one clear line, not a traceback
        logging.getLogger("director").error("cannot start: %s", exc)
        return EXIT_INVALID


def _socket_path(args: argparse.Namespace) -> str | int:
    """--socket, or the config's control socket; an exit code when the config does not load."""
    if args.socket is not None:
        return str(args.socket)
    from director.config import Config

    code, config = _load(args.config)
    return config.node.control_socket if isinstance(config, Config) else code


def cmd_maintenance(args: argparse.Namespace) -> int:
    """`director drain|enable SERVICE REALSERVER`: weight 0 (or back) until cleared."""
    from director.api.control import ControlError, request

    socket_path = _socket_path(args)
    if isinstance(socket_path, int):
        return socket_path
    command = {"command": args.command, "service": args.service, "real_server": args.real_server}
    try:
        answer = request(socket_path, command)
    except (ControlError, ValueError) as exc:
        print(f"director {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if not answer.get("ok"):
        print(f"director {args.command}: {answer.get('error')}", file=sys.stderr)
        return EXIT_INVALID
    state = "drained (weight 0)" if answer["drained"] else "enabled"
    print(f"{answer['service']} {answer['real_server']}: {state}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from director.api.control import ControlError, request

    socket_path = _socket_path(args)
    if isinstance(socket_path, int):
        return socket_path
    try:
        answer = request(socket_path, {"command": "status"})
    except (ControlError, ValueError) as exc:
        print(f"director status: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if not answer.get("ok"):
        print(f"director status: {answer.get('error')}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(answer["status"], indent=2))
    return EXIT_OK


def _with_config(args: argparse.Namespace, run: Callable[[Config], int]) -> int:
    from director.config import Config

    code, config = _load(args.config)
    if not isinstance(config, Config):
        return code
    return run(config)


def cmd_plan(args: argparse.Namespace) -> int:
    from director.ipvs.commands import cmd_plan as plan

    return _with_config(args, lambda cfg: plan(cfg, flush=args.flush))


def cmd_apply(args: argparse.Namespace) -> int:
    from director.ipvs.commands import cmd_apply as apply

    if not args.once:
        print(
            "director apply: --once is required (continuous reconciling is `director start`)",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    return _with_config(args, lambda cfg: apply(cfg, with_vips=args.with_vips))


def cmd_flush(args: argparse.Namespace) -> int:
    from director.ipvs.commands import cmd_flush as flush

    return _with_config(args, flush)


Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="director", description=__doc__)
    parser.add_argument("--version", action="version", version=f"director {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check-config",
        help="validate a config file, report every error with its location",
        description="Exit 0 when valid, 1 when invalid, 2 when unreadable or not YAML.",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(handler=cmd_check_config)

    schema = sub.add_parser("config-schema", help="print the JSON Schema of the config")
    schema.set_defaults(handler=cmd_config_schema)

    start = sub.add_parser(
        "start",
        help="run the director in the foreground (SIGTERM/SIGINT: clean stop, exit 0)",
    )
    start.add_argument("-c", "--config", required=True, metavar="FILE")
    start.add_argument("--debug", action="store_true", help="log every dropped advert")
    start.add_argument(
        "--keep-ipvs",
        action="store_true",
        help="leave the IPVS services in place on stop (restart without dropping traffic)",
    )
    start.set_defaults(handler=cmd_start)

    plan = sub.add_parser(
        "plan",
        help="print what apply would change in the live IPVS table; change nothing",
        description="Exit 0 whenever the plan could be computed, whatever it found.",
    )
    plan.add_argument("-c", "--config", required=True, metavar="FILE")
    plan.add_argument("--flush", action="store_true", help="plan as if ipvs.flush were set")
    plan.set_defaults(handler=cmd_plan)

    apply = sub.add_parser(
        "apply",
        help="program IPVS (modules, sysctls, services) from the config and exit",
    )
    apply.add_argument("-c", "--config", required=True, metavar="FILE")
    apply.add_argument("--once", action="store_true", help="apply once and exit (required)")
    apply.add_argument(
        "--with-vips", action="store_true", help="also add every vrrp instance's VIPs"
    )
    apply.set_defaults(handler=cmd_apply)

    flush = sub.add_parser("flush", help="remove the IPVS services this director owns")
    flush.add_argument("-c", "--config", required=True, metavar="FILE")
    flush.set_defaults(handler=cmd_flush)

    for name, text in (
        ("drain", "set a real server's weight to 0 for maintenance, until `enable`"),
        ("enable", "end a real server's maintenance drain"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("service", metavar="SERVICE")
        cmd.add_argument("real_server", metavar="REALSERVER", help="ADDRESS or ADDRESS:PORT")
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("-c", "--config", metavar="FILE", help="find the control socket here")
        where.add_argument("--socket", metavar="PATH", help="the control socket itself")
        cmd.set_defaults(handler=cmd_maintenance)

    status = sub.add_parser("status", help="print the running director's state as JSON")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", metavar="FILE", help="find the control socket here")
    where.add_argument("--socket", metavar="PATH", help="the control socket itself")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
