"""Config -> desired IPVS table, and ownership across runs (pure parts of the reconciler)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from director.config import check_text
from director.config.models import Config
from director.ipvs.desired import desired_table
from director.ipvs.model import (
    FWD_DROUTE,
    FWD_MASQ,
    FWD_TUNNEL,
    IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT,
    IP_VS_SVC_F_SCHED1,
    IP_VS_SVC_F_SCHED2,
    TUN_FLAG_CSUM,
    TUN_GUE,
    DestKey,
    DestSpec,
    Service,
    ServiceKey,
    ServiceSpec,
)
from director.ipvs.owned import OwnedStore
from director.ipvs.plan import DelService, Op, apply_ops
from director.ipvs.reconcile import release, sync_once

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
V4, V6 = socket.AF_INET, socket.AF_INET6


def config(text: str) -> Config:
    report = check_text(text)
    assert report.config is not None, report.lines()
    return report.config


WEB = """
services:
  - name: web
    vips: [192.0.2.100, 192.0.2.110-111]
    fwmarks: [7]
    port: 80
    scheduler: sh
    scheduler_flags: [sh-fallback, sh-port]
    forwarding: dr
    persistence: {timeout: 10m, netmask: 255.255.255.0}
    real_servers:
      - {address: 192.0.2.21, weight: 3}
      - {address: 192.0.2.22, port: 8080, forwarding: nat, upper_threshold: 9, lower_threshold: 2}
      - address: 203.0.113.21
        forwarding: tun
        tunnel: {type: gue, port: 6080, checksum: csum}
    sorry_server: 192.0.2.99:8081
"""


def test_a_group_is_one_kernel_service_per_vip_and_mark_with_one_definition() -> None:
    table = desired_table(config(WEB).services)
    keys = sorted(table)
    assert keys == sorted(
        [
            ServiceKey(V4, TCP, "192.0.2.100", 80),
            ServiceKey(V4, TCP, "192.0.2.110", 80),
            ServiceKey(V4, TCP, "192.0.2.111", 80),
            ServiceKey(V4, fwmark=7),
        ]
    )
    assert len({(s.spec, tuple(sorted(s.dests.items()))) for s in table.values()}) == 1
    svc = table[ServiceKey(V4, TCP, "192.0.2.100", 80)]
    assert svc.spec == ServiceSpec(
        "sh", IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2, 600, 0xFFFFFF00
    )
    assert dict(svc.dests) == {
        DestKey("192.0.2.21", 80): DestSpec(FWD_DROUTE, 3),
        DestKey("192.0.2.22", 8080): DestSpec(FWD_MASQ, 1, 9, 2),
        DestKey("203.0.113.21", 80): DestSpec(
            FWD_TUNNEL, 1, tun_type=TUN_GUE, tun_port=6080, tun_flags=TUN_FLAG_CSUM
        ),
    }


def test_health_weights_and_quorum_loss() -> None:
    services = config(WEB).services
    key = ServiceKey(V4, TCP, "192.0.2.100", 80)
    weights = {("web", DestKey("192.0.2.21", 80)): None, ("web", DestKey("192.0.2.22", 8080)): 0}
    dests = desired_table(services, weights)[key].dests
    assert DestKey("192.0.2.21", 80) not in dests, "a failed real server is removed"
    assert dests[DestKey("192.0.2.22", 8080)].weight == 0, "an inhibited one stays at weight 0"
    sorry = desired_table(services, weights, frozenset({"web"}))[key].dests
    assert sorry[DestKey("192.0.2.99", 8081)] == DestSpec(FWD_DROUTE, 1)
    assert DestKey("192.0.2.21", 80) not in sorry
    others = [spec.weight for key, spec in sorry.items() if key.address != "192.0.2.99"]
    assert others == [0, 0], "live real servers keep their connections but get no new ones"


def test_ipv6_and_one_packet_udp() -> None:
    cfg = config(
        """
services:
  - name: dns
    vip: 2001:db8::53
    port: 53
    protocol: udp
    one_packet: true
    persistence: {timeout: 30s, netmask: 64}
    real_servers: [{address: "2001:db8::21"}]
"""
    )
    (svc,) = desired_table(cfg.services).values()
    assert svc.key == ServiceKey(V6, UDP, "2001:db8::53", 53)
    assert svc.spec == ServiceSpec("wlc", IP_VS_SVC_F_PERSISTENT | IP_VS_SVC_F_ONEPACKET, 30, 64)


class TableKernel:
    """A kernel stand-in for the pure ownership logic: its table moves by apply_ops, and it
    can refuse chosen operations as the real one would."""

    def __init__(self, services: Sequence[Service] = (), refuse: Sequence[Op] = ()) -> None:
        self.table = {s.key: s for s in services}
        self.refuse = list(refuse)

    def dump(self) -> dict[ServiceKey, Service]:
        return dict(self.table)

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        failed = [op for op in ops if op in self.refuse]
        self.table = apply_ops(self.table, [op for op in ops if op not in self.refuse])

        class Failure:
            def __init__(self, op: Op) -> None:
                self.op, self.message = op, f"refused {op}"

        return [Failure(op) for op in failed]


def test_only_owned_services_are_removed_and_ownership_survives_restarts(tmp_path: Path) -> None:
    desired = desired_table(config(WEB).services)
    foreign = Service(ServiceKey(V4, TCP, "192.0.2.200", 443))
    kernel = TableKernel([foreign])
    assert sync_once(kernel, desired, OwnedStore(tmp_path), flush=False).failures == []
    assert kernel.table == {**desired, foreign.key: foreign}
    # Next run: the config lost a vip. A fresh store (a restart) still knows it owned it.
    fewer = {k: v for k, v in desired.items() if k.address != "192.0.2.111"}
    result = sync_once(kernel, fewer, OwnedStore(tmp_path), flush=False)
    assert result.ops == [DelService(ServiceKey(V4, TCP, "192.0.2.111", 80))]
    assert kernel.table == {**fewer, foreign.key: foreign}, "the foreign service is left alone"
    # flush owns everything: the foreign service goes too.
    sync_once(kernel, fewer, OwnedStore(tmp_path), flush=True)
    assert kernel.table == fewer
    release(kernel, OwnedStore(tmp_path))
    assert kernel.table == {}


def test_a_refused_delete_stays_owned(tmp_path: Path) -> None:
    desired = desired_table(config(WEB).services)
    kernel = TableKernel()
    sync_once(kernel, desired, OwnedStore(tmp_path), flush=False)
    stuck = ServiceKey(V4, fwmark=7)
    kernel.refuse = [DelService(stuck)]
    result = sync_once(kernel, {}, OwnedStore(tmp_path), flush=False)
    assert result.failures == [f"refused {DelService(stuck)}"]
    assert list(kernel.table) == [stuck]
    assert OwnedStore(tmp_path).owns(stuck), "the next run must try again"
    kernel.refuse = []
    sync_once(kernel, {}, OwnedStore(tmp_path), flush=False)
    assert kernel.table == {}
