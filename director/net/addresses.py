"""Virtual addresses (VIPs) in the kernel, through pyroute2's asyncio netlink API.

Why the async API: pyroute2 0.9's sync `IPRoute` drives its own event loop and refuses to run
inside the daemon's. Each request is one netlink round trip (well under a millisecond), so it is
awaited inline; nothing here blocks the loop for longer.

Everything happens in the caller's network namespace: the daemon runs inside its node's namespace
(`ip netns exec`), so no namespace is ever named here.

Adding and removing are idempotent, and the kernel is read back by one address dump per call:
the daemon never assumes that what it wrote is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from director.config.models import Instance, VirtualAddress

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Scope = Literal["global", "site", "link", "host"]

# rtnetlink scope numbers (/etc/iproute2/rt_scopes).
SCOPES: dict[str, int] = {"global": 0, "site": 200, "link": 253, "host": 254}
SCOPE_NAMES: dict[int, Scope] = {0: "global", 200: "site", 253: "link", 254: "host"}
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


class AddressError(RuntimeError):
    """A VIP could not be added or removed; `failed` says which and why."""

    def __init__(self, message: str, failed: Sequence[tuple[Vip, str]] = ()) -> None:
        super().__init__(message)
        self.failed = list(failed)


class InterfaceNotFound(AddressError):
    def __init__(self, dev: str) -> None:
        super().__init__(f"no interface {dev!r} in this network namespace")
        self.dev = dev


@dataclass(frozen=True, slots=True)
class Vip:
    """One virtual address as the kernel holds it: address/prefix on `dev`."""

    address: IPInterface
    dev: str
    label: str | None = None  # IPv4 only (the kernel has no labels for IPv6)
    scope: Scope = "global"

    def __post_init__(self) -> None:
        if self.label is not None and self.address.version == 6:
            raise ValueError(f"{self.address}: labels exist only for IPv4 addresses")
        if self.scope not in SCOPES:
            raise ValueError(f"{self.address}: unknown scope {self.scope!r}")

    @classmethod
    def from_config(cls, vip: VirtualAddress, interface: str) -> Vip:
        """`interface` is the instance's, used when the VIP names no `dev`."""
        return cls(vip.address, vip.dev or interface, vip.label, vip.scope)

    @property
    def ip(self) -> IPAddress:
        return self.address.ip

    @property
    def family(self) -> int:
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6

    def __str__(self) -> str:
        return f"{self.address} dev {self.dev}"


def instance_vips(instance: Instance) -> list[Vip]:
    """The VIPs of one configured instance, each on its own `dev` or the instance's interface."""
    return [Vip.from_config(v, instance.interface) for v in instance.addresses]


@dataclass(frozen=True, slots=True)
class KernelAddress:
    """One address from the kernel's dump (only the fields the director looks at)."""

    index: int
    address: IPInterface
    label: str | None
    scope: Scope | int
    flags: int

    @property
    def tentative(self) -> bool:
        return bool(self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED))


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the GARP/NA frames of an interface need: its MAC and link-local address."""

    name: str
    index: int
    mac: str
    link_local: ipaddress.IPv6Address | None = None


_T = TypeVar("_T")
_P = ParamSpec("_P")


def _one_at_a_time(
    method: Callable[Concatenate[VipManager, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[VipManager, _P], Coroutine[Any, Any, _T]]:
    """Serialise a manager's calls: the kernel runs one dump at a time per netlink socket
    (EBUSY otherwise), and instances share the manager's socket."""

    @functools.wraps(method)
    async def serialised(self: VipManager, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._lock:
            return await method(self, *args, **kwargs)

    return serialised


class VipManager:
    """Adds, removes and reads back VIPs in the current network namespace.

    One netlink socket for the manager's life, shared by every caller (calls are serialised):
    `async with VipManager() as vips: ...`, or `close()` it. A socket may be injected (tests,
    or a namespace-bound one).
    """

    def __init__(self, ipr: Any | None = None) -> None:
        self._ipr = ipr
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> VipManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
        return self._ipr

    # ------------------------------------------------------------ interfaces

    @_one_at_a_time
    async def index(self, dev: str) -> int:
        """The interface's index, resolved by name on every call (interfaces can be recreated)."""
        return await self._index(dev)

    @_one_at_a_time
    async def link_info(self, dev: str) -> LinkInfo:
        """MAC and link-local address of `dev` (link-local None if it has no usable one)."""
        link = await self._link(dev)
        index = int(link["index"])
        mac = link.get("IFLA_ADDRESS")
        if not mac:
            raise AddressError(f"interface {dev!r} has no hardware address")
        link_local = None
        for a in await self._dump():
            if (
                a.index == index
                and a.address.version == 6
                and a.address.ip.is_link_local
                and not a.tentative
            ):
                link_local = ipaddress.IPv6Address(a.address.ip)
                break
        return LinkInfo(dev, index, str(mac).lower(), link_local)

    # ------------------------------------------------------------ add / remove

    @_one_at_a_time
    async def add(self, vips: Iterable[Vip]) -> list[Vip]:
        """Add the VIPs; those already there are left alone. Returns the ones added now.

        Tries every VIP before raising AddressError for the ones that failed, so one bad VIP
        does not keep the others off a new master.
        """
        added: list[Vip] = []
        failed: list[tuple[Vip, str]] = []
        indexes: dict[str, int | InterfaceNotFound] = {}
        for vip in vips:
            index = await self._index_or_error(vip.dev, indexes)
            if isinstance(index, InterfaceNotFound):
                failed.append((vip, str(index)))
                continue
            try:
                await self.ipr.addr("add", **_request(vip, index))
            except NetlinkError as e:
                # EEXIST: already there, which is what we want (a restart, or a reload).
                if e.code != errno.EEXIST:
                    failed.append((vip, _strerror(e)))
                continue
            added.append(vip)
        if failed:
            raise AddressError(_failure("adding", failed), failed)
        return added

    @_one_at_a_time
    async def remove(self, vips: Iterable[Vip]) -> list[Vip]:
        """Remove the VIPs (exact address/prefix on dev); absent ones are not an error.

        Returns the ones removed now; raises AddressError for the others after trying them all.
        """
        removed: list[Vip] = []
        failed: list[tuple[Vip, str]] = []
        indexes: dict[str, int | InterfaceNotFound] = {}
        for vip in vips:
            index = await self._index_or_error(vip.dev, indexes)
            if isinstance(index, InterfaceNotFound):
                continue  # the interface is gone, and its addresses with it
            if await self._delete(vip.address, index, failed, vip):
                removed.append(vip)
        if failed:
            raise AddressError(_failure("removing", failed), failed)
        return removed

    @_one_at_a_time
    async def present(self, vips: Iterable[Vip]) -> set[Vip]:
        """Which of `vips` the kernel holds now (address, prefix and dev), from one dump."""
        vips = list(vips)
        indexes = await self._indexes({v.dev for v in vips})
        have = {(a.index, a.address) for a in await self._dump()}
        return {v for v in vips if v.dev in indexes and (indexes[v.dev], v.address) in have}

    @_one_at_a_time
    async def remove_leftovers(self, vips: Iterable[Vip]) -> list[KernelAddress]:
        """Remove every copy of a configured VIP still on its dev (a crashed run left it).

        Called at start, before an instance enters BACKUP: a backup that holds its VIP would
        answer ARP for it next to the master. A copy is matched by address and dev, whatever
        its prefix, so a prefix changed in the config between the crash and the restart is
        still cleaned; addresses that are not configured VIPs are never touched. The caller
        skips address-owner instances, whose VIPs are the node's own addresses.
        """
        vips = list(vips)
        indexes = await self._indexes({v.dev for v in vips})
        wanted = {(indexes[v.dev], v.ip) for v in vips if v.dev in indexes}
        found = [a for a in await self._dump() if (a.index, a.address.ip) in wanted]
        removed: list[KernelAddress] = []
        failed: list[tuple[Vip, str]] = []
        for a in found:
            vip = next(v for v in vips if v.ip == a.address.ip and indexes.get(v.dev) == a.index)
            if await self._delete(a.address, a.index, failed, vip):
                removed.append(a)
        if failed:
            raise AddressError(_failure("removing leftover", failed), failed)
        return removed

    # ------------------------------------------------------------ internals

    async def _index(self, dev: str) -> int:
        return int((await self._link(dev))["index"])

    async def _link(self, dev: str) -> Any:
        try:
            links = await self.ipr.link("get", ifname=dev)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                raise InterfaceNotFound(dev) from None
            raise AddressError(f"looking up interface {dev!r}: {_strerror(e)}") from None
        if not links:
            raise InterfaceNotFound(dev)
        return links[0]

    async def _delete(
        self, address: IPInterface, index: int, failed: list[tuple[Vip, str]], vip: Vip
    ) -> bool:
        try:
            await self.ipr.addr(
                "del",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                family=_family(address),
            )
        except NetlinkError as e:
            # EADDRNOTAVAIL: not there (removed by someone else, or never added).
            if e.code != errno.EADDRNOTAVAIL:
                failed.append((vip, _strerror(e)))
            return False
        return True

    async def _index_or_error(
        self, dev: str, cache: dict[str, int | InterfaceNotFound]
    ) -> int | InterfaceNotFound:
        if dev not in cache:
            try:
                cache[dev] = await self._index(dev)
            except InterfaceNotFound as e:
                cache[dev] = e
        return cache[dev]

    async def _indexes(self, devs: Iterable[str]) -> dict[str, int]:
        """Indexes of the devs that exist (a missing one holds no address)."""
        out: dict[str, int] = {}
        for dev in devs:
            with contextlib.suppress(InterfaceNotFound):
                out[dev] = await self._index(dev)
        return out

    async def _dump(self) -> list[KernelAddress]:
        out: list[KernelAddress] = []
        async for msg in await self.ipr.addr("dump"):
            addr = msg.get("IFA_ADDRESS")
            # Point-to-point IPv4 addresses carry the local one in IFA_LOCAL.
            local = msg.get("IFA_LOCAL") or addr
            if local is None:
                continue
            flags = msg.get("IFA_FLAGS")
            scope = int(msg["scope"])
            out.append(
                KernelAddress(
                    index=int(msg["index"]),
                    address=ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"),
                    label=msg.get("IFA_LABEL"),
                    scope=SCOPE_NAMES.get(scope, scope),
                    flags=int(flags if flags is not None else msg["flags"]),
                )
            )
        return out


class InstanceVips:
    """One VRRP instance's VIPs behind the plain `add()` / `remove()` its runner calls.

    The runner calls them from the event loop and must not wait, so they only record the wish;
    one task per instance applies the latest wish in order. An add followed at once by a remove
    thus ends removed, never interleaved. `settled()` waits for the kernel to match (the
    announcer waits for it so a GARP never precedes its VIP). Failures are logged and counted,
    and retried on the next add or remove. For an address owner, nothing is ever touched.
    """

    def __init__(self, instance: Instance, manager: VipManager | None = None) -> None:
        self.name = instance.name
        self.vips = instance_vips(instance)
        self.owner = instance.address_owner
        self.manager = manager or VipManager()
        self._owns_manager = manager is None
        self._wanted: bool | None = None
        self._applied: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self.errors = 0
        self.last_error: str | None = None

    @property
    def held(self) -> bool:
        """True once the VIPs were last added (as far as this process knows)."""
        return bool(self._applied)

    def add(self) -> None:
        self._want(True)

    def remove(self) -> None:
        self._want(False)

    async def settled(self) -> None:
        """Wait until the last add or remove reached the kernel (or failed)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def remove_leftovers(self) -> list[KernelAddress]:
        """At start, before BACKUP: remove what a crashed run left (see VipManager)."""
        if self.owner:
            return []
        await self.settled()
        removed = await self.manager.remove_leftovers(self.vips)
        for a in removed:
            log.warning("%s: removed leftover VIP %s (index %d)", self.name, a.address, a.index)
        return removed

    async def present(self) -> set[Vip]:
        return await self.manager.present(self.vips)

    async def aclose(self) -> None:
        await self.settled()
        if self._owns_manager:
            self.manager.close()

    def _want(self, held: bool) -> None:
        if self.owner:
            return
        self._wanted = held
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._apply())

    async def _apply(self) -> None:
        while self._wanted is not None and self._applied != self._wanted:
            target = self._wanted
            try:
                if target:
                    await self.manager.add(self.vips)
                else:
                    await self.manager.remove(self.vips)
            except AddressError as e:
                self.errors += 1
                self.last_error = str(e)
                log.error("%s: %s", self.name, e)
                # Unknown now, so the next add or remove tries again; no retry loop here.
                self._applied = None
                if self._wanted == target:
                    return
            else:
                self._applied = target


def _request(vip: Vip, index: int) -> dict[str, Any]:
    req: dict[str, Any] = {
        "index": index,
        "address": str(vip.ip),
        "prefixlen": vip.address.network.prefixlen,
        "family": vip.family,
        "scope": SCOPES[vip.scope],
    }
    if vip.address.version == 4:
        if vip.label is not None:
            req["label"] = vip.label
    else:
        # No DAD: a VIP moving to a new master must answer at once, not after ~1 s of DAD.
        req["flags"] = IFA_F_NODAD
    return req


def _family(address: IPInterface) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _strerror(e: NetlinkError) -> str:
    return f"{errno.errorcode.get(e.code, str(e.code))} ({e.args[1] if len(e.args) > 1 else e})"


def _failure(doing: str, failed: Sequence[tuple[Vip, str]]) -> str:
    return f"{doing} VIPs failed: " + "; ".join(f"{vip}: {why}" for vip, why in failed)
