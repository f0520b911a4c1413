"""director: VRRP, IPVS and health checks for a high-availability load balancer."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from director import __version__

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
        return int(loop.run(Daemon(config, args.config).run()))
    except Exception as exc:  # startup failures: one clear line, not a traceback
        logging.getLogger("director").error("cannot start: %s", exc)
        return EXIT_INVALID


def cmd_status(args: argparse.Namespace) -> int:
    from director.api.control import ControlError, request
    from director.config import Config

    socket_path = args.socket
    if socket_path is None:
        code, config = _load(args.config)
        if not isinstance(config, Config):
            return code
        socket_path = config.node.control_socket
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
    start.set_defaults(handler=cmd_start)

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
