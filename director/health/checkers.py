"""Build the checker of one real server from its (inherited) check settings."""

from __future__ import annotations

from director.config.models import Check
from director.health.dns import DnsChecker
from director.health.file import FileChecker
from director.health.http import HttpChecker, HttpsChecker
from director.health.misc import MiscChecker
from director.health.probe import Checker, Done, ReadyProbe, Target
from director.health.result import CheckResult
from director.health.tcp import TcpChecker
from director.health.udp import UdpChecker


class BrokenChecker:
    """A check that cannot run as configured (no port to connect to, ...): every attempt fails
    with the reason, so the operator sees it in the log and the status."""

    kind = "broken"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> ReadyProbe:
        return ReadyProbe(CheckResult(False, self.reason), done)


def substitute(argv: list[str], service: str, address: str, port: int) -> list[str]:
    """`{service}`, `{address}` and `{port}` inside arguments (MISC, notify). Exact tokens only,
    so that braces meant for the command itself (awk, jq) pass untouched."""
    return [
        arg.replace("{service}", service).replace("{address}", address).replace("{port}", str(port))
        for arg in argv
    ]


def build_checker(check: Check, address: str, port: int, service: str = "") -> Checker:
    """The checker for a real server at address:port (port 0: none, as fwmark services)."""
    if check.misc is not None:
        misc = check.misc.model_copy(
            update={"command": substitute(check.misc.command, service, address, port)}
        )
        return MiscChecker(misc)
    if check.file is not None:
        return FileChecker(check.file)
    connect_port = check.connect_port or port
    if not connect_port:
        return BrokenChecker("no port to check: set connect_port (the real server has none)")
    target = Target.of(check.connect_ip or address, connect_port, check.bind_to)
    try:
        if check.tcp is not None:
            return TcpChecker(target)
        if check.http is not None:
            if check.http.tls:
                return HttpsChecker(check.http, target)
            return HttpChecker(check.http, target)
        if check.udp is not None:
            return UdpChecker(check.udp, target)
        if check.dns is not None:
            return DnsChecker(check.dns, target)
    except ValueError as exc:
        return BrokenChecker(f"check cannot run: {exc}")
    return BrokenChecker("no checker configured (tcp, http, udp, dns, misc or file)")
