"""The kernel modules and sysctls the configured services need on a director.

`requirements(config)` is pure; `load_modules` and `SysctlGuard` touch the kernel. Sysctls are
set at start and the previous values restored on stop, only where the director changed them.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from director.config.models import Config

PROC_SYS = Path("/proc/sys")


class SetupError(Exception):
    """A module or sysctl the services need could not be set up; the message says which."""


@dataclass(frozen=True)
class Requirements:
    modules: tuple[str, ...]
    # sysctl name (dotted) -> value, with the reason shown in docs and logs
    sysctls: Mapping[str, tuple[int, str]] = field(default_factory=dict)


def requirements(config: Config) -> Requirements:
    services = config.services
    if not services:
        return Requirements(())
    modules = ["ip_vs", *sorted({f"ip_vs_{s.scheduler}" for s in services})]
    sysctls: dict[str, tuple[int, str]] = {
        # A real server removed from the config or by health must stop getting packets of
        # the connections it had, instead of black-holing them until they time out.
        "net.ipv4.vs.expire_nodest_conn": (1, "drop connections to removed real servers"),
        # Persistence templates pointing to a weight-0 (drained) real server expire, so
        # persistent clients move on.
        "net.ipv4.vs.expire_quiescent_template": (1, "persistent clients leave drained servers"),
    }
    forwardings = {rs.forwarding or s.forwarding for s in services for rs in s.real_servers}
    forwardings |= {s.forwarding for s in services}
    if "nat" in forwardings:
        families = {a.version for s in services for a in s.addresses} | {
            s.family or 4 for s in services if s.marks
        }
        if 4 in families:
            sysctls["net.ipv4.ip_forward"] = (1, "NAT: replies are routed back through here")
        if 6 in families:
            sysctls["net.ipv6.conf.all.forwarding"] = (1, "NAT over IPv6")
        # Keep netfilter's conntrack entries for IPVS connections, so stateful firewall and
        # masquerade rules on the director see NAT traffic (nf_conntrack is loaded with ip_vs).
        sysctls["net.ipv4.vs.conntrack"] = (1, "NAT: netfilter sees IPVS connections")
    return Requirements(tuple(modules), sysctls)


def _loaded(module: str) -> bool:
    return Path("/sys/module", module).exists()


def load_modules(modules: Iterable[str]) -> None:
    """modprobe what is not loaded yet; one error naming every module that could not be."""
    missing = [m for m in modules if not _loaded(m)]
    if not missing:
        return
    failed: list[str] = []
    for module in missing:
        done = subprocess.run(["modprobe", module], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
            failed.append(f"{module} ({why})")
    if failed:
        raise SetupError(f"kernel module(s) not available: {', '.join(failed)}")


def sysctl_path(name: str) -> Path:
    return PROC_SYS / name.replace(".", "/")


def read_sysctl(name: str) -> int:
    try:
        return int(sysctl_path(name).read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise SetupError(f"cannot read sysctl {name}: {exc}") from None


def write_sysctl(name: str, value: int) -> None:
    try:
        sysctl_path(name).write_text(f"{value}\n")
    except OSError as exc:
        raise SetupError(f"cannot set sysctl {name}={value}: {exc.strerror or exc}") from None


class SysctlGuard:
    """Sets sysctls and remembers the values it replaced, to put them back on stop."""

    def __init__(self) -> None:
        self.changed: dict[str, int] = {}  # name -> previous value

    def apply(self, wanted: Mapping[str, int]) -> dict[str, int]:
        """All or nothing: on an error, what this call changed is put back first."""
        done: dict[str, int] = {}
        try:
            for name, value in wanted.items():
                before = read_sysctl(name)
                if before != value:
                    write_sysctl(name, value)
                    done[name] = before
        except SetupError:
            self._restore(done)
            raise
        for name, before in done.items():
            self.changed.setdefault(name, before)
        return done

    def restore(self) -> None:
        self._restore(self.changed)
        self.changed = {}

    @staticmethod
    def _restore(values: Mapping[str, int]) -> None:
        for name, before in reversed(list(values.items())):
            # Best effort on the way out: a value that cannot be put back stays as we set it.
            with contextlib.suppress(SetupError):
                write_sysctl(name, before)


def timeouts(config: Config) -> tuple[int, int, int] | None:
    """(tcp, tcpfin, udp) seconds for the kernel, 0 keeping its value; None: leave them all."""
    t = config.ipvs.timeouts
    return None if t is None else (round(t.tcp), round(t.tcpfin), round(t.udp))
