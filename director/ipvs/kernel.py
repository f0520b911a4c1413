"""The blocking IPVS executor: dumps the kernel's table and applies planned operations.

One NETLINK_GENERIC socket, opened in the given network namespace. Requests go out in batches
(500 per sendmsg by default) with only the last of each batch asking for an ack: the kernel
processes a datagram's messages in order, reports every failure unasked and acks the last, so
one read loop per batch matches errors to operations by sequence number. LAB.md measured this
at parity with ipvsadm-restore where one request per call (pyroute2's IPVS API) was 14x slower.

The daemon calls it through asyncio.to_thread; the CLI calls it directly. Not for concurrent use
from several threads (a lock makes that safe, not fast).
"""

from __future__ import annotations

import ctypes
import errno as errnos
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from director.ipvs import netlink as nl
from director.ipvs.model import (
    FORWARDING_NAMES,
    FWD_TUNNEL,
    TUN_FLAG_REMCSUM,
    TUN_GUE,
    TUNNEL_TYPES,
    DestKey,
    DestSpec,
    Service,
    ServiceKey,
    SyncDaemon,
)
from director.ipvs.plan import AddDest, AddService, DelDest, DelService, Op, SetDest, SetService

__all__ = [
    "DEFAULT_BATCH",
    "IpvsError",
    "IpvsKernel",
    "OpFailure",
    "SyncDaemon",
    "Timeouts",
    "explain",
]

Timeouts = nl.Timeouts

DEFAULT_BATCH = 500
NETNS_RUN_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
# Room for every error report of a whole failing batch (each is a small skb, but the kernel
# charges its truesize, about 1 KiB, to this buffer) and for big dump chunks.
RCVBUF = 8 << 20
SNDBUF = 4 << 20
RECV_SIZE = 1 << 16  # a dump chunk is at most 32 KiB
# Bounds on the read loops: far beyond anything the kernel sends for one request.
MAX_DATAGRAMS_PER_BATCH = 100_000
MAX_DUMP_DATAGRAMS = 10_000_000
# The kernel answers within the sendmsg or recvmsg call itself; a wait this long means no answer
# is coming. Enforced by the kernel (SO_RCVTIMEO), so a receive costs no extra poll().
REPLY_TIMEOUT = 60.0
_TUNNEL_TYPE_NAMES = {v: k for k, v in TUNNEL_TYPES.items()}


class IpvsError(Exception):
    """IPVS cannot be reached or refused a request that is not a planned operation.

    unavailable: the kernel has no IPVS at all (ip_vs not loaded), so its table is empty."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class OpFailure:
    """A planned operation the kernel (or the encoder) refused, in operator terms."""

    op: Op
    errno: int
    message: str

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------- messages for operators


def _subject(op: Op) -> str:
    match op:
        case AddService(key, _) | SetService(key, _, _) | DelService(key):
            return f"service {key}"
        case AddDest(service, key, _) | SetDest(service, key, _, _) | DelDest(service, key):
            return f"real server {key} in service {service}"
    raise TypeError(op)


def _verb(op: Op) -> str:
    match op:
        case AddService() | AddDest():
            return "add"
        case SetService() | SetDest():
            return "change"
    return "delete"


def _dest_einval(service: ServiceKey, key: DestKey, spec: DestSpec) -> str:
    if spec.forwarding == FWD_TUNNEL and spec.tun_type == TUN_GUE and spec.tun_port == 0:
        return "a gue tunnel needs a port (tunnel port is 0)"
    if key.family != service.family:
        return (
            "a real server of another address family than its service needs tun forwarding, "
            "and no sync daemon may run"
        )
    return (
        f"{key.address} is not a usable unicast address here (for IPv4 the namespace needs its "
        "routing: is lo up?)"
    )


def explain(op: Op, err: int, text: str = "") -> str:
    """Why op failed, naming the service and real server, as an operator would want it."""
    reason = ""
    match op, err:
        case ((AddService(_, spec) | SetService(_, spec, _)), errnos.ENOENT):
            reason = (
                f"scheduler '{spec.scheduler}' is not available: kernel module "
                f"ip_vs_{spec.scheduler} missing?"
            )
        case AddService(key, _), errnos.EEXIST:
            reason = f"service {key} already exists"
        case ((AddService(key, spec) | SetService(key, spec, _)), errnos.EINVAL) if (
            key.family == socket.AF_INET6 and not 1 <= spec.netmask <= 128
        ):
            reason = f"an IPv6 persistence netmask is a prefix length 1-128, not {spec.netmask}"
        case ((AddDest(service, key, spec) | SetDest(service, key, spec, _)), errnos.EINVAL):
            reason = _dest_einval(service, key, spec)
        case ((AddDest(_, _, spec) | SetDest(_, _, spec, _)), errnos.ERANGE):
            reason = (
                f"lower threshold {spec.lower_threshold} is above upper threshold "
                f"{spec.upper_threshold}"
            )
        case ((SetService(key, _, _) | DelService(key)), errnos.ESRCH):
            reason = f"service {key} does not exist"
        case ((AddDest(key, _, _) | SetDest(key, _, _, _) | DelDest(key, _)), errnos.ESRCH):
            reason = f"service {key} does not exist"
        case AddDest(service, key, _), errnos.EEXIST:
            reason = f"real server {key} already exists in service {service}"
        case ((SetDest(service, key, _, _) | DelDest(service, key)), errnos.ENOENT):
            reason = f"real server {key} does not exist in service {service}"
        case _, errnos.EAFNOSUPPORT:
            reason = "address family not supported by the kernel (IPv6 disabled?)"
        case _, errnos.EPERM:
            reason = "not permitted (needs CAP_NET_ADMIN)"
        case _:
            name = errnos.errorcode.get(err, str(err))
            reason = f"{os.strerror(err) if err > 0 else 'refused'} ({name})"
    if text:
        reason += f"; kernel: {text}"
    return f"{failing(op)}: {reason}"


def failing(op: Op) -> str:
    """The start of every failure message: what could not be done."""
    return f"cannot {_verb(op)} {_subject(op)}"


def validate(op: Op) -> str | None:
    """What the kernel would accept silently but is wrong, or cannot be sent at all."""
    if (
        isinstance(op, AddDest | SetDest)
        and op.spec.forwarding == FWD_TUNNEL
        and op.spec.tun_type not in _TUNNEL_TYPE_NAMES
    ):
        names = ", ".join(TUNNEL_TYPES)
        return f"tunnel type {op.spec.tun_type} is not one of {names}"
    if isinstance(op, AddDest | SetDest) and op.spec.forwarding not in FORWARDING_NAMES:
        return f"forwarding method {op.spec.forwarding} is not nat, dr or tun"
    if (
        isinstance(op, AddDest | SetDest)
        and op.spec.forwarding == FWD_TUNNEL
        and op.spec.tun_type != TUN_GUE
        and op.spec.tun_flags & TUN_FLAG_REMCSUM
    ):
        # The kernel stores it and ignores it; ipvsadm refuses it.
        kind = _TUNNEL_TYPE_NAMES[op.spec.tun_type]
        return f"remote checksum offload (remcsum) is for gue tunnels, not {kind}"
    return None


# ---------------------------------------------------------------- socket


def _setns_function() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    setns: Callable[[int, int], int] = libc.setns
    return setns


def _netns_path(netns: str) -> Path:
    return Path(netns) if "/" in netns else NETNS_RUN_DIR / netns


def _open_socket(netns: str | None) -> socket.socket:
    """A generic netlink socket, created inside netns (its namespace is fixed at creation)."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 16)
    path = _netns_path(netns)
    result: list[socket.socket | BaseException] = []

    # A thread of its own enters the namespace and ends there: the caller's thread never moves.
    def enter_and_open() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _setns_function()(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns({path}): {os.strerror(code)}")
            finally:
                os.close(fd)
            result.append(
                socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 16)
            )
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=enter_and_open, name=f"ipvs-netns-{netns}")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, FileNotFoundError):
        raise IpvsError(f"network namespace {netns!r} not found ({path})") from outcome
    if isinstance(outcome, BaseException):
        raise IpvsError(f"cannot open a netlink socket in network namespace {netns!r}: {outcome}")
    return outcome


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: beyond net.core.[rw]mem_max
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


class IpvsKernel:
    """The kernel's IPVS table in one network namespace (the caller's when netns is None)."""

    FAMILY_NAME = nl.IPVS_GENL_NAME  # a class attribute so that a test can ask for a missing one

    def __init__(self, netns: str | None = None, *, batch_size: int = DEFAULT_BATCH) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.netns = netns
        self.batch_size = batch_size
        # sendmsg calls made by apply(): what a test or a benchmark shows as "one batch".
        self.batches_sent = 0
        # every sendmsg, dumps and single requests included
        self.requests_sent = 0
        self._lock = threading.Lock()
        self._seq = 0
        self._buf = bytearray(RECV_SIZE)
        self._sock = _open_socket(netns)
        try:
            self._sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_CAP_ACK, 1)
            self._sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_EXT_ACK, 1)
            _set_buffer(self._sock, 33, socket.SO_RCVBUF, RCVBUF)  # 33: SO_RCVBUFFORCE
            _set_buffer(self._sock, 32, socket.SO_SNDBUF, SNDBUF)  # 32: SO_SNDBUFFORCE
            seconds = int(REPLY_TIMEOUT)
            timeval = struct.pack("=qq", seconds, int((REPLY_TIMEOUT - seconds) * 1e6))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            self._sock.bind((0, 0))
            self.family = self._resolve_family()
        except BaseException:
            self._sock.close()
            raise

    # ------------------------------------------------------------ plumbing

    def __enter__(self) -> IpvsKernel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self, count: int = 1) -> int:
        first = self._seq + 1
        self._seq += count
        return first

    def _send(self, data: bytes) -> None:
        self._sock.send(data)
        self.requests_sent += 1

    def _recv(self) -> int:
        try:
            return self._sock.recv_into(self._buf)
        except OSError as exc:
            if exc.errno == errnos.ENOBUFS:
                raise IpvsError(
                    "the kernel dropped netlink replies (receive buffer overflow): the "
                    "outcome of the last requests is unknown, dump to see the table"
                ) from exc
            if exc.errno in (errnos.EAGAIN, errnos.EWOULDBLOCK):
                raise IpvsError(f"no reply from the kernel within {REPLY_TIMEOUT:g} s") from exc
            raise

    def _datagrams(self, bound: int) -> Iterator[bytes]:
        for _ in range(bound):
            size = self._recv()
            yield bytes(memoryview(self._buf)[:size])
        raise IpvsError(f"no end of reply after {bound} datagrams")

    def _request(self, data: bytes, seq: int) -> list[nl.Message]:
        """Send one request that asks for an ack; its replies before the ack. Raises
        NetlinkError if the kernel refused it."""
        self._send(data)
        replies: list[nl.Message] = []
        for datagram in self._datagrams(MAX_DATAGRAMS_PER_BATCH):
            for msg in nl.parse_messages(datagram):
                if msg.seq != seq:
                    continue  # a late reply to an earlier request
                if msg.type == nl.NLMSG_ERROR:
                    ack = nl.decode_error(msg)
                    if ack.errno:
                        raise nl.NetlinkError(ack.errno, seq, ack.text)
                    return replies
                replies.append(msg)
        raise AssertionError("unreachable")  # _datagrams raises at its bound

    def _dump(self, data: bytes, seq: int) -> list[bytes]:
        """Send one dump request; the bodies of its messages."""
        self._send(data)
        bodies: list[bytes] = []
        for datagram in self._datagrams(MAX_DUMP_DATAGRAMS):
            for msg in nl.parse_messages(datagram):
                if msg.seq != seq:
                    continue
                if msg.type == nl.NLMSG_DONE:
                    return bodies
                if msg.type == nl.NLMSG_ERROR:
                    ack = nl.decode_error(msg)
                    raise nl.NetlinkError(ack.errno, seq, ack.text)
                bodies.append(msg.body)
        raise AssertionError("unreachable")

    def _resolve_family(self) -> int:
        seq = self._next_seq()
        try:
            replies = self._request(nl.encode_get_family(seq, self.FAMILY_NAME), seq)
        except nl.NetlinkError as exc:
            if exc.errno == errnos.ENOENT:
                raise IpvsError(
                    "the kernel has no IPVS (generic netlink family 'IPVS' not found): "
                    "load the ip_vs kernel module (modprobe ip_vs)",
                    unavailable=True,
                ) from exc
            raise IpvsError(f"cannot resolve the IPVS netlink family: {exc}") from exc
        for msg in replies:
            if msg.type == nl.GENL_ID_CTRL:
                return nl.decode_family_id(msg.body)
        raise IpvsError("no reply to the IPVS netlink family lookup")

    def _simple(self, what: str, build: Callable[[int], bytes]) -> list[nl.Message]:
        with self._lock:
            seq = self._next_seq()
            try:
                return self._request(build(seq), seq)
            except nl.NetlinkError as exc:
                raise IpvsError(f"{what}: {exc}") from exc

    # ------------------------------------------------------------ table

    def dump(self) -> dict[ServiceKey, Service]:
        """The whole table: one service dump, then one real-server dump per service."""
        with self._lock:
            seq = self._next_seq()
            try:
                bodies = self._dump(nl.encode_dump_services(self.family, seq), seq)
            except nl.NetlinkError as exc:
                raise IpvsError(f"cannot dump IPVS services: {exc}") from exc
            table: dict[ServiceKey, Service] = {}
            view = memoryview(self._buf)
            for body in bodies:
                key, spec = nl.decode_service(body)
                seq = self._next_seq()
                self._send(nl.encode_dump_dests(self.family, seq, key))
                dests: dict[DestKey, DestSpec] = {}
                # Decoded straight from the receive buffer: this loop runs once per service
                # on every resync.
                for _ in range(MAX_DUMP_DATAGRAMS):
                    size = self._recv()
                    try:
                        if nl.decode_dest_dump(view[:size], seq, key.family, dests):
                            break
                    except nl.NetlinkError as exc:
                        raise IpvsError(f"cannot dump the real servers of {key}: {exc}") from exc
                else:
                    raise IpvsError(f"no end of the real-server dump of {key}")
                table[key] = Service(key, spec, dests)
            return table

    def apply(self, ops: Sequence[Op]) -> list[OpFailure]:
        """Run ops in order, batch_size per sendmsg, past failures; what failed, in op order."""
        failures: list[OpFailure] = []
        with self._lock:
            start = 0
            while start < len(ops):
                chunk = ops[start : start + self.batch_size]
                start += len(chunk)
                failures.extend(self._apply_batch(chunk))
        return failures

    def _apply_batch(self, chunk: Sequence[Op]) -> list[OpFailure]:
        failures: dict[int, OpFailure] = {}
        sendable: list[tuple[int, Op]] = []
        for index, op in enumerate(chunk):
            problem = validate(op)
            if problem is not None:
                failures[index] = OpFailure(op, errnos.EINVAL, f"{failing(op)}: {problem}")
            else:
                sendable.append((index, op))
        parts: list[bytes] = []
        by_seq: dict[int, tuple[int, Op]] = {}
        first = self._next_seq(len(sendable))
        last = first + len(sendable) - 1
        for offset, (index, op) in enumerate(sendable):
            seq = first + offset
            flags = nl.NLM_F_REQUEST | (nl.NLM_F_ACK if seq == last else 0)
            try:
                parts.append(nl.encode_op(op, self.family, seq, flags))
            except ValueError as exc:
                failures[index] = OpFailure(op, errnos.EINVAL, f"{failing(op)}: {exc}")
                continue
            by_seq[seq] = (index, op)
        if by_seq:
            acked = max(by_seq)
            if acked != last:  # the op meant to carry the ack could not be encoded
                index, op = by_seq[acked]
                parts[-1] = nl.encode_op(op, self.family, acked, nl.NLM_F_REQUEST | nl.NLM_F_ACK)
            self._send(b"".join(parts))
            self.batches_sent += 1
            for ack in self._acks(acked):
                if ack.errno and ack.seq in by_seq:
                    index, op = by_seq[ack.seq]
                    failures[index] = OpFailure(op, ack.errno, explain(op, ack.errno, ack.text))
        return [failures[i] for i in sorted(failures)]

    def _acks(self, last: int) -> Iterator[nl.Ack]:
        """Error reports of a batch, up to and including the ack of its last request."""
        for datagram in self._datagrams(MAX_DATAGRAMS_PER_BATCH):
            for msg in nl.parse_messages(datagram):
                if msg.type != nl.NLMSG_ERROR:
                    continue
                ack = nl.decode_error(msg)
                yield ack
                if ack.seq == last:
                    return

    def flush(self) -> None:
        """Delete every service of this namespace (ipvsadm -C)."""
        self._simple("cannot flush IPVS", lambda seq: nl.encode_flush(self.family, seq))

    # ------------------------------------------------------------ sync daemon

    def start_daemon(self, daemon: SyncDaemon) -> None:
        what = f"cannot start the {daemon.state} sync daemon on {daemon.interface}"
        with self._lock:
            seq = self._next_seq()
            try:
                self._request(nl.encode_new_daemon(self.family, seq, daemon), seq)
            except ValueError as exc:
                raise IpvsError(f"{what}: {exc}") from exc
            except nl.NetlinkError as exc:
                hint = {
                    errnos.EEXIST: f"a {daemon.state} sync daemon is already running",
                    errnos.ENODEV: f"no interface {daemon.interface!r} in this namespace",
                    errnos.EINVAL: "invalid settings (multicast group? real servers of mixed "
                    "address families?)",
                }.get(exc.errno, str(exc))
                raise IpvsError(f"{what}: {hint}") from exc

    def stop_daemon(self, state: Literal["master", "backup"] | str) -> None:
        what = f"cannot stop the {state} sync daemon"
        with self._lock:
            seq = self._next_seq()
            try:
                self._request(nl.encode_del_daemon(self.family, seq, state), seq)
            except ValueError as exc:
                raise IpvsError(f"{what}: {exc}") from exc
            except nl.NetlinkError as exc:
                hint = "it is not running" if exc.errno == errnos.ESRCH else str(exc)
                raise IpvsError(f"{what}: {hint}") from exc

    def daemons(self) -> list[SyncDaemon]:
        with self._lock:
            seq = self._next_seq()
            try:
                bodies = self._dump(nl.encode_dump_daemons(self.family, seq), seq)
            except nl.NetlinkError as exc:
                raise IpvsError(f"cannot list the sync daemons: {exc}") from exc
        return [nl.decode_daemon(body) for body in bodies]

    # ------------------------------------------------------------ timeouts

    def timeouts(self) -> Timeouts:
        replies = self._simple(
            "cannot read the IPVS timeouts", lambda seq: nl.encode_get_config(self.family, seq)
        )
        for msg in replies:
            if msg.type == self.family:
                return nl.decode_config(msg.body)
        raise IpvsError("no reply to the IPVS timeouts request")

    def set_timeouts(self, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> None:
        """Connection timeouts in seconds; 0 leaves one as it is."""
        try:
            nl.encode_set_config(self.family, 0, tcp, tcpfin, udp)
        except ValueError as exc:
            raise IpvsError(f"cannot set the IPVS timeouts: {exc}") from exc
        self._simple(
            "cannot set the IPVS timeouts",
            lambda seq: nl.encode_set_config(self.family, seq, tcp, tcpfin, udp),
        )
