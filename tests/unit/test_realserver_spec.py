"""realserver's desired setup: flags and director-style YAML, with errors naming the input."""

from __future__ import annotations

import argparse
import ipaddress
import json
from pathlib import Path

import pytest

from realserver.spec import (
    ServicePort,
    SpecError,
    TunnelSpec,
    VipSpec,
    add_spec_arguments,
    parse_vip,
    spec_from_args,
    spec_from_dict,
    spec_from_file,
    spec_from_flags,
    spec_to_dict,
    split_vip,
)

V4 = ipaddress.IPv4Address("10.0.0.100")
V6 = ipaddress.IPv6Address("2001:db8::100")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.100", V4),
        ("10.0.0.100/80", V4),
        ("10.0.0.100:80", V4),
        (" 10.0.0.100 ", V4),
        ("2001:db8::100", V6),
        ("2001:db8::100/443", V6),
        ("[2001:db8::100]:443", V6),
        ("[2001:db8::100]", V6),
    ],
)
def test_parse_vip_ignores_port(text: str, expected: object) -> None:
    assert parse_vip(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.0.0.300", "'10.0.0.300' is not an IPv4 or IPv6 address"),
        ("web", "'web' is not"),
        ("10.0.0.100/http", "'http' is not a port"),
        ("10.0.0.100/70000", "'70000' is not a port"),
        ("[2001:db8::1]:x", "'x' is not a port"),
    ],
)
def test_parse_vip_errors_name_the_input(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match="--vip") as info:
        parse_vip(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)


def test_flags_dr_defaults() -> None:
    spec = spec_from_flags(["10.0.0.100/80", "10.0.0.100:443", "2001:db8::100"])
    assert spec.vips == (VipSpec(V4, "dr"), VipSpec(V6, "dr"))
    assert spec.iface == "lo"
    assert not spec.dummy
    assert spec.gateway is None
    assert spec.vips[0].interface == "10.0.0.100/32"
    assert spec.vips[1].interface == "2001:db8::100/128"


def test_flags_tun_defaults_to_ipip_and_gue_needs_port() -> None:
    assert spec_from_flags(["10.0.0.100"], "tun").vips[0].tunnel == TunnelSpec("ipip")
    spec = spec_from_flags(["10.0.0.100"], "tun", "gue", 5555)
    assert spec.vips[0].tunnel == TunnelSpec("gue", 5555)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"mode": "lvs"}, "--mode 'lvs': not one of dr, tun, nat"),
        ({"mode": "dr", "tunnel": "ipip"}, "tunnel options need mode tun, not dr"),
        ({"mode": "tun", "tunnel": "vxlan"}, "tunnel 'vxlan' is not one of ipip, gre, gue"),
        ({"mode": "tun", "tunnel": "gue"}, "tunnel gue needs a UDP port"),
        ({"mode": "tun", "tunnel": "gue", "gue_port": 0}, "gue port 0 is not between"),
        ({"mode": "tun", "tunnel": "gre", "gue_port": 5555}, "only for tunnel gue, not gre"),
        ({"iface": "eth0/1"}, "--iface 'eth0/1': not an interface name"),
        ({"iface": "x" * 16}, "--iface"),
        ({"client_ifaces": ["eth 0"]}, "--client-iface 'eth 0'"),
        ({"dummy": True}, "--dummy: name the dummy interface with --iface"),
        ({"gateway": "10.0.0.1"}, "--set-gateway: only for mode nat"),
        ({"mode": "nat", "gateway": "gw"}, "--set-gateway 'gw': not an IPv4 or IPv6"),
        ({"mode": "nat", "gateway": "2001:db8::1"}, "no nat VIP of the same IP family"),
    ],
)
def test_flag_errors(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_flags(["10.0.0.100"], **kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_no_vip_is_an_error() -> None:
    with pytest.raises(SpecError, match="no VIP given"):
        spec_from_flags([])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser)
    return parser.parse_args(argv)


def test_argparse_flags() -> None:
    ns = _args(
        "--vip", "10.0.0.100", "--vip", "10.0.0.101/80", "--mode", "nat",
        "--set-gateway", "10.0.1.254", "--client-iface", "eth0", "--client-iface", "eth0",
    )  # fmt: skip
    spec = spec_from_args(ns)
    assert [str(v.address) for v in spec.vips] == ["10.0.0.100", "10.0.0.101"]
    assert {v.mode for v in spec.vips} == {"nat"}
    assert spec.gateway == ipaddress.IPv4Address("10.0.1.254")
    assert spec.client_ifaces == ("eth0",)


def test_argparse_vip_and_config_exclusive(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="--vip and --config"):
        spec_from_args(_args("--vip", "10.0.0.1", "--config", str(tmp_path / "x.yaml")))


DIRECTOR_YAML = """\
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      addresses: [10.0.0.100/24, 10.0.0.101/24]
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    forwarding: dr
    real_servers:
      - address: 10.0.1.11
      - address: 10.0.1.12
        forwarding: tun
        tunnel: {type: gue, port: 5555}
  - name: web-tls
    vip: 10.0.0.100
    port: 443
    forwarding: dr
    real_servers: [{address: 10.0.1.11}]
  - name: dns
    vip: 10.0.0.101
    port: 53
    protocol: udp
    forwarding: tun
    tunnel: {type: gre}
    real_servers: [{address: 10.0.1.11}]
  - name: marked
    fwmark: 7
    forwarding: dr
    real_servers: [{address: 10.0.1.11}]
"""


def test_yaml_reuses_director_services(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text(DIRECTOR_YAML)
    spec = spec_from_file(path, client_ifaces=["eth0"])
    assert spec.vips == (
        VipSpec(V4, "dr"),
        VipSpec(ipaddress.IPv4Address("10.0.0.101"), "tun", TunnelSpec("gre")),
    )
    assert spec.client_ifaces == ("eth0",)


def test_yaml_self_takes_real_server_overrides(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text(DIRECTOR_YAML)
    spec = spec_from_file(path, self_address="10.0.1.12")
    assert spec.vips == (VipSpec(V4, "tun", TunnelSpec("gue", 5555)),)
    with pytest.raises(SpecError, match=r"no service with a vip listing 10\.0\.1\.99"):
        spec_from_file(path, self_address="10.0.1.99")


def test_yaml_conflicting_modes_name_both_services(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text(
        DIRECTOR_YAML.replace(
            "forwarding: dr\n    real_servers: [", "forwarding: tun\n    real_servers: [", 1
        )
    )
    with pytest.raises(SpecError) as info:
        spec_from_file(path)
    message = str(info.value)
    assert "services[1] (web-tls)" in message
    assert "services[0] (web)" in message
    assert str(path) in message


def test_yaml_gue_without_port_is_located_by_the_director_rules(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text(DIRECTOR_YAML.replace("tunnel: {type: gre}", "tunnel: {type: gue}"))
    with pytest.raises(SpecError) as info:
        spec_from_file(path)
    assert f"{path}:27:" in str(info.value)
    assert "services[2].tunnel" in str(info.value)


def test_yaml_invalid_config_reports_location(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text("services:\n  - name: web\n    vip: 10.0.0.300\n")
    with pytest.raises(SpecError) as info:
        spec_from_file(path)
    assert f"{path}:3" in str(info.value)
    with pytest.raises(SpecError, match="cannot read"):
        spec_from_file(tmp_path / "missing.yaml")


def test_yaml_without_vips(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text("services: []\n")
    with pytest.raises(SpecError, match="no service with a vip"):
        spec_from_file(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.100", (V4, None, None)),
        ("10.0.0.100/80", (V4, 80, None)),
        ("10.0.0.100:80@eth1", (V4, 80, "eth1")),
        ("10.0.0.100@dummy0", (V4, None, "dummy0")),
        ("[2001:db8::100]:443@lo", (V6, 443, "lo")),
        ("2001:db8::100/0", (V6, 0, None)),
    ],
)
def test_split_vip_gives_port_and_interface(text: str, expected: object) -> None:
    assert split_vip(text) == expected


def test_flags_keep_service_ports_for_check() -> None:
    spec = spec_from_flags(
        ["10.0.0.100/80", "10.0.0.100:443", "10.0.0.100/80", "2001:db8::100", "2001:db8::100/0"]
    )
    # Port 0 is IPVS's "every port" (persistence): no single port to look for.
    assert spec.ports == (ServicePort(V4, 80), ServicePort(V4, 443))
    assert str(spec.ports[0]) == "10.0.0.100:80/tcp"
    assert str(ServicePort(V6, 53, "udp")) == "[2001:db8::100]:53/udp"


def test_flags_vip_on_its_own_interface() -> None:
    spec = spec_from_flags(["10.0.0.100", "10.0.0.101@eth9"])
    assert spec.vips[1] == VipSpec(ipaddress.IPv4Address("10.0.0.101"), "dr", dev="eth9")
    assert spec.vips[0].dev is None


@pytest.mark.parametrize(
    ("vips", "mode", "fragment"),
    [
        (["10.0.0.100@eth 1"], "dr", "'eth 1' is not an interface name"),
        (["10.0.0.100@"], "dr", "'' is not an interface name"),
        (["10.0.0.100@eth1"], "tun", "an interface (@eth1) is for mode dr only"),
        (["10.0.0.100@eth1", "10.0.0.100@eth2"], "dr", "given twice on different interfaces"),
    ],
)
def test_flags_vip_interface_errors(vips: list[str], mode: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_flags(vips, mode)
    assert fragment in str(info.value)


def test_port_is_an_alias_of_gue_port() -> None:
    ns = _args("--vip", "10.0.0.100", "--mode", "tun", "--tunnel", "gue", "--port", "5555")
    assert spec_from_args(ns).vips[0].tunnel == TunnelSpec("gue", 5555)


GROUP_YAML = """\
services:
  - name: web
    vips: [10.0.0.100-101]
    port: 80
    forwarding: dr
    real_servers: [{address: 10.0.1.11}]
  - name: web6
    vips: [2001:db8::100]
    port: 80
    forwarding: dr
    real_servers: [{address: 2001:db8:1::11}]
  - name: dns
    vip: 10.0.0.102
    port: 53
    protocol: udp
    forwarding: nat
    real_servers: [{address: 10.0.1.11, port: 5353}, {address: 10.0.1.12}]
"""


def test_yaml_service_groups_and_ports(tmp_path: Path) -> None:
    path = tmp_path / "director.yaml"
    path.write_text(GROUP_YAML)
    spec = spec_from_file(path)
    assert [str(v.address) for v in spec.vips] == [
        "10.0.0.100",
        "10.0.0.101",
        "2001:db8::100",
        "10.0.0.102",
    ]
    assert [str(p) for p in spec.ports] == [
        "10.0.0.100:80/tcp",
        "10.0.0.101:80/tcp",
        "[2001:db8::100]:80/tcp",
        "10.0.0.102:53/udp",
    ]
    # NAT: the real server listens on its own port, which the director rewrites to.
    mine = spec_from_file(path, self_address="10.0.1.11")
    assert [str(p) for p in mine.ports][-1] == "10.0.0.102:5353/udp"


def test_spec_dict_round_trip() -> None:
    for spec in (
        spec_from_flags(["10.0.0.100/80", "10.0.0.101@eth1"], client_ifaces=["eth0"]),
        spec_from_flags(["10.0.0.100", "2001:db8::100"], "tun", "gue", 5555),
        spec_from_flags(["10.0.0.100"], "nat", gateway="10.0.1.254"),
        spec_from_flags(["10.0.0.100"], iface="rs0", dummy=True),
    ):
        assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"iface": 3}, "3 is not a string"),
        ({"ports": [{"address": "10.0.0.1", "port": "80", "protocol": "tcp"}]}, "'80' is not"),
        ({"ports": [{"address": "10.0.0.1", "port": 80, "protocol": "icmp"}]}, "'icmp'"),
        ({"vips": [{"address": "10.0.0.1", "mode": "dr", "tunnel": None, "dev": "a b"}]}, "dev"),
        (
            {"vips": [{"address": "10.0.0.1", "mode": "tun", "tunnel": {"type": "x"}}]},
            "tunnel type 'x'",
        ),
        ({"client_ifaces": None}, "missing or wrong"),
    ],
)
def test_spec_from_dict_rejects_what_it_did_not_write(
    change: dict[str, object], fragment: str
) -> None:
    data = {**spec_to_dict(spec_from_flags(["10.0.0.100"])), **change}
    with pytest.raises(ValueError) as info:
        spec_from_dict(data)
    assert fragment in str(info.value)
