"""The kernel side: read a Snapshot of what realserver cares about, and execute one Step.

Everything happens in the caller's network namespace (the process is started inside it, e.g.
with `ip netns exec`), through pyroute2's sync API (the CLI has no event loop) and /proc/sys.
Kernel modules are loaded with modprobe only when a step needs them, so a missing one is named.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from realserver import fou
from realserver.plan import Link, Snapshot
from realserver.steps import (
    AddAddress,
    AddFou,
    CreateLink,
    DelAddress,
    DelDefaultRoute,
    DeleteLink,
    DelFou,
    SetDefaultRoute,
    SetLinkDown,
    SetLinkUp,
    SetSysctl,
    Step,
)

SYSCTL_ROOT = Path("/proc/sys")
# The per-interface IPv4 settings the plan reads and writes.
CONF_NAMES = ("arp_ignore", "arp_announce", "rp_filter")
# Kernel module of each interface kind realserver creates.
LINK_MODULES = {
    "dummy": "dummy",
    "ipip": "ipip",
    "gre": "ip_gre",
    "ip6tnl": "ip6_tunnel",
    "ip6gre": "ip6_gre",
}
FOU_MODULE = "fou"
# Made by the tunnel modules in every namespace when loaded; the kernel ignores requests to
# delete them, so taking them down is all a revert can do.
FALLBACK_DEVICES = frozenset({"tunl0", "gre0", "ip6tnl0", "ip6gre0"})
IFF_UP = 0x1
IFA_F_NODAD = 0x02
MAIN_TABLE = 254
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
DEFAULT_DST = {4: "0.0.0.0", 6: "::"}
MODPROBE_TIMEOUT = 60.0


class KernelError(RuntimeError):
    """The kernel refused a change or a read; the message says what and why, in words."""


def strerror(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(exc, NetlinkError) and isinstance(code, int):
        return f"{os.strerror(code)} (errno {code})"
    return str(exc)


# ---------------------------------------------------------------- modules


def modprobe(module: str) -> None:
    """Load a kernel module (a no-op when loaded or built in); KernelError names it if not."""
    exe = shutil.which("modprobe") or next(
        (p for p in ("/usr/sbin/modprobe", "/sbin/modprobe") if os.path.exists(p)), None
    )
    if exe is None:
        raise KernelError(
            f"kernel module {module} is needed and modprobe is missing (install kmod)"
        )
    try:
        result = subprocess.run(
            [exe, module], capture_output=True, text=True, timeout=MODPROBE_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise KernelError(f"modprobe {module} did not finish in {MODPROBE_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        raise KernelError(f"kernel module {module} could not be loaded: {said}")


# ---------------------------------------------------------------- sysctls


def sysctl_file(key: str) -> Path:
    return SYSCTL_ROOT / key


def read_sysctl(key: str) -> int | None:
    """The value, or None when the key does not exist (an interface that is not there)."""
    try:
        return int(sysctl_file(key).read_text().split()[0])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError) as exc:
        raise KernelError(f"cannot read sysctl {key.replace('/', '.')}: {exc}") from None


def write_sysctl(key: str, value: int) -> None:
    dotted = key.replace("/", ".")
    try:
        sysctl_file(key).write_text(f"{value}\n")
    except FileNotFoundError:
        parts = key.split("/")
        if len(parts) == 5 and parts[2] == "conf":
            raise KernelError(f"no interface {parts[3]!r} in this network namespace") from None
        raise KernelError(f"no sysctl {dotted} in this kernel") from None
    except OSError as exc:
        raise KernelError(f"cannot write {value} to sysctl {dotted}: {exc.strerror}") from None


def conf_sysctls() -> dict[str, int]:
    """net/ipv4/conf/*/{arp_ignore,arp_announce,rp_filter} for all, default and each interface."""
    out: dict[str, int] = {}
    base = SYSCTL_ROOT / "net/ipv4/conf"
    for entry in sorted(os.listdir(base)):
        for name in CONF_NAMES:
            key = f"net/ipv4/conf/{entry}/{name}"
            value = read_sysctl(key)
            if value is not None:  # the interface went away while we read
                out[key] = value
    return out


# ---------------------------------------------------------------- the kernel


class Kernel:
    """One netlink socket for the process's life: `with Kernel() as k: k.snapshot()`."""

    def __init__(self) -> None:
        try:
            self.ipr: Any = IPRoute()
        except OSError as exc:
            raise KernelError(f"cannot open a netlink socket: {exc}") from None

    def __enter__(self) -> Kernel:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.ipr.close()

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self, with_fou: bool = False) -> Snapshot:
        """What the plan needs. fou ports only when asked: reading them would make the kernel
        load the fou module, which a host that uses no gue tunnel should not get."""
        try:
            links, names = self._links()
            addresses = self._addresses(names)
            routes = {family: gw for family in (4, 6) if (gw := self._default_gateway(family))}
        except NetlinkError as exc:
            raise KernelError(f"cannot read interfaces and routes: {strerror(exc)}") from None
        return Snapshot(
            sysctls=conf_sysctls(),
            links=links,
            addresses=addresses,
            fou_ports=self.fou_ports() if with_fou else frozenset(),
            default_routes=routes,
        )

    def _links(self) -> tuple[dict[str, Link], dict[int, str]]:
        links: dict[str, Link] = {}
        names: dict[int, str] = {}
        for msg in self.ipr.get_links():
            name = str(msg.get("IFLA_IFNAME"))
            kind = msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) or ""
            links[name] = Link(str(kind), bool(msg["flags"] & IFF_UP))
            names[int(msg["index"])] = name
        return links, names

    def _addresses(self, names: dict[int, str]) -> frozenset[tuple[str, str]]:
        out: set[tuple[str, str]] = set()
        for msg in self.ipr.get_addr():
            # Point-to-point IPv4 addresses carry the local one in IFA_LOCAL.
            local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            dev = names.get(int(msg["index"]))
            if local is None or dev is None:
                continue
            out.add((dev, str(ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))))
        return frozenset(out)

    def default_routes(self, family: int) -> list[tuple[int, str | None]]:
        """(metric, gateway) of the main table's default routes, lowest metric first."""
        found: list[tuple[int, str | None]] = []
        for msg in self.ipr.get_routes(family=AF[family], table=MAIN_TABLE):
            if msg["dst_len"] != 0 or msg.get("RTA_TABLE", MAIN_TABLE) != MAIN_TABLE:
                continue
            if msg["type"] != 1:  # RTN_UNICAST: not blackhole, unreachable, ...
                continue
            gateway = msg.get("RTA_GATEWAY")
            found.append(
                (int(msg.get("RTA_PRIORITY") or 0), None if gateway is None else str(gateway))
            )
        return sorted(found, key=lambda item: item[0])

    def _default_gateway(self, family: int) -> str | None:
        """The gateway of the preferred default route (the one replies take), if it has one."""
        routes = self.default_routes(family)
        if routes and routes[0][1] is not None:
            return str(ipaddress.ip_address(routes[0][1]))
        return None

    def fou_ports(self) -> frozenset[tuple[int, int]]:
        try:
            with fou.fou_socket() as sock:
                return fou.list_ports(sock)
        except fou.FouUnavailable:
            return frozenset()
        except NetlinkError as exc:
            raise KernelError(f"cannot list fou ports: {strerror(exc)}") from None

    def index(self, dev: str) -> int:
        found = self.ipr.link_lookup(ifname=dev)
        if not found:
            raise KernelError(f"no interface {dev!r} in this network namespace")
        return int(found[0])

    def exists(self, dev: str) -> bool:
        return bool(self.ipr.link_lookup(ifname=dev))

    def kind(self, dev: str) -> str:
        (msg,) = self.ipr.link("get", index=self.index(dev))
        return str(msg.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) or "")

    # -- changing -----------------------------------------------------------------------------

    def execute(self, step: Step) -> None:
        """Do one step; KernelError (in words) when the kernel refuses."""
        try:
            self._execute(step)
        except NetlinkError as exc:
            raise KernelError(strerror(exc)) from None

    def _execute(self, step: Step) -> None:
        match step:
            case SetSysctl(key, value, _):
                write_sysctl(key, value)
            case CreateLink(dev, kind):
                self._create_link(dev, kind)
            case DeleteLink(dev, _):
                self._delete_link(dev)
            case SetLinkUp(dev):
                self.ipr.link("set", index=self.index(dev), state="up")
            case SetLinkDown(dev):
                self.ipr.link("set", index=self.index(dev), state="down")
            case AddAddress(dev, address, label, nodad):
                self._add_address(dev, address, label, nodad)
            case DelAddress(dev, address):
                self._del_address(dev, address)
            case AddFou(port, family):
                modprobe(FOU_MODULE)
                with fou.fou_socket() as sock:
                    fou.add_gue_port(sock, port, family)
            case DelFou(port, family):
                self._del_fou(port, family)
            case SetDefaultRoute(family, gateway, _):
                self._set_default_route(family, gateway)
            case DelDefaultRoute(family, gateway):
                self._del_default_route(family, gateway)
            case _:  # pragma: no cover
                raise TypeError(f"not a step: {step!r}")

    def _create_link(self, dev: str, kind: str) -> None:
        if self.exists(dev):
            # The plan creates only what is absent: someone made it meanwhile.
            raise KernelError(f"interface {dev} appeared meanwhile (kind {self.kind(dev)!r})")
        module = LINK_MODULES.get(kind)
        if module is None:
            raise KernelError(f"realserver does not create {kind!r} interfaces")
        modprobe(module)
        if self.exists(dev):
            # Loading the module made its fallback device (tunl0, gre0, ...): that is the one.
            found = self.kind(dev)
            if found != kind:
                raise KernelError(f"interface {dev} is a {found!r}, not {kind!r}")
            return
        self.ipr.link("add", ifname=dev, kind=kind)

    def _delete_link(self, dev: str) -> None:
        if not self.exists(dev):
            return
        try:
            self.ipr.link("del", index=self.index(dev))
        except NetlinkError as exc:
            # Some kernels refuse outright to delete a fallback device rather than ignore it.
            if dev in FALLBACK_DEVICES and exc.code in (errno.EOPNOTSUPP, errno.EPERM):
                return
            raise

    def _add_address(self, dev: str, address: str, label: str | None, nodad: bool) -> None:
        iface = ipaddress.ip_interface(address)
        args: dict[str, Any] = {
            "index": self.index(dev),
            "address": str(iface.ip),
            "prefixlen": iface.network.prefixlen,
            "family": AF[iface.version],
        }
        if label is not None:
            args["label"] = label
        if nodad:
            args["flags"] = IFA_F_NODAD
        try:
            self.ipr.addr("add", **args)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                # Not ours to record: stop would remove an address someone else added.
                raise KernelError(f"{address} is already on {dev} (added meanwhile)") from None
            raise

    def _del_address(self, dev: str, address: str) -> None:
        if not self.exists(dev):
            return  # gone with its interface
        iface = ipaddress.ip_interface(address)
        try:
            self.ipr.addr(
                "del",
                index=self.index(dev),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                family=AF[iface.version],
            )
        except NetlinkError as exc:
            if exc.code != errno.EADDRNOTAVAIL:  # already removed
                raise

    def _del_fou(self, port: int, family: int) -> None:
        try:
            with fou.fou_socket() as sock:
                fou.del_port(sock, port, family)
        except fou.FouUnavailable:
            return  # no fou in the kernel, so no port either
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise

    def _set_default_route(self, family: int, gateway: str) -> None:
        """Replace the preferred default route's gateway in place (same metric), or add one."""
        routes = self.default_routes(family)
        if routes and routes[0][1] is None:
            # A device or multipath default route: the state file records one gateway, so
            # stop could not put this route back. Refuse rather than lose it.
            raise KernelError(
                f"the IPv{family} default route has no single gateway (a device or multipath"
                " route); realserver cannot restore it on stop, so it leaves it alone:"
                " change it by hand"
            )
        args: dict[str, Any] = {
            "dst": DEFAULT_DST[family],
            "dst_len": 0,
            "gateway": gateway,
            "family": AF[family],
            "table": MAIN_TABLE,
        }
        if routes and routes[0][0]:
            args["priority"] = routes[0][0]
        self.ipr.route("replace" if routes else "add", **args)

    def _del_default_route(self, family: int, gateway: str) -> None:
        try:
            self.ipr.route(
                "del",
                dst=DEFAULT_DST[family],
                dst_len=0,
                gateway=gateway,
                family=AF[family],
                table=MAIN_TABLE,
            )
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:  # already gone
                raise
