"""Typed, frozen models of the config file (the contract in docs/config.md).

Field-level checks live here; rules that relate several fields or sections live in rules.py so
that each error can point at the exact key that is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Annotated, Any, Literal, overload

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from director.config.durations import Duration

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_NAME = r"^[A-Za-z0-9_.:-]+$"
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME)]
IfName = Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[^\s/:]+$")]
Command = Annotated[list[str], Field(min_length=1)]
Port = Annotated[int, Field(ge=0, le=65535)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shorthand_config(description: str) -> ConfigDict:
    """A model that may also be written as one string; the JSON schema says so for editors."""

    def extra(schema: dict[str, Any]) -> None:
        whole = dict(schema)
        schema.clear()
        schema["anyOf"] = [{"type": "string", "description": description}, whole]

    return ConfigDict(extra="forbid", frozen=True, json_schema_extra=extra)


def _expand(value: Any, field: str) -> Any:
    return {field: value} if isinstance(value, str) else value


def _parse_address(value: Any) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected an IP address, got {value!r}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None


Address = Annotated[IPAddress, BeforeValidator(_parse_address)]


def parse_endpoint(value: str) -> tuple[IPAddress, int | None]:
    """`10.0.0.9`, `10.0.0.9:80`, `[2001:db8::9]:80` or `2001:db8::9`."""
    text = value.strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if match:
        host, port = match.group(1), match.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    address = _parse_address(host)
    if port is None:
        return address, None
    number = int(port) if port.isdigit() else -1
    if not 0 < number <= 65535:
        raise ValueError(f"port {port!r} in {value!r} is not a number between 1 and 65535")
    return address, number


# ---------------------------------------------------------------- node


class Http(Model):
    listen: str = "127.0.0.1:9650"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _, port = parse_endpoint(value)
        if port is None:
            raise ValueError(f"listen {value!r} needs a port, as in 127.0.0.1:9650")
        return value


class Node(Model):
    name: Name = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "director")
    control_socket: str = "/run/director/director.sock"
    state_dir: str = "/run/director"
    http: Http | None = None


# ---------------------------------------------------------------- vrrp


class VirtualAddress(Model):
    model_config = _shorthand_config("address with optional /prefix")

    address: IPInterface
    dev: IfName | None = None
    label: Annotated[str, Field(min_length=1, max_length=15)] | None = None
    scope: Literal["global", "site", "link", "host"] = "global"

    @model_validator(mode="before")
    @classmethod
    def _shorthand_form(cls, value: Any) -> Any:
        return _expand(value, "address")

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"expected an address such as 10.0.0.100/24, got {value!r}")
        try:
            # A bare address is a host route, as keepalived does (/32 or /128).
            return ipaddress.ip_interface(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a valid address or address/prefix") from None

    @property
    def ip(self) -> IPAddress:
        return self.address.ip

    @property
    def family(self) -> int:
        return self.address.version


class Unicast(Model):
    source: Address | None = None
    peers: Annotated[list[Address], Field(min_length=1)]


class Auth(Model):
    type: Literal["pass", "ah"]
    # VRRPv2 carries 8 octets of password; keepalived silently truncates longer ones.
    password: Annotated[str, Field(min_length=1, max_length=8)]


class TrackInterface(Model):
    model_config = _shorthand_config("interface name (weight 0: down = FAULT)")

    name: IfName
    # 0: link down puts the instance in FAULT; otherwise the priority moves by `weight` while down.
    weight: Annotated[int, Field(ge=-253, le=253)] = 0

    @model_validator(mode="before")
    @classmethod
    def _shorthand_form(cls, value: Any) -> Any:
        return _expand(value, "name")


class TrackScript(Model):
    name: Name
    command: Command
    interval: Duration = 1.0
    timeout: Duration | None = None
    weight: Annotated[int, Field(ge=-253, le=253)] = 0
    rise: Annotated[int, Field(ge=1, le=1000)] = 1
    fall: Annotated[int, Field(ge=1, le=1000)] = 1


class TrackFile(Model):
    path: Annotated[str, Field(min_length=1)]
    # The file holds an integer; the priority moves by integer * weight (keepalived's track_file).
    weight: Annotated[int, Field(ge=-254, le=254)] = 1


class Track(Model):
    interfaces: list[TrackInterface] = []
    scripts: list[TrackScript] = []
    files: list[TrackFile] = []


class Notify(Model):
    master: Command | None = None
    backup: Command | None = None
    fault: Command | None = None
    stop: Command | None = None
    # Receives keepalived's arguments: TYPE NAME STATE PRIORITY.
    generic: Command | None = None
    timeout: Duration = 10.0


class Garp(Model):
    delay: Duration = 5.0  # second burst after becoming master (keepalived garp_master_delay)
    repeat: Annotated[int, Field(ge=1, le=255)] = 5
    interval: Duration = 0.0  # between the frames of one burst
    refresh: Duration = 0.0  # 0 = no periodic refresh while master


class Instance(Model):
    name: Name
    interface: IfName
    vrid: Annotated[int, Field(ge=1, le=255)]
    priority: Annotated[int, Field(ge=1, le=255)] = 100
    version: Literal[2, 3] = 3
    advert_interval: Duration = 1.0
    preempt: bool = True
    preempt_delay: Annotated[Duration, Field(le=1000)] = 0.0
    addresses: Annotated[list[VirtualAddress], Field(min_length=1)]
    # The VIPs are this node's own interface addresses (RFC 5798 "IP address owner").
    address_owner: bool = False
    unicast: Unicast | None = None
    auth: Auth | None = None
    track: Track = Track()
    notify: Notify = Notify()
    garp: Garp = Garp()
    # Make-before-break handoff on a planned stop; false gives the strict RFC behaviour.
    graceful_handoff: bool = True

    @property
    def family(self) -> int:
        return self.addresses[0].family


class SyncGroup(Model):
    name: Name
    instances: Annotated[list[Name], Field(min_length=1)]
    notify: Notify = Notify()


class Vrrp(Model):
    instances: list[Instance] = []
    sync_groups: list[SyncGroup] = []


# ---------------------------------------------------------------- services

Scheduler = Literal[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"
]
SchedulerFlag = Literal["sh-fallback", "sh-port", "mh-fallback", "mh-port"]
Forwarding = Literal["nat", "dr", "tun"]


class Tunnel(Model):
    type: Literal["ipip", "gue", "gre"] = "ipip"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # GUE's UDP port
    checksum: Literal["none", "csum", "remcsum"] = "none"


class Persistence(Model):
    timeout: Duration = 300.0
    # IPv4 netmask (255.255.255.0) or an IPv6 prefix length, grouping clients.
    netmask: str | int | None = None


class SorryServer(Model):
    model_config = _shorthand_config("address[:port], [v6]:port")

    address: Address
    port: Port | None = None

    @model_validator(mode="before")
    @classmethod
    def _endpoint(cls, value: Any) -> Any:
        if isinstance(value, str):
            address, port = parse_endpoint(value)
            return {"address": address, "port": port}
        return value


class TcpCheck(Model):
    pass


StatusRange = Annotated[str | int, Field(description="a status (200) or range (200-299)")]


class HttpCheck(Model):
    method: Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"] = "GET"
    path: Annotated[str, Field(pattern=r"^/")] = "/"
    host: str | None = None
    headers: dict[str, str] = {}
    status: Annotated[list[StatusRange], Field(min_length=1)] = ["200-299"]
    body_regex: str | None = None
    body_no_regex: str | None = None
    digest: str | None = None  # "md5:HEX" or "sha256:HEX" of the body
    tls: bool = False
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sni: str | None = None

    @field_validator("status")
    @classmethod
    def _status(cls, value: list[str | int]) -> list[str | int]:
        for item in value:
            low, _, high = str(item).partition("-")
            bounds = [low, high] if high else [low]
            if not all(b.isdigit() and 100 <= int(b) <= 599 for b in bounds) or (
                high and int(low) > int(high)
            ):
                raise ValueError(f"{item!r} is not an HTTP status (100-599) or range (200-299)")
        return value

    @field_validator("body_regex", "body_no_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None:
            algo, _, hexdigest = value.partition(":")
            size = {"md5": 32, "sha256": 64}.get(algo, 0)
            if not size or not re.fullmatch(rf"[0-9a-fA-F]{{{size}}}", hexdigest):
                raise ValueError(f"digest {value!r} must be md5:<32 hex> or sha256:<64 hex>")
        return value


def _hex_bytes(value: str | None) -> str | None:
    """keepalived's HEX_STR: hex digits, spaces allowed between bytes."""
    if value is not None:
        try:
            bytes.fromhex(value)
        except ValueError:
            raise ValueError(f"{value!r} is not hex bytes such as '0a 1b 2c'") from None
    return value


class UdpCheck(Model):
    # The datagram sent: text (UTF-8) or payload_hex; one of the two.
    payload: str = ""
    payload_hex: str | None = None
    # The reply must match this regular expression (searched), or start with expect_hex's bytes.
    expect: str | None = None
    expect_hex: str | None = None
    # Without an expectation a check passes when no ICMP error comes back within the timeout;
    # require_reply makes silence a failure too.
    require_reply: bool = False

    @field_validator("payload_hex", "expect_hex")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return _hex_bytes(value)

    @field_validator("expect")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value.encode())
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value


class DnsCheck(Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    type: Literal["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT"] = "A"
    rcode: Literal["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED"] = "NOERROR"
    # One record of the answer section must read like this (as dig +short prints it).
    answer: str | None = None
    recursion: bool = True  # the RD flag: true for resolvers, false for authoritative servers

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        labels = value.rstrip(".").split(".") if value != "." else []
        if any(not 0 < len(label) <= 63 for label in labels):
            raise ValueError(f"{value!r} is not a domain name (labels of 1-63 characters)")
        return value


class MiscCheck(Model):
    # `{address}` and `{port}` in an argument become the real server's (as exact tokens).
    command: Command
    # Exit codes 2-255 set the weight to code - 2 (keepalived's misc_dynamic).
    dynamic_weight: bool = False


class FileCheck(Model):
    # The file holds an integer: 0 or more is up with that weight, negative is down.
    path: Annotated[str, Field(min_length=1)]


class Check(Model):
    tcp: TcpCheck | None = None
    http: HttpCheck | None = None
    udp: UdpCheck | None = None
    dns: DnsCheck | None = None
    misc: MiscCheck | None = None
    file: FileCheck | None = None
    interval: Duration = 2.0
    timeout: Duration = 1.0
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    retry_delay: Duration = 1.0
    rise: Annotated[int, Field(ge=1, le=1000)] = 1
    fall: Annotated[int, Field(ge=1, le=1000)] = 1
    # Start a real server down until its first success (keepalived's alpha).
    alpha: bool = True
    connect_ip: Address | None = None
    connect_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    bind_to: Address | None = None
    # Run when the real server comes up or goes down (keepalived's notify_up/notify_down).
    notify_up: Command | None = None
    notify_down: Command | None = None
    notify_timeout: Duration = 10.0

    @property
    def kinds(self) -> list[str]:
        return [k for k in CHECKERS if getattr(self, k)]


CHECKERS = ("tcp", "http", "udp", "dns", "misc", "file")


@overload
def inherited_check(service: Check | None, own: Check) -> Check: ...
@overload
def inherited_check(service: Check | None, own: None) -> Check | None: ...
@overload
def inherited_check(service: Check | None, own: Check | None) -> Check | None: ...
def inherited_check(service: Check | None, own: Check | None) -> Check | None:
    """A real server's check: the keys its own `check` sets, over the service's (as keepalived's
    real servers inherit delay_loop and the rest from their virtual server). Naming a checker
    replaces the service's checker with it, settings and all."""
    if own is None or service is None:
        return own or service
    given = own.model_fields_set
    update = {key: getattr(own, key) for key in given}
    if given.intersection(CHECKERS):
        update.update({key: None for key in CHECKERS if key not in given})
    return service.model_copy(update=update)


class RealServer(Model):
    address: Address
    port: Port | None = None  # defaults to the service's port
    weight: Annotated[int, Field(ge=0, le=65535)] = 1
    forwarding: Forwarding | None = None  # defaults to the service's
    tunnel: Tunnel | None = None
    upper_threshold: Annotated[int, Field(ge=0)] = 0
    lower_threshold: Annotated[int, Field(ge=0)] = 0
    check: Check | None = None  # over the service's check, key by key (inherited_check)


FwMark = Annotated[int, Field(ge=1, le=0xFFFFFFFF)]
MAX_RANGE = 4096


def expand_vips(text: str) -> list[IPAddress]:
    """`192.0.2.10`, or a range `192.0.2.10-19` (last octet, as keepalived writes it),
    `192.0.2.10-192.0.2.19`, `2001:db8::10-1f` (last hextet, hex)."""
    first, dash, last = text.strip().partition("-")
    start = _parse_address(first.strip())
    if not dash:
        return [start]
    last = last.strip()
    if "." in last or ":" in last:
        end = _parse_address(last)
    else:
        try:
            tail = int(last, 16 if start.version == 6 else 10)
        except ValueError:
            raise ValueError(f"range end {last!r} in {text!r} is not a number") from None
        unit = 0xFFFF if start.version == 6 else 0xFF
        if not 0 <= tail <= unit:
            raise ValueError(f"range end {last!r} in {text!r} is out of range")
        end = ipaddress.ip_address((int(start) & ~unit) | tail)
    if end.version != start.version or int(end) < int(start):
        raise ValueError(f"range {text!r} must go up within one address family")
    if int(end) - int(start) >= MAX_RANGE:
        raise ValueError(f"range {text!r} holds more than {MAX_RANGE} addresses")
    return [ipaddress.ip_address(n) for n in range(int(start), int(end) + 1)]


def _vip_entry(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"expected an address or range such as 192.0.2.10-19, got {value!r}")
    expand_vips(value)
    return value.strip()


VipEntry = Annotated[
    str,
    BeforeValidator(_vip_entry),
    Field(description="an address, or a range: 192.0.2.10-19, 192.0.2.10-192.0.2.19"),
]


class Service(Model):
    name: Name
    vip: Address | None = None
    fwmark: FwMark | None = None
    # A service group (keepalived's virtual_server_group): one definition for several VIPs,
    # ranges and marks.
    vips: list[VipEntry] = []
    fwmarks: list[FwMark] = []
    family: Literal[4, 6] | None = None  # fwmark services only; defaults to 4
    port: Port | None = None
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    scheduler: Scheduler = "wlc"
    scheduler_flags: list[SchedulerFlag] = []
    forwarding: Forwarding = "nat"
    tunnel: Tunnel | None = None
    persistence: Persistence | None = None
    one_packet: bool = False
    check: Check | None = None
    on_failure: Literal["remove", "inhibit"] = "remove"
    drain: Duration = 0.0
    slow_start: Duration = 0.0
    quorum: Annotated[int, Field(ge=0)] = 0
    hysteresis: Annotated[int, Field(ge=0)] = 0
    quorum_up: Command | None = None
    quorum_down: Command | None = None
    sorry_server: SorryServer | None = None
    real_servers: list[RealServer] = []

    @property
    def addresses(self) -> list[IPAddress]:
        """Every virtual address of the service, ranges expanded, in order, without repeats."""
        out = [self.vip] if self.vip is not None else []
        for entry in self.vips:
            out.extend(expand_vips(entry))
        return list(dict.fromkeys(out))

    @property
    def marks(self) -> list[int]:
        out = [self.fwmark] if self.fwmark is not None else []
        return list(dict.fromkeys([*out, *self.fwmarks]))


# ---------------------------------------------------------------- ipvs


class SyncDaemon(Model):
    """The kernel's connection sync daemon, following a VRRP instance (keepalived's
    lvs_sync_daemon): master while the instance is MASTER, backup otherwise."""

    instance: Name
    interface: IfName
    sync_id: Annotated[int, Field(ge=0, le=255)] = 0
    maxlen: Annotated[int, Field(ge=0, le=65507)] = 0  # 0: the kernel's default (MTU based)
    group: Address | None = None  # multicast group; default 224.0.0.81
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # default 8848
    ttl: Annotated[int, Field(ge=1, le=255)] | None = None  # default 1


class IpvsTimeouts(Model):
    """ipvsadm --set: 0 keeps the kernel's value."""

    tcp: Duration = 0.0
    tcpfin: Duration = 0.0
    udp: Duration = 0.0


class Ipvs(Model):
    # Own the whole IPVS table: remove services the config does not name (ipvsadm -C style).
    flush: bool = False
    # Re-read the kernel and repair drift (an operator's ipvsadm -C) this often.
    resync_interval: Annotated[Duration, Field(ge=0.1, le=3600)] = 10.0
    # Set the sysctls the forwarding modes need (docs/ipvs.md lists them) at start.
    sysctls: bool = True
    sync_daemon: SyncDaemon | None = None
    timeouts: IpvsTimeouts | None = None


# ---------------------------------------------------------------- root


class Config(Model):
    node: Node = Node()
    vrrp: Vrrp = Vrrp()
    ipvs: Ipvs = Ipvs()
    services: list[Service] = []
