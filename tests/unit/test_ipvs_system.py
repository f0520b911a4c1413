"""What each forwarding mode needs on a director: modules and sysctls (pure), and the error
when a module cannot be loaded (real modprobe, with a module no kernel has)."""

from __future__ import annotations

from typing import Any

import pytest

from director.config.models import Config
from director.ipvs.system import SetupError, load_modules, requirements


def config(*services: dict[str, Any]) -> Config:
    return Config.model_validate({"services": list(services)})


def service(name: str, vip: str, forwarding: str, scheduler: str = "wrr") -> dict[str, Any]:
    real = "2001:db8::21" if ":" in vip else "192.0.2.21"
    return {
        "name": name,
        "vip": vip,
        "port": 80,
        "scheduler": scheduler,
        "forwarding": forwarding,
        "real_servers": [{"address": real}],
    }


def test_dr_needs_the_scheduler_modules_and_the_expiry_sysctls_only() -> None:
    req = requirements(
        config(service("a", "192.0.2.100", "dr"), service("b", "192.0.2.101", "tun", "mh"))
    )
    assert req.modules == ("ip_vs", "ip_vs_mh", "ip_vs_wrr")
    assert set(req.sysctls) == {
        "net.ipv4.vs.expire_nodest_conn",
        "net.ipv4.vs.expire_quiescent_template",
    }
    assert all(value == 1 for value, _ in req.sysctls.values())


def test_nat_adds_forwarding_and_conntrack_per_family() -> None:
    v4 = requirements(config(service("a", "192.0.2.100", "nat")))
    assert {"net.ipv4.ip_forward", "net.ipv4.vs.conntrack"} <= set(v4.sysctls)
    assert "net.ipv6.conf.all.forwarding" not in v4.sysctls
    v6 = requirements(config(service("a", "2001:db8::100", "nat")))
    assert "net.ipv6.conf.all.forwarding" in v6.sysctls
    assert "net.ipv4.ip_forward" not in v6.sysctls


def test_no_services_need_nothing() -> None:
    req = requirements(config())
    assert req.modules == () and dict(req.sysctls) == {}


def test_a_module_that_cannot_be_loaded_is_named() -> None:
    with pytest.raises(SetupError) as caught:
        load_modules(["ip_vs_nosuchscheduler"])
    message = str(caught.value)
    assert message.startswith("kernel module(s) not available: ip_vs_nosuchscheduler (")
    assert "not found" in message
