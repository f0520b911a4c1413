"""realserver behind a real IPVS director, inside the VM (Debian's kernel: IPVS, dummy, tunnels).

The lab runs in the VM's namespaces: dir1 holds the VIPs and is programmed with ipvsadm directly
(the director's own IPVS code is not used here); rs1, rs2 (DR) and rstun (TUN, behind the
router) are prepared by `realserver start` and serve HTTP with lab.web. The client's requests
go through dir1; the replies must go straight to the client, which IPVS's counters show: in
DR and TUN it sees the requests (in-packets) but never the replies (out-packets stay 0).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from lab.core import Lab
from lab.lvs import replies_seen
from lab.topology import VIP4, VIP6

VIP_DR, VIP_DR6 = str(VIP4), str(VIP6)
VIP_IPIP, VIP_GRE, VIP_GUE = "192.0.2.101", "192.0.2.102", "192.0.2.103"
GUE_PORT = 6080
# IPVS folds its per-CPU counters every 2 s (LAB.md): a read this long after the traffic
# includes all of it.
STATS_FOLD = 2.2
SERVERS = ("rs1", "rs2", "rstun")

# Every IPv4/IPv6 per-interface sysctl, links, addresses, routes and fou ports, from the
# kernel's own tools in one shell (under TCG each Python start costs seconds; grep and ip do not).
SNAPSHOT = """
grep -r -H . /proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf 2>/dev/null; echo @@
ip -j link show; echo @@
ip -j addr show; echo @@
ip -j -4 route show table all; echo @@
ip -j -6 route show table all; echo @@
if [ -d /sys/module/fou ]; then ip fou show; fi  # asking would make the kernel load fou
"""
# Made by the tunnel modules in every namespace when they load; the kernel keeps them.
FALLBACK = {"tunl0", "gre0", "gretap0", "erspan0", "ip6tnl0", "ip6gre0", "ip6gretap0", "sit0"}

TUN_CONFIG = f"""\
services:
  - name: web-ipip
    vip: {VIP_IPIP}
    port: 80
    forwarding: tun
    real_servers: [{{address: 203.0.113.21}}]
  - name: web-gre
    vip: {VIP_GRE}
    port: 80
    forwarding: tun
    tunnel: {{type: gre}}
    real_servers: [{{address: 203.0.113.21}}]
  - name: web-gue
    vip: {VIP_GUE}
    port: 80
    forwarding: tun
    tunnel: {{type: gue, port: {GUE_PORT}}}
    real_servers: [{{address: 203.0.113.21}}]
"""


# ---------------------------------------------------------------- helpers


def realserver(lab: Lab, node: str, state: Path, *args: str) -> str:
    return realservers(lab, state, {node: list(args)})[node]


def realservers(lab: Lab, state: Path, runs: dict[str, list[str]]) -> dict[str, str]:
    """`realserver ARGS` in several nodes at once (each in its own namespace); their stdout."""
    procs = {
        node: lab.popen(
            node,
            [sys.executable, "-m", "realserver", *args, "--state-dir", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node, args in runs.items()
    }
    outs: dict[str, str] = {}
    for node, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        command = runs[node][0]
        assert proc.returncode == 0, (
            f"{node}: realserver {command}: exit {proc.returncode}\n{out}{err}"
        )
        outs[node] = out
    return outs


def snapshot(lab: Lab, node: str) -> dict[str, Any]:
    r = lab.run(node, ["sh", "-c", SNAPSHOT], capture_output=True, text=True, check=True)
    sysctls, links, addresses, routes4, routes6, fou = r.stdout.split("@@\n")
    values = dict(line.rsplit(":", 1) for line in sysctls.splitlines())
    return {
        "sysctls": {k.removeprefix("/proc/sys/net/"): v for k, v in values.items()},
        "links": {link["ifname"]: link for link in json.loads(links)},
        "addresses": {a["ifname"]: a["addr_info"] for a in json.loads(addresses)},
        "routes4": json.loads(routes4),
        "routes6": json.loads(routes6),
        "fou": fou,
    }


def assert_restored(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Everything as before, except the tunnel modules' fallback devices, which loading a module
    adds to every namespace and nothing can delete: those must be down and hold no address (the
    IPv6 link-locals the kernel gives them while up go with the down, keep_addr_on_down or not);
    and using them at all gives them a qdisc and IPv6 settings they lacked."""
    new = set(after["links"]) - set(before["links"])
    assert new <= FALLBACK, f"links left behind: {new - FALLBACK}"
    for dev in new:
        assert "UP" not in after["links"][dev]["flags"], f"{dev} left up"
        assert after["addresses"].get(dev, []) == [], f"{dev} holds {after['addresses'][dev]}"
    for dev, link in before["links"].items():
        now = after["links"].get(dev)
        assert now is not None, f"{dev} is gone"
        changed = {key for key in link.keys() | now.keys() if link.get(key) != now.get(key)}
        if dev in FALLBACK:
            # A device's first up gives it its default qdisc (noop becomes noqueue), and no
            # down takes that back: a kernel side effect of using the tunnel at all.
            changed.discard("qdisc")
        assert not changed, f"{dev}: {[(k, link.get(k), now.get(k)) for k in sorted(changed)]}"
    old = {k: v for k, v in after["addresses"].items() if k not in new}
    assert old == before["addresses"]
    # Every value as before. New keys only for fallback devices: the kernel makes a device's
    # IPv6 settings (ipv6/conf/tunl0/...) at its first up, with the namespace's defaults.
    differ = {
        k: (v, after["sysctls"].get(k))
        for k, v in before["sysctls"].items()
        if after["sysctls"].get(k) != v
    }
    assert differ == {}, differ
    appeared = {k.split("/")[2] for k in after["sysctls"].keys() - before["sysctls"].keys()}
    assert appeared <= FALLBACK, f"sysctls of {appeared - FALLBACK} appeared"
    for key in ("routes4", "routes6", "fou"):
        assert after[key] == before[key], key


def ipvsadm(lab: Lab, *args: str) -> str:
    r = lab.run("dir1", ["ipvsadm", *args], capture_output=True, text=True, check=True)
    return str(r.stdout)


def stats(lab: Lab) -> dict[str, tuple[int, int]]:
    """(in-packets, out-packets) per service and real server: `TCP  192.0.2.100:80` and
    `-> 192.0.2.21:80`."""
    out: dict[str, tuple[int, int]] = {}
    for line in ipvsadm(lab, "-Ln", "--stats", "--exact").splitlines():
        m = re.match(r"^(TCP|  ->)\s+(\S+)\s+\d+\s+(\d+)\s+(\d+)\s", line)
        if m:
            key = m.group(2) if m.group(1) == "TCP" else f"-> {m.group(2)}"
            out[key] = (int(m.group(3)), int(m.group(4)))
    return out


def folded_stats(lab: Lab, traffic_end: float, keys: list[str]) -> dict[str, tuple[int, int]]:
    """The counters once the kernel has folded all the traffic: poll (bounded) until a fold has
    run after the traffic ended and every service in `keys` shows its in-packets."""
    deadline = traffic_end + STATS_FOLD + 10
    while True:
        now = time.monotonic()
        found = stats(lab)
        if now >= traffic_end + STATS_FOLD and all(found.get(k, (0, 0))[0] > 0 for k in keys):
            return found
        assert now < deadline, f"IPVS in-packets still 0 for some of {keys}: {found}"
        time.sleep(0.2)  # poll interval of a bounded wait on the kernel's 2 s estimator


# Fetches each URL `count` times (a new connection each) in one Python start.
GETS = """
import json, sys
from lab.web import get_many
print(json.dumps({url: get_many(url, count, 5.0, 60.0) for url, count in json.loads(sys.argv[1])}))
"""


def get(lab: Lab, *urls: tuple[str, int]) -> dict[str, dict[str, Any]]:
    argv = [sys.executable, "-c", GETS, json.dumps(urls)]
    r = lab.run("client", argv, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    results: dict[str, dict[str, Any]] = json.loads(r.stdout)
    for url, result in results.items():
        assert result["errors"] == 0, f"{url}: {result}"
    return results


# ---------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    lab: Lab
    state: Path  # realserver's --state-dir
    before: dict[str, dict[str, Any]]  # each real server's snapshot before start
    started: dict[str, str]  # start's output per real server
    stopped: bool = False


def director(lab: Lab) -> None:
    """dir1 holds the VIPs and balances them with IPVS: DR to rs1 and rs2 (v4 and v6), TUN
    with ipip, gre and gue to rstun behind the router."""
    for vip in (VIP_DR, VIP_IPIP, VIP_GRE, VIP_GUE):
        lab.run("dir1", ["ip", "addr", "add", f"{vip}/24", "dev", "eth0"], check=True)
    lab.run("dir1", ["ip", "addr", "add", f"{VIP_DR6}/64", "dev", "eth0", "nodad"], check=True)
    rules = [
        f"-A -t {VIP_DR}:80 -s rr",
        f"-a -t {VIP_DR}:80 -r {lab.addr('rs1', 'lan')}:80 -g",
        f"-a -t {VIP_DR}:80 -r {lab.addr('rs2', 'lan')}:80 -g",
        f"-A -t [{VIP_DR6}]:80 -s rr",
        f"-a -t [{VIP_DR6}]:80 -r [{lab.addr('rs1', 'lan', 6)}]:80 -g",
        f"-a -t [{VIP_DR6}]:80 -r [{lab.addr('rs2', 'lan', 6)}]:80 -g",
    ]
    rstun = lab.addr("rstun", "remote")
    for vip, tun in (
        (VIP_IPIP, ""),
        (VIP_GRE, " --tun-type gre"),
        (VIP_GUE, f" --tun-type gue --tun-port {GUE_PORT}"),
    ):
        rules += [f"-A -t {vip}:80 -s rr", f"-a -t {vip}:80 -r {rstun}:80 -i{tun}"]
    restore = lab.run(
        "dir1", ["ipvsadm-restore"], input="\n".join(rules) + "\n", capture_output=True, text=True
    )
    assert restore.returncode == 0, restore.stderr


@pytest.fixture(scope="module")
def cluster(
    modprobe: Callable[..., None], lab_module: Lab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The director, an HTTP server on every real server, and every real server prepared by
    `realserver start` (all at once: under TCG each Python start costs seconds). realserver
    itself loads the tunnel, fou and dummy modules it needs."""
    modprobe("ip_vs", "ip_vs_rr")
    lab = lab_module
    state = tmp_path_factory.mktemp("realserver")
    config = state / "realserver.yaml"
    config.write_text(TUN_CONFIG)
    director(lab)
    before = {node: snapshot(lab, node) for node in SERVERS}
    servers = []
    for name in SERVERS:
        argv = [sys.executable, "-m", "lab.web", "serve", "--name", name, "--listen", "0.0.0.0:80"]
        if name != "rstun":
            argv += ["--listen", "[::]:80"]
        servers.append(lab.popen(name, argv, stdout=subprocess.PIPE, text=True))
    dr = ["start", "--vip", f"{VIP_DR}/80", "--vip", f"[{VIP_DR6}]:80", "--client-iface", "eth0"]
    tun = ["start", "-c", str(config), "--self", lab.addr("rstun", "remote")]
    prepared = Cluster(lab, state, before, {})
    try:
        prepared.started = realservers(
            lab,
            state,
            {"rs1": dr, "rs2": [*dr, "--iface", "rsdummy0", "--dummy"], "rstun": tun},
        )
        for proc in servers:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        yield prepared
    finally:
        if not prepared.stopped:  # the stop test did not get to it
            realservers(lab, state, {node: ["stop"] for node in SERVERS})
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=20)
            if proc.stdout is not None:
                proc.stdout.close()


# ---------------------------------------------------------------- DR


def test_dr_traffic_reaches_rs1_on_lo_and_rs2_on_a_dummy_and_replies_bypass_the_director(
    cluster: Cluster,
) -> None:
    lab = cluster.lab
    assert f"add address {VIP_DR}/32 on lo label lo:rs" in cluster.started["rs1"]
    assert "create dummy interface rsdummy0" in cluster.started["rs2"]
    assert f"add address {VIP_DR6}/128 on rsdummy0 nodad" in cluster.started["rs2"]

    v4, v6 = f"http://{VIP_DR}/", f"http://[{VIP_DR6}]/"
    clients = (lab.addr("client", "lan", 4), lab.addr("client", "lan", 6))
    with replies_seen(lab, "dir1", *clients) as replies:
        results = get(lab, (v4, 20), (v6, 10))
        end = time.monotonic()
        assert replies() == 0, "no reply to the client passed through dir1"
    cases: list[tuple[str, str, Literal[4, 6]]] = [(v4, VIP_DR, 4), (v6, VIP_DR6, 6)]
    for url, vip, family in cases:
        result = results[url]
        assert set(result["names"]) == {"rs1", "rs2"}, result  # round robin reached both
        assert result["servers"] == [vip]  # answered from the VIP itself
        assert result["clients"] == [lab.addr("client", "lan", family)]

    rs1, rs2 = lab.addr("rs1", "lan"), lab.addr("rs2", "lan")
    counters = folded_stats(lab, end, [f"{VIP_DR}:80", f"-> {rs1}:80", f"-> {rs2}:80"])
    inpkts, outpkts = counters[f"{VIP_DR}:80"]
    assert inpkts > 0 and outpkts == 0, counters  # replies never came back through dir1
    assert counters[f"[{VIP_DR6}]:80"][1] == 0, counters


# ---------------------------------------------------------------- TUN


def test_tun_ipip_gre_and_gue_are_decapsulated_and_answered(cluster: Cluster) -> None:
    lab = cluster.lab
    out = cluster.started["rstun"]
    assert f"add fou port {GUE_PORT} gue (IPv4)" in out
    assert f"add address {VIP_IPIP}/32 on tunl0 label tunl0:rs" in out
    assert f"add address {VIP_GRE}/32 on gre0 label gre0:rs" in out
    assert f"add address {VIP_GUE}/32 on tunl0 label tunl0:rs" in out
    checked = realserver(lab, "rstun", cluster.state, "check")
    assert "ok    rp_filter on tunl0" in checked
    assert f"ok    gue port {GUE_PORT} (IPv4): receiving" in checked
    assert "all checks passed" in checked

    urls = {vip: f"http://{vip}/" for vip in (VIP_IPIP, VIP_GRE, VIP_GUE)}
    with replies_seen(lab, "dir1", lab.addr("client", "lan")) as replies:
        results = get(lab, *((url, 4) for url in urls.values()))
        end = time.monotonic()
        assert replies() == 0, "no reply to the client passed through dir1"
    for vip, url in urls.items():
        assert results[url]["names"] == {"rstun": 4}, (vip, results[url])
        assert results[url]["servers"] == [vip]  # decapsulated: the VIP answered
        assert results[url]["clients"] == [lab.addr("client", "lan")]

    keys = [f"{vip}:80" for vip in urls]
    counters = folded_stats(lab, end, keys)
    for key in keys:
        assert counters[key][1] == 0, counters  # the replies went via the router, not dir1


# ---------------------------------------------------------------- revert


def test_stop_reverts_every_backend_to_what_it_was(cluster: Cluster) -> None:
    out = realservers(cluster.lab, cluster.state, {node: ["stop"] for node in SERVERS})
    cluster.stopped = True
    assert "delete dummy interface rsdummy0" in out["rs2"]
    assert f"remove fou port {GUE_PORT} (IPv4)" in out["rstun"]
    for node in SERVERS:
        assert_restored(cluster.before[node], snapshot(cluster.lab, node))
