"""The changes realserver makes, one frozen dataclass each, and their exact inverses.

Sysctl keys are paths under /proc/sys with slashes (`net/ipv4/conf/eth0.100/arp_ignore`), so
interface names with dots stay unambiguous.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class SetSysctl:
    op: ClassVar[str] = "set_sysctl"
    key: str
    value: int
    previous: int | None  # None: the key did not exist (its interface was created by us)

    def describe(self) -> str:
        return f"sysctl {self.key.replace('/', '.')} = {self.value} (was {self.previous})"


@dataclass(frozen=True)
class CreateLink:
    op: ClassVar[str] = "create_link"
    dev: str
    kind: str  # dummy, ipip, gre, ip6tnl, ip6gre

    def describe(self) -> str:
        return f"create {self.kind} interface {self.dev}"


@dataclass(frozen=True)
class DeleteLink:
    op: ClassVar[str] = "delete_link"
    dev: str
    kind: str

    def describe(self) -> str:
        return f"delete {self.kind} interface {self.dev}"


@dataclass(frozen=True)
class SetLinkUp:
    op: ClassVar[str] = "link_up"
    dev: str

    def describe(self) -> str:
        return f"set {self.dev} up"


@dataclass(frozen=True)
class SetLinkDown:
    op: ClassVar[str] = "link_down"
    dev: str

    def describe(self) -> str:
        return f"set {self.dev} down"


@dataclass(frozen=True)
class AddAddress:
    op: ClassVar[str] = "add_address"
    dev: str
    address: str  # ip/prefix
    label: str | None = None  # IPv4 only
    nodad: bool = False  # IPv6 only

    def describe(self) -> str:
        extra = (f" label {self.label}" if self.label else "") + (" nodad" if self.nodad else "")
        return f"add address {self.address} on {self.dev}{extra}"


@dataclass(frozen=True)
class DelAddress:
    op: ClassVar[str] = "del_address"
    dev: str
    address: str

    def describe(self) -> str:
        return f"remove address {self.address} from {self.dev}"


@dataclass(frozen=True)
class AddFou:
    op: ClassVar[str] = "add_fou"
    port: int
    family: int  # 4 or 6

    def describe(self) -> str:
        return f"add fou port {self.port} gue (IPv{self.family})"


@dataclass(frozen=True)
class DelFou:
    op: ClassVar[str] = "del_fou"
    port: int
    family: int

    def describe(self) -> str:
        return f"remove fou port {self.port} (IPv{self.family})"


@dataclass(frozen=True)
class SetDefaultRoute:
    op: ClassVar[str] = "set_default_route"
    family: int
    gateway: str
    previous: str | None  # the gateway it replaced, None when there was no default route

    def describe(self) -> str:
        return f"IPv{self.family} default route via {self.gateway} (was {self.previous})"


@dataclass(frozen=True)
class DelDefaultRoute:
    op: ClassVar[str] = "del_default_route"
    family: int
    gateway: str

    def describe(self) -> str:
        return f"remove IPv{self.family} default route via {self.gateway}"


Step = (
    SetSysctl
    | CreateLink
    | DeleteLink
    | SetLinkUp
    | SetLinkDown
    | AddAddress
    | DelAddress
    | AddFou
    | DelFou
    | SetDefaultRoute
    | DelDefaultRoute
)

_KINDS: dict[str, type[Step]] = {
    cls.op: cls
    for cls in (
        SetSysctl,
        CreateLink,
        DeleteLink,
        SetLinkUp,
        SetLinkDown,
        AddAddress,
        DelAddress,
        AddFou,
        DelFou,
        SetDefaultRoute,
        DelDefaultRoute,
    )
}


def inverse(step: Step) -> Step | None:
    """The step that undoes `step` exactly; None when there is nothing to undo."""
    match step:
        case SetSysctl(key, value, previous):
            return None if previous is None else SetSysctl(key, previous, value)
        case CreateLink(dev, kind):
            return DeleteLink(dev, kind)
        case DeleteLink(dev, kind):
            return CreateLink(dev, kind)
        case SetLinkUp(dev):
            return SetLinkDown(dev)
        case SetLinkDown(dev):
            return SetLinkUp(dev)
        case AddAddress(dev, address):
            return DelAddress(dev, address)
        case DelAddress(dev, address):
            return AddAddress(dev, address)
        case AddFou(port, family):
            return DelFou(port, family)
        case DelFou(port, family):
            return AddFou(port, family)
        case SetDefaultRoute(family, gateway, previous):
            if previous is None:
                return DelDefaultRoute(family, gateway)
            return SetDefaultRoute(family, previous, gateway)
        case DelDefaultRoute(family, gateway):
            return SetDefaultRoute(family, gateway, None)
    raise TypeError(f"not a step: {step!r}")  # pragma: no cover


def step_to_dict(step: Step) -> dict[str, Any]:
    return {"op": step.op, **asdict(step)}


def step_from_dict(data: Any) -> Step:
    if not isinstance(data, dict) or not isinstance(data.get("op"), str):
        raise ValueError(f"not a step: {data!r}")
    cls = _KINDS.get(data["op"])
    if cls is None:
        raise ValueError(f"unknown step op {data['op']!r}")
    names = {f.name for f in fields(cls)}
    args = {k: v for k, v in data.items() if k != "op"}
    if set(args) - names:
        raise ValueError(f"step {data['op']}: unknown fields {sorted(set(args) - names)}")
    try:
        return cls(**args)
    except TypeError as exc:
        raise ValueError(f"step {data['op']}: {exc}") from None
