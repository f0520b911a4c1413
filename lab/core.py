"""Build, inspect and tear down a `Topology` in network namespaces on the host kernel.

    lab = Lab(default_topology("dlab"))
    lab.up()
    lab.run("client", ["ping", "-c", "1", lab.addr("rs1", "lan")])
    lab.down()

Every namespace is `{prefix}-{node}` or `{prefix}-sw-{segment}`; bridges and veths live only
inside them (a veth pair is created in the switch namespace with its peer born directly in the
node namespace), so the root namespace never sees a lab interface. `up()` records what it
made in `/run/{prefix}-lab/state.json`; `down()` kills every process inside the lab's
namespaces, removes the namespaces (which deletes their bridges and veths) and the state file,
and is safe to run twice or after a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from lab import netns
from lab.topology import BRIDGE, Family, Interface, Node, Route, Topology, default_topology

STATE_ROOT = Path("/run")
STATE_VERSION = 1

# A switch is a plain L2 wire: no IPv6 on the bridge or its ports (no link-local chatter, no
# MLD from the switch itself).
SWITCH_SYSCTLS = (
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
)
# If br_netfilter is loaded, bridged frames would cross the switch namespace's netfilter hooks.
SWITCH_OPTIONAL_SYSCTLS = (
    ("net.bridge.bridge-nf-call-iptables", "0"),
    ("net.bridge.bridge-nf-call-ip6tables", "0"),
    ("net.bridge.bridge-nf-call-arptables", "0"),
)
# Set before any interface exists, so `default` reaches every veth end born in the namespace:
# no DAD (addresses are usable at once) and IPv6 addresses survive an admin link-down (so
# `set_link(..., side="node")` can restore a node as it was).
NODE_SYSCTLS = (
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.keep_addr_on_down", "1"),
    ("net.ipv6.conf.default.keep_addr_on_down", "1"),
)
IFA_F_NODAD = 0x02
AF_INET, AF_INET6 = 2, 10

Side = Literal["switch", "node"]


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class LinkStatus:
    ifname: str
    operstate: str
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class NsStatus:
    name: str
    present: bool
    links: tuple[LinkStatus, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabStatus:
    prefix: str
    namespaces: tuple[NsStatus, ...]
    state_file: Path | None

    @property
    def up(self) -> bool:
        """Every namespace exists and every bridge, port and node interface is as built."""
        return all(ns.present and not ns.problems for ns in self.namespaces)

    @property
    def absent(self) -> bool:
        return self.state_file is None and not any(ns.present for ns in self.namespaces)


def require_support() -> None:
    """Raise LabError naming what is missing to build a lab on this host."""
    if os.geteuid() != 0:
        raise LabError("the namespace lab needs root: run as root (e.g. `sudo make labtests`)")
    if shutil.which("ip") is None:
        raise LabError("`ip` not found: apt-get install iproute2 (or run ./scripts/install-deps)")
    if not Path("/proc/self/ns/net").exists():
        raise LabError("this kernel has no network namespaces (CONFIG_NET_NS)")


def state_path(prefix: str, root: Path = STATE_ROOT) -> Path:
    return root / f"{prefix}-lab" / "state.json"


def recorded_prefixes(root: Path = STATE_ROOT) -> list[str]:
    """Prefixes of labs whose state file exists (labs that `up` made and `down` has not removed)."""
    out = []
    for path in sorted(root.glob("*-lab/state.json")):
        try:
            prefix = json.loads(path.read_text())["prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(prefix, str) and path == state_path(prefix, root):
            out.append(prefix)
    return out


class Lab:
    """A topology on the host kernel. Usable as a context manager (up on enter, down on exit)."""

    def __init__(self, topology: Topology | None = None, *, state_root: Path = STATE_ROOT):
        self.topology = topology if topology is not None else default_topology()
        self.state_root = state_root
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r})"

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # -- names and addresses ---------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self.topology.prefix

    @property
    def state_file(self) -> Path:
        return state_path(self.prefix, self.state_root)

    def ns_name(self, node: str) -> str:
        """Namespace of a node (`dir1`), or of a segment's switch when given `sw-SEGMENT`."""
        if node.startswith("sw-"):
            return self.topology.switch_ns(node[3:])
        return self.topology.ns_name(node)

    def addr(self, node: str, segment: str, family: Family = 4) -> str:
        """A node's address on a segment, without prefix length: `addr("rs1", "lan", 6)`."""
        return str(self.topology.addr(node, segment, family))

    def iface(self, node: str, segment: str) -> str:
        """The node-side interface name on a segment (`eth0`, `eth1`...)."""
        return self.topology.node(node).interface(segment).ifname

    def namespaces(self) -> tuple[str, ...]:
        return self.topology.namespaces()

    # -- lifecycle ---------------------------------------------------------------------------

    def up(self, timeout: float = 10.0) -> None:
        """Build the lab. On any failure, remove what was made and raise LabError."""
        require_support()
        existing = [ns for ns in self.namespaces() if netns.exists(ns)]
        if existing or self.state_file.exists():
            raise LabError(
                f"lab {self.prefix!r} already exists ({', '.join(existing) or self.state_file}); "
                f"remove it with `python -m lab down --prefix {self.prefix}`"
            )
        # Recorded before anything is made, so a crash half-way is still cleaned up by `down`.
        self._write_state()
        step = "start"
        try:
            for next_step in self._build(timeout):
                step = next_step
        except BaseException as e:
            try:
                self.down()
            except Exception as cleanup:
                e.add_note(f"cleanup after the failure also failed: {cleanup}")
            if isinstance(e, Exception):
                raise LabError(f"lab up failed while {step}: {e}") from e
            raise

    def down(self, grace: float = 3.0) -> None:
        """Remove exactly what `up` made; safe to call twice, or when `up` never ran.

        Processes in the lab get SIGTERM, and SIGKILL if still there after `grace` seconds.
        """
        names = self._owned_namespaces()
        # Tracked processes are signalled directly too: one just started may still be `ip netns
        # exec` in the root namespace, invisible to the namespace scan below.
        termed = []
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                termed.append(proc.pid)
        errors: list[str] = []
        try:
            netns.kill_in_namespaces(names, grace=grace, already_termed=termed)
        except netns.NetnsError as e:
            errors.append(str(e))
        for proc in self._procs:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        self._procs.clear()
        for ns in names:
            try:
                netns.remove(ns)
            except OSError as e:
                errors.append(f"removing namespace {ns}: {e}")
        if errors:
            raise LabError("lab down incomplete: " + "; ".join(errors))
        self.state_file.unlink(missing_ok=True)
        self.state_file.with_suffix(".tmp").unlink(missing_ok=True)
        with suppress(OSError):  # absent, or holds files that are not ours: leave it
            self.state_file.parent.rmdir()

    def _owned_namespaces(self) -> list[str]:
        names = list(self.namespaces())
        try:
            state = json.loads(self.state_file.read_text())
            recorded = state["namespaces"] if state.get("prefix") == self.prefix else []
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            recorded = []
        # Only names carrying this lab's prefix, whatever the file says.
        for ns in recorded:
            if isinstance(ns, str) and ns.startswith(f"{self.prefix}-") and ns not in names:
                names.append(ns)
        return names

    def _write_state(self) -> None:
        t = self.topology
        state = {
            "version": STATE_VERSION,
            "prefix": self.prefix,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "namespaces": list(self.namespaces()),
            "bridges": [{"netns": t.switch_ns(s.name), "name": BRIDGE} for s in t.segments],
            "veths": [
                {
                    "netns": t.switch_ns(i.segment),
                    "name": t.port_name(n.name, i.segment),
                    "peer_netns": t.ns_name(n.name),
                    "peer": i.ifname,
                }
                for n in t.nodes
                for i in n.interfaces
            ],
        }
        self.state_file.parent.mkdir(mode=0o755, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _build(self, timeout: float) -> Iterator[str]:
        """Build step by step, yielding what it is about to do (for error messages)."""
        t = self.topology
        with ExitStack() as stack:
            h: dict[str, Any] = {}

            def open_ns(ns: str) -> Any:
                h[ns] = stack.enter_context(netns.ipr(ns))
                return h[ns]

            for seg in t.segments:
                ns = t.switch_ns(seg.name)
                yield f"creating switch namespace {ns}"
                netns.create(ns)
                netns.write_sysctls(ns, SWITCH_SYSCTLS)
                netns.write_sysctls(ns, SWITCH_OPTIONAL_SYSCTLS, optional=True)
                ipr = open_ns(ns)
                _link_up(ipr, "lo")
                yield f"creating bridge {BRIDGE} in {ns}"
                # STP off and no forward delay: ports forward at once. Snooping off: VRRP and
                # other multicast floods to every port, as on a dumb switch.
                ipr.link(
                    "add",
                    ifname=BRIDGE,
                    kind="bridge",
                    br_stp_state=0,
                    br_forward_delay=0,
                    br_mcast_snooping=0,
                )
                _link_up(ipr, BRIDGE)
            for node in t.nodes:
                ns = t.ns_name(node.name)
                yield f"creating node namespace {ns}"
                netns.create(ns)
                netns.write_sysctls(ns, NODE_SYSCTLS + node.sysctls)
                _link_up(open_ns(ns), "lo")
            for node in t.nodes:
                for iface in node.interfaces:
                    sw = h[t.switch_ns(iface.segment)]
                    port = t.port_name(node.name, iface.segment)
                    yield f"creating veth {port} <-> {node.name}:{iface.ifname}"
                    # The peer is created directly in the node's namespace: nothing in root.
                    sw.link(
                        "add",
                        ifname=port,
                        kind="veth",
                        peer={"ifname": iface.ifname, "net_ns_fd": t.ns_name(node.name)},
                    )
                    bridge = _index(sw, BRIDGE)
                    sw.link("set", index=_index(sw, port), master=bridge, state="up")
            for node in t.nodes:
                ipr = h[t.ns_name(node.name)]
                for iface in node.interfaces:
                    yield f"addressing {node.name}:{iface.ifname}"
                    _link_up(ipr, iface.ifname)
                    _add_addresses(ipr, iface)
            yield "waiting for links"
            for node in t.nodes:
                _wait_oper(
                    h[t.ns_name(node.name)],
                    node,
                    [i.ifname for i in node.interfaces],
                    True,
                    timeout,
                )
            for node in t.nodes:
                yield f"adding routes on {node.name}"
                _add_routes(h[t.ns_name(node.name)], node.routes)

    # -- inspection --------------------------------------------------------------------------

    def status(self) -> LabStatus:
        t = self.topology
        out: list[NsStatus] = []
        for seg in t.segments:
            ns = t.switch_ns(seg.name)
            wanted = [BRIDGE] + [t.port_name(n.name, seg.name) for n in t.members(seg.name)]
            out.append(_ns_status(ns, wanted, {}, bridge=True))
        for node in t.nodes:
            ns = t.ns_name(node.name)
            addrs = {i.ifname: [str(i.addr4), str(i.addr6)] for i in node.interfaces}
            out.append(_ns_status(ns, [i.ifname for i in node.interfaces], addrs, bridge=False))
        return LabStatus(
            self.prefix, tuple(out), self.state_file if self.state_file.exists() else None
        )

    def is_up(self) -> bool:
        return self.status().up

    # -- processes ---------------------------------------------------------------------------

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run in a node's namespace.

        `ip netns exec` (setns, then exec in the same pid) rather than a bare setns in a
        preexec hook: it also mounts the namespace's own /sys, which tools that read
        /sys/class/net rely on.
        """
        ns = self.ns_name(node)
        if not netns.exists(ns):
            raise LabError(f"namespace {ns} does not exist: is lab {self.prefix!r} up?")
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self, node: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run in a node's namespace; `timeout` defaults to 30 s, never unbounded."""
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self.exec_argv(node, argv), **kwargs)

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen in a node's namespace; `down()` terminates it (by pid) and reaps it."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(node, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def ping(self, node: str, dst: str, count: int = 1, wait: float = 1.0) -> bool:
        """True if `count` pings from `node` to `dst` (v4 or v6) all get replies."""
        fam = "-6" if ip_address(dst).version == 6 else "-4"
        argv = ["ping", fam, "-n", "-q", "-c", str(count), "-W", str(wait), dst]
        r = self.run(node, argv, capture_output=True, timeout=count * (wait + 1) + 5)
        return r.returncode == 0

    # -- faults ------------------------------------------------------------------------------

    def set_link(
        self, node: str, ifname: str, up: bool, *, side: Side = "switch", timeout: float = 5.0
    ) -> None:
        """Cut or restore a node's link and wait until the node sees it.

        side="switch" sets the switch port down: like pulling the cable, the node sees carrier
        loss and keeps its addresses and routes. side="node" sets the node's own interface
        down; the kernel flushes its routes then, so they are put back when it comes up.
        """
        n = self.topology.node(node)
        iface = n.by_ifname(ifname)
        if side == "switch":
            ns, name = (
                self.topology.switch_ns(iface.segment),
                self.topology.port_name(node, iface.segment),
            )
        else:
            ns, name = self.ns_name(node), ifname
        with netns.ipr(ns) as ipr:
            ipr.link("set", index=_index(ipr, name), state="up" if up else "down")
        with netns.ipr(self.ns_name(node)) as ipr:
            _wait_oper(ipr, n, [ifname], up, timeout)
            if up and side == "node":
                _add_routes(ipr, [r for r in n.routes if _via(r, iface)])

    @contextmanager
    def link_cut(self, node: str, ifname: str, *, side: Side = "switch") -> Iterator[None]:
        """Cut a link for the duration of a `with` block."""
        self.set_link(node, ifname, False, side=side)
        try:
            yield
        finally:
            self.set_link(node, ifname, True, side=side)


# --- pyroute2 helpers --------------------------------------------------------------------------


def _index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"no interface {ifname}")
    return int(found[0])


def _link_up(ipr: Any, ifname: str) -> None:
    ipr.link("set", index=_index(ipr, ifname), state="up")


def _add_addresses(ipr: Any, iface: Interface) -> None:
    idx = _index(ipr, iface.ifname)
    ipr.addr("add", index=idx, address=str(iface.addr4.ip), prefixlen=iface.addr4.network.prefixlen)
    # NODAD as well as accept_dad=0: belt and braces, the address must never be tentative.
    ipr.addr(
        "add",
        index=idx,
        address=str(iface.addr6.ip),
        prefixlen=iface.addr6.network.prefixlen,
        flags=IFA_F_NODAD,
    )


def _via(route: Route, iface: Interface) -> bool:
    return route.via in iface.addr(route.family).network


def _add_routes(ipr: Any, routes: Sequence[Route]) -> None:
    for r in routes:
        ipr.route(
            "replace",
            dst=str(r.dst.network_address),
            dst_len=r.dst.prefixlen,
            gateway=str(r.via),
            family=AF_INET if r.family == 4 else AF_INET6,
        )


def _wait_oper(ipr: Any, node: Node, ifnames: Sequence[str], up: bool, timeout: float) -> None:
    """Poll (kernel state, bounded by `timeout`) until the interfaces' operstate is (not) UP."""
    deadline = time.monotonic() + timeout
    while True:
        states = {str(link.get("ifname")): str(link.get("operstate")) for link in ipr.link("dump")}
        pending = [n for n in ifnames if (states.get(n) == "UP") != up]
        if not pending:
            return
        if time.monotonic() > deadline:
            want = "UP" if up else "not UP"
            got = ", ".join(f"{n}={states.get(n)}" for n in pending)
            raise LabError(f"{node.name}: links not {want} after {timeout}s: {got}")
        time.sleep(0.01)


def _ns_status(
    ns: str, wanted: Sequence[str], addrs: dict[str, list[str]], *, bridge: bool
) -> NsStatus:
    if not netns.exists(ns):
        return NsStatus(ns, False, problems=("absent",))
    problems: list[str] = []
    links: list[LinkStatus] = []
    with netns.ipr(ns) as ipr:
        by_name = {str(x.get("ifname")): x for x in ipr.link("dump")}
        have_addrs: dict[int, list[str]] = {}
        for a in ipr.addr("dump"):
            have_addrs.setdefault(int(a["index"]), []).append(
                f"{a.get('address')}/{a['prefixlen']}"
            )
    bridge_index = by_name[BRIDGE]["index"] if bridge and BRIDGE in by_name else None
    for name in wanted:
        link = by_name.get(name)
        if link is None:
            problems.append(f"{name} missing")
            continue
        oper = str(link.get("operstate"))
        shown = [a for a in have_addrs.get(int(link["index"]), []) if not a.startswith("fe80:")]
        links.append(LinkStatus(name, oper, tuple(shown)))
        # A bridge with ports is UP; an admin-down port or a cut peer shows as DOWN/LOWERLAYERDOWN.
        if oper != "UP":
            problems.append(f"{name} is {oper}")
        if bridge and name != BRIDGE and link.get("master") != bridge_index:
            problems.append(f"{name} not enslaved to {BRIDGE}")
        missing = [a for a in addrs.get(name, []) if a not in shown]
        if missing:
            problems.append(f"{name} lacks {', '.join(missing)}")
    return NsStatus(ns, True, tuple(links), tuple(problems))
