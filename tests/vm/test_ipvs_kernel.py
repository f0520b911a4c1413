"""director.ipvs.kernel against the VM's real IPVS, each test in a fresh network namespace.

The pattern is the reconciler's: apply(plan(desired, dump())), then dump() must equal desired.
ipvsadm (its own netlink code, the operators' view) is the independent reader for a few fields.
No traffic is sent: every address is a documentation range inside the test's own namespace.
"""

from __future__ import annotations

import errno
import math
import re
import socket
import subprocess
import warnings
from collections.abc import Callable, Iterator

import pytest

from director.ipvs.kernel import IpvsError, IpvsKernel, OpFailure
from director.ipvs.model import (
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    SCHEDULER_FLAGS,
    TUN_FLAG_CSUM,
    TUN_FLAG_REMCSUM,
    TUN_GRE,
    TUN_GUE,
    TUN_IPIP,
    DestKey,
    DestSpec,
    Service,
    ServiceKey,
    ServiceSpec,
    SyncDaemon,
    Table,
)
from director.ipvs.plan import AddDest, AddService, DelDest, Op, SetDest, SetService, plan

TCP, UDP, SCTP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_SCTP
V4, V6 = socket.AF_INET, socket.AF_INET6
# Every scheduler of ip_vs.h's era; twos is Linux 6.2+.
SCHEDULERS = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf"]
SCHEDULERS += ["mh", "twos"]
R1, R2, R3 = DestKey("198.51.100.1", 80), DestKey("198.51.100.2", 80), DestKey("198.51.100.3", 80)
R6 = DestKey("2001:db8:1::10", 80)


def everything(_key: ServiceKey) -> bool:
    return True


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)} failed: {result.stderr}"
    return result.stdout


def ipvsadm(ns: str, *args: str) -> str:
    return run("ip", "netns", "exec", ns, "ipvsadm", *args)


def converge(kernel: IpvsKernel, desired: Table) -> list[Op]:
    """Plan against a dump, apply, and check that the kernel now holds exactly desired."""
    ops = plan(desired, kernel.dump(), everything)
    assert kernel.apply(ops) == []
    assert kernel.dump() == desired
    return ops


def svc(key: ServiceKey, spec: ServiceSpec, **dests: DestSpec) -> Service:
    return Service(key, spec, {DEST_BY_NAME[name]: d for name, d in dests.items()})


DEST_BY_NAME = {"r1": R1, "r2": R2, "r3": R3, "r6": R6}


@pytest.fixture
def kernel(modprobe: Callable[..., None], netns_name: str) -> Iterator[IpvsKernel]:
    modprobe("ip_vs")
    # Without an up interface the namespace has no local routing table and the kernel rejects
    # every IPv4 real server as "not unicast" (EINVAL).
    run("ip", "-n", netns_name, "link", "set", "lo", "up")
    with IpvsKernel(netns_name) as ipvs:
        yield ipvs


# ---------------------------------------------------------------- schedulers


def test_every_scheduler_with_its_flags(
    modprobe: Callable[..., None], kernel: IpvsKernel, netns_name: str
) -> None:
    """One service per scheduler the kernel has, and per sh/mh flag combination."""
    present = [name for name in SCHEDULERS if name != "twos"]
    modprobe(*(f"ip_vs_{name}" for name in present))
    specs = [ServiceSpec(name) for name in present]
    for name in ("sh", "mh"):
        fallback, port = SCHEDULER_FLAGS[f"{name}-fallback"], SCHEDULER_FLAGS[f"{name}-port"]
        specs += [
            ServiceSpec(name, fallback),
            ServiceSpec(name, port),
            ServiceSpec(name, fallback | port),
        ]
    desired = {}
    for i, spec in enumerate(specs):
        key = ServiceKey(V4, TCP, "192.0.2.10", 1000 + i)
        desired[key] = svc(key, spec, r1=DestSpec(FWD_DROUTE, 1), r2=DestSpec(FWD_DROUTE, 2))
    converge(kernel, desired)
    text = ipvsadm(netns_name, "-Ln")
    for key, service in desired.items():
        name = service.spec.scheduler
        # ipvsadm names the flags in its own order: fallback first.
        shown = [
            flag
            for flag in (f"{name}-fallback", f"{name}-port")
            if service.spec.flags & SCHEDULER_FLAGS.get(flag, 0)
        ]
        flags = rf" \({','.join(shown)}\)" if shown else ""
        line = rf"^TCP\s+192\.0\.2\.10:{key.port} {name}{flags}\s*$"
        assert re.search(line, text, re.M), (line, text)


def test_twos_scheduler(kernel: IpvsKernel) -> None:
    """twos is in Linux 6.2 and later (CONFIG_IP_VS_TWOS); Debian 12's 6.1 kernel lacks it."""
    key = ServiceKey(V4, TCP, "192.0.2.10", 80)
    desired = {key: svc(key, ServiceSpec("twos"), r1=DestSpec(FWD_DROUTE, 1), r2=DestSpec())}
    loaded = subprocess.run(["modprobe", "ip_vs_twos"], capture_output=True, text=True)
    if loaded.returncode == 0:
        converge(kernel, desired)
        return
    # What the director must then do is say so, naming the service and the module.
    warnings.warn(
        f"IPVS scheduler 'twos' is not in this kernel ({loaded.stderr.strip()}): checked the "
        "director's error for it instead of a round trip",
        stacklevel=1,
    )
    failures = kernel.apply(plan(desired, kernel.dump(), everything))
    assert [(f.op, f.errno) for f in failures] == [
        (AddService(key, ServiceSpec("twos")), errno.ENOENT)
    ] + [(AddDest(key, d, desired[key].dests[d]), errno.ESRCH) for d in (R1, R2)]
    assert failures[0].message == (
        "cannot add service TCP 192.0.2.10:80: scheduler 'twos' is not available: "
        "kernel module ip_vs_twos missing?"
    )
    assert kernel.dump() == {}


# ---------------------------------------------------------------- services and real servers


def test_persistence_netmask_one_packet_fwmark_ipv6(kernel: IpvsKernel, netns_name: str) -> None:
    persistent_v4 = ServiceKey(V4, TCP, "192.0.2.20", 443)
    persistent_v6 = ServiceKey(V6, TCP, "2001:db8::20", 443)
    one_packet = ServiceKey(V4, UDP, "192.0.2.20", 53)
    sctp = ServiceKey(V6, SCTP, "2001:db8::21", 3868)
    fwmark_v4 = ServiceKey(V4, fwmark=7)
    fwmark_v6 = ServiceKey(V6, fwmark=8)
    desired = {
        s.key: s
        for s in [
            svc(
                persistent_v4,
                ServiceSpec("wlc", IP_VS_SVC_F_PERSISTENT, 300, 0xFFFFFF00),
                r1=DestSpec(FWD_DROUTE, 2),
                r2=DestSpec(FWD_DROUTE, 1),
            ),
            svc(
                persistent_v6,
                ServiceSpec("wrr", IP_VS_SVC_F_PERSISTENT, 600, 64),
                r6=DestSpec(FWD_DROUTE, 1),
            ),
            svc(one_packet, ServiceSpec("rr", IP_VS_SVC_F_ONEPACKET), r3=DestSpec(FWD_MASQ)),
            svc(sctp, ServiceSpec("rr", 0, 0, 128), r6=DestSpec(FWD_MASQ, 4)),
            svc(fwmark_v4, ServiceSpec("lc"), r1=DestSpec(FWD_DROUTE), r2=DestSpec(FWD_DROUTE)),
            svc(fwmark_v6, ServiceSpec("rr", 0, 0, 128), r6=DestSpec(FWD_DROUTE, 3)),
        ]
    }
    converge(kernel, desired)
    text = ipvsadm(netns_name, "-Ln")
    for line in [
        r"TCP\s+192\.0\.2\.20:443 wlc persistent 300 mask 255\.255\.255\.0",
        r"TCP\s+\[2001:db8::20\]:443 wrr persistent 600 mask 64",
        r"UDP\s+192\.0\.2\.20:53 rr ops",
        r"SCTP\s+\[2001:db8::21\]:3868 rr",
        r"FWM\s+7 lc",
        r"FWM\s+8 IPv6 rr",
        r"->\s+\[2001:db8:1::10\]:80\s+Masq\s+4\s",
    ]:
        assert re.search(rf"^\s*{line}", text, re.M), (line, text)


def test_forwarding_tunnels_weights_thresholds(kernel: IpvsKernel, netns_name: str) -> None:
    key = ServiceKey(V4, TCP, "192.0.2.30", 80)
    mixed = ServiceKey(V6, TCP, "2001:db8::30", 80)  # IPv4 real servers behind an IPv6 VIP
    reals = {
        DestKey("198.51.100.31", 8080): DestSpec(FWD_MASQ, 3, 100, 10),
        DestKey("198.51.100.32", 80): DestSpec(FWD_DROUTE, 0),
        DestKey("198.51.100.33", 80): DestSpec(FWD_TUNNEL, 2, tun_type=TUN_IPIP),
        DestKey("198.51.100.34", 80): DestSpec(FWD_TUNNEL, 1, 0, 0, TUN_GUE, 6080),
        DestKey("198.51.100.35", 80): DestSpec(FWD_TUNNEL, 1, 0, 0, TUN_GUE, 6081, TUN_FLAG_CSUM),
        DestKey("198.51.100.36", 80): DestSpec(
            FWD_TUNNEL, 1, 0, 0, TUN_GUE, 6082, TUN_FLAG_REMCSUM
        ),
        DestKey("198.51.100.37", 80): DestSpec(FWD_TUNNEL, 1, 0, 0, TUN_GRE),
        DestKey("198.51.100.38", 80): DestSpec(FWD_TUNNEL, 1, 50, 0, TUN_GRE, 0, TUN_FLAG_CSUM),
    }
    desired = {
        key: Service(key, ServiceSpec("wrr"), reals),
        mixed: Service(
            mixed,
            ServiceSpec("rr", 0, 0, 128),
            {
                DestKey("198.51.100.40", 80): DestSpec(
                    FWD_TUNNEL, 1, tun_type=TUN_GUE, tun_port=5555
                ),
                DestKey("2001:db8:1::39", 80): DestSpec(FWD_DROUTE, 65535),
            },
        ),
    }
    converge(kernel, desired)
    text = ipvsadm(netns_name, "-Ln", "--tun-info")
    for line in [
        r"198\.51\.100\.31:8080\s+Masq\s+n/a\s+3\s",
        r"198\.51\.100\.32:80\s+Route\s+n/a\s+0\s",
        r"198\.51\.100\.33:80\s+Tunnel\s+ipip\s+2\s",
        r"198\.51\.100\.34:80\s+Tunnel\s+gue:6080:-c\s+1\s",
        r"198\.51\.100\.35:80\s+Tunnel\s+gue:6081:\+c\s+1\s",
        r"198\.51\.100\.36:80\s+Tunnel\s+gue:6082:r\+c\s+1\s",
        r"198\.51\.100\.37:80\s+Tunnel\s+gre:-c\s+1\s",
        r"198\.51\.100\.38:80\s+Tunnel\s+gre:\+c\s+1\s",
        r"\[2001:db8:1::39\]:80\s+Route\s+n/a\s+65535\s",
        r"198\.51\.100\.40:80\s+Tunnel\s+gue:5555:-c\s+1\s",
    ]:
        assert re.search(rf"->\s+{line}", text), (line, text)
    thresholds = ipvsadm(netns_name, "-Ln", "--thresholds")
    assert re.search(r"->\s+198\.51\.100\.31:8080\s+100\s+10\s", thresholds), thresholds
    assert re.search(r"->\s+198\.51\.100\.38:80\s+50\s+0\s", thresholds), thresholds


def test_set_changes_service_and_real_server_in_place(kernel: IpvsKernel, netns_name: str) -> None:
    key = ServiceKey(V4, TCP, "192.0.2.40", 80)
    before = {key: svc(key, ServiceSpec("wrr"), r1=DestSpec(FWD_DROUTE, 1), r2=DestSpec())}
    converge(kernel, before)
    after = {
        key: svc(
            key,
            ServiceSpec("sh", IP_VS_SVC_F_PERSISTENT | SCHEDULER_FLAGS["sh-port"], 120),
            r1=DestSpec(FWD_DROUTE, 7),
            r2=DestSpec(FWD_TUNNEL, 1, 50, 5, TUN_GUE, 7000, TUN_FLAG_CSUM),
        )
    }
    ops = converge(kernel, after)
    assert [type(op) for op in ops] == [SetService, SetDest, SetDest]
    text = ipvsadm(netns_name, "-Ln", "--tun-info")
    assert re.search(r"^TCP\s+192\.0\.2\.40:80 sh \(sh-port\) persistent 120\s*$", text, re.M)
    assert re.search(r"->\s+198\.51\.100\.1:80\s+Route\s+n/a\s+7\s", text), text
    assert re.search(r"->\s+198\.51\.100\.2:80\s+Tunnel\s+gue:7000:\+c\s+1\s", text), text
    thresholds = ipvsadm(netns_name, "-Ln", "--thresholds")
    assert re.search(r"->\s+198\.51\.100\.2:80\s+50\s+5\s", thresholds), thresholds


# ---------------------------------------------------------------- failures


def test_failing_op_in_a_batch_is_reported_and_the_rest_applies(kernel: IpvsKernel) -> None:
    keys = [ServiceKey(V4, TCP, f"192.0.2.{50 + i}", 80) for i in range(3)]
    desired = {
        k: svc(k, ServiceSpec("rr"), r1=DestSpec(FWD_DROUTE), r2=DestSpec(FWD_DROUTE)) for k in keys
    }
    ops = plan(desired, {}, everything)
    bad_service = ServiceKey(V4, TCP, "192.0.2.99", 80)
    bad = AddService(bad_service, ServiceSpec("nosuch"))
    middle = len(ops) // 2
    ops.insert(middle, bad)
    sent = kernel.batches_sent
    failures = kernel.apply(ops)
    assert kernel.batches_sent == sent + 1
    assert failures == [
        OpFailure(
            bad,
            errno.ENOENT,
            "cannot add service TCP 192.0.2.99:80: scheduler 'nosuch' is not available: "
            "kernel module ip_vs_nosuch missing?",
        )
    ]
    assert kernel.dump() == desired


def test_common_errors_in_operator_terms(kernel: IpvsKernel) -> None:
    key = ServiceKey(V4, TCP, "192.0.2.60", 80)
    converge(kernel, {key: svc(key, ServiceSpec("rr"), r1=DestSpec(FWD_DROUTE))})
    missing = ServiceKey(V4, UDP, "192.0.2.60", 80)
    ops: list[Op] = [
        AddService(key, ServiceSpec("rr")),
        AddDest(key, R1, DestSpec(FWD_DROUTE)),
        DelDest(key, R2),
        SetDest(missing, R1, DestSpec(), DestSpec()),
        AddDest(key, R2, DestSpec(FWD_TUNNEL, 1, tun_type=TUN_GUE)),  # gue without a port
        AddDest(key, R3, DestSpec(FWD_DROUTE, 1, 5, 10)),  # lower threshold above upper
        AddDest(key, DestKey("198.51.100.4", 80), DestSpec(FWD_TUNNEL, 1, tun_type=3)),
    ]
    failures = kernel.apply(ops)
    assert [(f.op, f.errno) for f in failures] == [
        (ops[0], errno.EEXIST),
        (ops[1], errno.EEXIST),
        (ops[2], errno.ENOENT),
        (ops[3], errno.ESRCH),
        (ops[4], errno.EINVAL),
        (ops[5], errno.ERANGE),
        (ops[6], errno.EINVAL),  # refused before sending: the kernel would store it
    ]
    messages = [f.message for f in failures]
    assert messages[0].endswith("service TCP 192.0.2.60:80 already exists")
    assert "real server 198.51.100.1:80 already exists in service TCP 192.0.2.60:80" in messages[1]
    assert "real server 198.51.100.2:80 does not exist in service TCP 192.0.2.60:80" in messages[2]
    assert messages[3].endswith("service UDP 192.0.2.60:80 does not exist")
    assert messages[4].endswith("a gue tunnel needs a port (tunnel port is 0)")
    assert messages[5].endswith("lower threshold 10 is above upper threshold 5")
    assert messages[6].endswith("tunnel type 3 is not one of ipip, gue, gre")
    assert kernel.dump() == {key: svc(key, ServiceSpec("rr"), r1=DestSpec(FWD_DROUTE))}


def test_missing_ipvs_family_is_a_clear_error(kernel: IpvsKernel, netns_name: str) -> None:
    """What a kernel without ip_vs answers (ip_vs itself is loaded here: ask for a family
    that does not exist)."""

    class Missing(IpvsKernel):
        FAMILY_NAME = "IPVS_NONE"

    with pytest.raises(IpvsError, match=r"load the ip_vs kernel module \(modprobe ip_vs\)") as info:
        Missing(netns_name)
    assert info.value.unavailable


def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(IpvsError, match="network namespace 'dvm-no-such-ns' not found"):
        IpvsKernel("dvm-no-such-ns")


# ---------------------------------------------------------------- scale and batching


def test_thousand_services_then_one_change_in_one_batch(kernel: IpvsKernel) -> None:
    desired: dict[ServiceKey, Service] = {}
    for i in range(1000):
        key = ServiceKey(V4, TCP, f"10.{i // 250}.{i % 250}.1", 80)
        reals = {
            DestKey(f"172.16.{i // 250}.{i % 250}", 8000 + j): DestSpec(FWD_DROUTE)
            for j in range(4)
        }
        desired[key] = Service(key, ServiceSpec("wrr"), reals)
    ops = converge(kernel, desired)
    assert len(ops) == 5000
    assert kernel.batches_sent == math.ceil(5000 / kernel.batch_size) == 10

    key = next(iter(desired))
    real = next(iter(desired[key].dests))
    changed = dict(desired)
    changed[key] = Service(
        key, desired[key].spec, {**desired[key].dests, real: DestSpec(FWD_DROUTE, 9)}
    )
    ops = plan(changed, kernel.dump(), everything)
    assert ops == [SetDest(key, real, DestSpec(FWD_DROUTE, 9), DestSpec(FWD_DROUTE))]
    batches, requests = kernel.batches_sent, kernel.requests_sent
    assert kernel.apply(ops) == []
    assert (kernel.batches_sent - batches, kernel.requests_sent - requests) == (1, 1)
    assert kernel.dump() == changed


# ---------------------------------------------------------------- flush, timeouts, sync daemon


def test_flush_empties_the_table(kernel: IpvsKernel, netns_name: str) -> None:
    keys = [ServiceKey(V4, TCP, "192.0.2.70", 80), ServiceKey(V6, fwmark=70)]
    converge(
        kernel,
        {k: svc(k, ServiceSpec("rr", 0, 0, 128 if k.family == V6 else 0xFFFFFFFF)) for k in keys},
    )
    kernel.flush()
    assert kernel.dump() == {}
    text = ipvsadm(netns_name, "-Ln")
    assert not re.search(r"^(TCP|UDP|SCTP|FWM)\s", text, re.M), text


def test_timeouts(kernel: IpvsKernel, netns_name: str) -> None:
    kernel.set_timeouts(100, 20, 30)
    assert kernel.timeouts() == (100, 20, 30)
    kernel.set_timeouts(udp=45)  # 0: unchanged
    assert kernel.timeouts() == (100, 20, 45)
    assert "Timeout (tcp tcpfin udp): 100 20 45" in ipvsadm(netns_name, "-L", "--timeout")


def test_sync_daemons(kernel: IpvsKernel, netns_name: str) -> None:
    # Interfaces of the test's own, as a director's sync interface would be: a veth pair.
    run("ip", "-n", netns_name, "link", "add", "dsync0", "type", "veth", "peer", "name", "dsync1")
    for dev in ("dsync0", "dsync1"):
        run("ip", "-n", netns_name, "link", "set", dev, "up")
    master = SyncDaemon("master", "dsync0", 7)
    backup = SyncDaemon("backup", "dsync1", 8, maxlen=1400, group="239.1.2.3", port=9000, ttl=3)
    kernel.start_daemon(master)
    kernel.start_daemon(backup)
    # The master's 0 and "" became the kernel's defaults: MTU 1500 - 28, 224.0.0.81:8848, ttl 1.
    assert sorted(kernel.daemons(), key=lambda d: d.state) == [
        backup,
        SyncDaemon("master", "dsync0", 7, 1472, "224.0.0.81", 8848, 1),
    ]
    text = ipvsadm(netns_name, "-L", "--daemon")
    assert (
        "master sync daemon (mcast=dsync0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, "
        "ttl=1)" in text
    ), text
    assert (
        "backup sync daemon (mcast=dsync1, syncid=8, maxlen=1400, group=239.1.2.3, port=9000, "
        "ttl=3)" in text
    ), text
    with pytest.raises(IpvsError, match="a master sync daemon is already running"):
        kernel.start_daemon(master)
    kernel.stop_daemon("master")
    assert kernel.daemons() == [backup]
    kernel.stop_daemon("backup")
    assert kernel.daemons() == []
    assert ipvsadm(netns_name, "-L", "--daemon").strip() == ""
    with pytest.raises(IpvsError, match="cannot stop the backup sync daemon: it is not running"):
        kernel.stop_daemon("backup")
    with pytest.raises(IpvsError, match="no interface 'nodev0' in this namespace"):
        kernel.start_daemon(SyncDaemon("master", "nodev0", 1))
