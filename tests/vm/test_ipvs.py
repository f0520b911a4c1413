"""IPVS works in the VM: a service and a real server made through pyroute2's IPVS API, read back
through pyroute2 and through ipvsadm, then deleted."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from socket import AF_INET, IPPROTO_TCP
from typing import Any

import pytest
from pyroute2 import IPVS, IPRoute, IPVSDest, IPVSService

# Documentation ranges, and only inside the test's own namespace: no traffic is sent.
VIP, VPORT = "192.0.2.100", 80
RIP, RPORT = "198.51.100.10", 8080
WEIGHT = 3
IP_VS_CONN_F_MASQ = 0  # NAT; DR (3) is pyroute2's default, so NAT proves the value round-trips


def ipvsadm(ns: str) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "ipvsadm", "-Ln"], capture_output=True, text=True, check=True
    )
    return result.stdout


def attrs(msg: Any, nla: str) -> dict[str, Any]:
    """The kernel's attributes as sent. pyroute2 0.9.7's IPVSDest.from_message keeps its default
    fwd_method (3) whatever the kernel says, so the raw NLAs are the ground truth."""
    return dict(msg.get(nla)["attrs"])


@pytest.fixture
def ipvs(modprobe: Callable[..., None], netns_name: str) -> Iterator[IPVS]:
    modprobe("ip_vs", "ip_vs_rr")
    # In a namespace without any up interface the kernel has no local routing table yet, and it
    # rejects every real server address as "not unicast" (EINVAL): bring lo up first.
    with IPRoute(netns=netns_name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    with IPVS(netns=netns_name) as sock:
        yield sock


def test_service_and_real_server_round_trip(ipvs: IPVS, netns_name: str) -> None:
    assert list(ipvs.service("dump")) == [], "a fresh namespace starts with an empty IPVS table"

    service = IPVSService(addr=VIP, port=VPORT, protocol=IPPROTO_TCP, sched_name="rr")
    ipvs.service("add", service=service)
    dest = IPVSDest(addr=RIP, port=RPORT, weight=WEIGHT, fwd_method=IP_VS_CONN_F_MASQ)
    ipvs.dest("add", service=service, dest=dest)

    services = [attrs(m, "IPVS_CMD_ATTR_SERVICE") for m in ipvs.service("dump")]
    assert len(services) == 1
    svc = services[0]
    assert svc["IPVS_SVC_ATTR_AF"] == AF_INET
    assert svc["IPVS_SVC_ATTR_PROTOCOL"] == IPPROTO_TCP
    assert (svc["IPVS_SVC_ATTR_ADDR"], svc["IPVS_SVC_ATTR_PORT"]) == (VIP, VPORT)
    assert svc["IPVS_SVC_ATTR_SCHED_NAME"] == "rr"

    dests = [attrs(m, "IPVS_CMD_ATTR_DEST") for m in ipvs.dest("dump", service=service)]
    assert len(dests) == 1
    real = dests[0]
    assert (real["IPVS_DEST_ATTR_ADDR"], real["IPVS_DEST_ATTR_PORT"]) == (RIP, RPORT)
    assert real["IPVS_DEST_ATTR_WEIGHT"] == WEIGHT
    assert real["IPVS_DEST_ATTR_FWD_METHOD"] == IP_VS_CONN_F_MASQ

    # ipvsadm is the independent reader (its own netlink code, the operators' view).
    text = ipvsadm(netns_name)
    assert re.search(rf"^TCP\s+{re.escape(VIP)}:{VPORT}\s+rr\s*$", text, re.M), text
    assert re.search(rf"^\s+->\s+{re.escape(RIP)}:{RPORT}\s+Masq\s+{WEIGHT}\s", text, re.M), text

    ipvs.dest("del", service=service, dest=IPVSDest(addr=RIP, port=RPORT))
    assert list(ipvs.dest("dump", service=service)) == []
    ipvs.service("del", service=service)
    assert list(ipvs.service("dump")) == []
    text = ipvsadm(netns_name)
    assert VIP not in text and RIP not in text, text


def test_set_changes_a_real_server_in_place(ipvs: IPVS) -> None:
    """'set' edits; pyroute2 0.9.7 wires 'update' to the kernel's delete command."""
    service = IPVSService(addr=VIP, port=VPORT, protocol=IPPROTO_TCP, sched_name="rr")
    ipvs.service("add", service=service)
    ipvs.dest("add", service=service, dest=IPVSDest(addr=RIP, port=RPORT, weight=1))
    ipvs.dest("set", service=service, dest=IPVSDest(addr=RIP, port=RPORT, weight=WEIGHT))
    dests = [attrs(m, "IPVS_CMD_ATTR_DEST") for m in ipvs.dest("dump", service=service)]
    assert [(d["IPVS_DEST_ATTR_ADDR"], d["IPVS_DEST_ATTR_WEIGHT"]) for d in dests] == [
        (RIP, WEIGHT)
    ]
