"""The config contract: every rule with a failing and a passing example, and the CLI's exits."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from director.cli import main
from director.config import Report, check_text, load_config
from director.config.durations import parse_duration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "director.yaml"


def base() -> dict[str, Any]:
    """A small valid config that each case mutates."""
    return {
        "vrrp": {
            "instances": [
                {
                    "name": "VI_1",
                    "interface": "eth0",
                    "vrid": 51,
                    "priority": 150,
                    "version": 3,
                    "advert_interval": "100ms",
                    "addresses": ["192.0.2.100/24"],
                },
                {
                    "name": "VI_6",
                    "interface": "eth0",
                    "vrid": 51,
                    "addresses": ["2001:db8:0:1::100/64"],
                },
            ],
        },
        "services": [
            {
                "name": "web",
                "vip": "192.0.2.100",
                "port": 80,
                "forwarding": "dr",
                "check": {"http": {"path": "/healthz"}},
                "real_servers": [{"address": "192.0.2.21"}, {"address": "192.0.2.22"}],
            }
        ],
    }


def check(data: Any) -> Report:
    return check_text(yaml.safe_dump(data, sort_keys=False), "c.yaml")


def messages(report: Report) -> list[str]:
    return report.lines()


def test_base_is_valid() -> None:
    report = check(base())
    assert report.diagnostics == []
    assert report.config is not None
    inst = report.config.vrrp.instances[0]
    assert inst.advert_interval == 0.1
    assert str(inst.addresses[0].address) == "192.0.2.100/24"


def test_example_from_design_is_valid() -> None:
    report = load_config(EXAMPLE)
    assert report.errors == []
    assert report.config is not None
    assert [s.name for s in report.config.services] == ["web"]
    assert report.config.services[0].sorry_server is not None
    assert report.config.services[0].sorry_server.port == 80


# Each case: (id, mutation, expected path, expected fragment). The mutation breaks one rule.
def _set(path: str, value: Any) -> Any:
    def apply(data: dict[str, Any]) -> None:
        node: Any = data
        parts = [int(p) if p.isdigit() else p for p in path.split(".")]
        for part in parts[:-1]:
            node = node[part]
        if value is _DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value

    return apply


_DELETE = object()
I0 = "vrrp.instances.0"
S0 = "services.0"

FAILING = [
    ("unknown-key", _set(f"{I0}.vridd", 1), "vrrp.instances[0].vridd", "did you mean 'vrid'"),
    ("unknown-top", _set("servces", []), "servces", "did you mean 'services'"),
    ("missing-key", _set(f"{I0}.interface", _DELETE), "vrrp.instances[0].interface", "missing"),
    ("vrid-range", _set(f"{I0}.vrid", 256), "vrrp.instances[0].vrid", "less than or equal"),
    ("duration", _set(f"{I0}.advert_interval", "1x"), "advert_interval", "invalid duration"),
    ("address", _set(f"{I0}.addresses", ["10.0.0.300/24"]), "addresses[0]", "not a valid"),
    (
        "vrid-unique",
        _set("vrrp.instances.1.addresses", ["192.0.2.101/24"]),
        "vrrp.instances[1].vrid",
        "vrid 51 is already used on eth0 for IPv4",
    ),
    (
        "vip-one-instance",
        _set(
            "vrrp.instances.1",
            {"name": "VI_2", "interface": "eth1", "vrid": 9, "addresses": ["192.0.2.100/32"]},
        ),
        "vrrp.instances[1].addresses[0]",
        "already a VIP of instance VI_1",
    ),
    ("prio-255", _set(f"{I0}.priority", 255), "vrrp.instances[0].priority", "address owner"),
    ("owner-not-255", _set(f"{I0}.address_owner", True), "address_owner", "priority 255"),
    (
        "v2-interval",
        lambda d: d["vrrp"]["instances"][0].update(version=2, advert_interval="1.5s"),
        "vrrp.instances[0].advert_interval",
        "whole seconds",
    ),
    (
        "v2-interval-range",
        lambda d: d["vrrp"]["instances"][0].update(version=2, advert_interval="256s"),
        "vrrp.instances[0].advert_interval",
        "whole seconds",
    ),
    ("v3-step", _set(f"{I0}.advert_interval", "15ms"), "advert_interval", "10ms steps"),
    ("v3-range", _set(f"{I0}.advert_interval", "41s"), "advert_interval", "10ms steps"),
    (
        "auth-v3",
        _set(f"{I0}.auth", {"type": "pass", "password": "x"}),
        "vrrp.instances[0].auth",
        "only in VRRPv2",
    ),
    (
        "ah-v3",
        _set(f"{I0}.auth", {"type": "ah", "password": "x"}),
        "vrrp.instances[0].auth",
        "AH authentication exists only in VRRPv2",
    ),
    ("v2-ipv6", _set("vrrp.instances.1.version", 2), "vrrp.instances[1].version", "IPv4 only"),
    (
        "unicast-source-family",
        _set(f"{I0}.unicast", {"source": "2001:db8::2", "peers": ["192.0.2.3"]}),
        "vrrp.instances[0].unicast.source",
        "not IPv4",
    ),
    (
        "unicast-peer-family",
        _set(f"{I0}.unicast", {"peers": ["192.0.2.3", "2001:db8::3"]}),
        "vrrp.instances[0].unicast.peers[1]",
        "not IPv4",
    ),
    (
        "mixed-family",
        _set(f"{I0}.addresses", ["192.0.2.100/24", "2001:db8::100/64"]),
        "vrrp.instances[0].addresses[1]",
        "one address family",
    ),
    (
        "label-prefix",
        _set(f"{I0}.addresses", [{"address": "192.0.2.100/24", "label": "eth9:1"}]),
        "addresses[0].label",
        "must start with the interface name 'eth0'",
    ),
    (
        "sync-member-missing",
        _set("vrrp.sync_groups", [{"name": "G", "instances": ["VI_1", "VI_X"]}]),
        "vrrp.sync_groups[0].instances[1]",
        "no vrrp instance is named 'VI_X'",
    ),
    (
        "sync-member-twice",
        _set(
            "vrrp.sync_groups",
            [{"name": "G", "instances": ["VI_1"]}, {"name": "H", "instances": ["VI_1", "VI_6"]}],
        ),
        "vrrp.sync_groups[1].instances[0]",
        "already in sync group 'G'",
    ),
    (
        "rs-unique",
        _set(f"{S0}.real_servers", [{"address": "192.0.2.21"}, {"address": "192.0.2.21"}]),
        "services[0].real_servers[1]",
        "repeated",
    ),
    (
        "tun-settings-without-tun",
        _set(f"{S0}.tunnel", {"type": "ipip"}),
        "services[0].tunnel",
        "need forwarding: tun",
    ),
    (
        "rs-tun-settings-without-tun",
        _set(f"{S0}.real_servers", [{"address": "192.0.2.21", "tunnel": {"type": "gre"}}]),
        "services[0].real_servers[0].tunnel",
        "need forwarding: tun",
    ),
    ("sorry-server", _set(f"{S0}.sorry_server", "192.0.2.99:http"), "sorry_server", "port"),
    ("sorry-server-ip", _set(f"{S0}.sorry_server", "nowhere:80"), "sorry_server", "not a valid"),
    ("vip-and-fwmark", _set(f"{S0}.fwmark", 7), "services[0].fwmark", "exclude each other"),
    ("vip-no-port", _set(f"{S0}.port", _DELETE), "services[0].port", "needs a port"),
    ("vip-and-vips", _set(f"{S0}.vips", ["192.0.2.101"]), "services[0].vips", "exclude"),
    (
        "vips-range-backwards",
        lambda d: (d["services"][0].pop("vip"), d["services"][0].update(vips=["192.0.2.9-3"])),
        "services[0].vips[0]",
        "must go up",
    ),
    (
        "vips-range-too-long",
        lambda d: (
            d["services"][0].pop("vip"),
            d["services"][0].update(vips=["10.0.0.0-10.1.0.0"]),
        ),
        "services[0].vips[0]",
        "more than 4096",
    ),
    (
        "vips-mixed-family",
        lambda d: (
            d["services"][0].pop("vip"),
            d["services"][0].update(vips=["192.0.2.100", "2001:db8::1"]),
        ),
        "services[0].vips[1]",
        "not IPv4",
    ),
    (
        "group-overlap",
        lambda d: d["services"].append(
            {"name": "other", "vips": ["192.0.2.99-101"], "port": d["services"][0]["port"]}
        ),
        "services[1]",
        "192.0.2.100:80 is already defined by services[0]",
    ),
    (
        "sync-daemon-instance",
        _set("ipvs", {"sync_daemon": {"instance": "VI_X", "interface": "eth0"}}),
        "ipvs.sync_daemon.instance",
        "no vrrp instance named 'VI_X'",
    ),
    (
        "sync-daemon-group",
        _set(
            "ipvs",
            {"sync_daemon": {"instance": "VI_1", "interface": "eth0", "group": "192.0.2.1"}},
        ),
        "ipvs.sync_daemon.group",
        "not multicast",
    ),
    (
        "resync-interval",
        _set("ipvs", {"resync_interval": "10ms"}),
        "ipvs.resync_interval",
        "greater",
    ),
    ("scheduler", _set(f"{S0}.scheduler", "fastest"), "services[0].scheduler", "input should"),
    (
        "scheduler-flag",
        _set(f"{S0}.scheduler_flags", ["sh-port"]),
        "services[0].scheduler_flags[0]",
        "applies to the sh scheduler",
    ),
    ("one-packet-tcp", _set(f"{S0}.one_packet", True), "services[0].one_packet", "udp"),
    (
        "check-two-kinds",
        _set(f"{S0}.check", {"http": {}, "tcp": {}}),
        "services[0].check",
        "one checker per check",
    ),
    ("check-none", _set(f"{S0}.check", {"interval": "1s"}), "services[0].check", "choose"),
    (
        "http-status",
        _set(f"{S0}.check", {"http": {"status": ["299-200"]}}),
        "services[0].check.http.status",
        "not an HTTP status",
    ),
    (
        "service-name-unique",
        lambda d: d["services"].append({**d["services"][0], "port": 443}),
        "services[1].name",
        "already used by services[0]",
    ),
    (
        "gue-needs-port",
        lambda d: d["services"][0].update(forwarding="tun", tunnel={"type": "gue"}),
        "services[0].tunnel",
        "needs port",
    ),
    ("dup-key", None, "vrrp.instances[0].vrid", "key repeated"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [pytest.param(m, p, f, id=i) for i, m, p, f in FAILING],
)
def test_rule_rejects(mutate: Any, path: str, fragment: str) -> None:
    data = base()
    if mutate is None:  # duplicate keys cannot be expressed as a dict: write the text
        text = yaml.safe_dump(data, sort_keys=False).replace(
            "    vrid: 51\n", "    vrid: 51\n    vrid: 52\n", 1
        )
        report = check_text(text, "c.yaml")
    else:
        mutate(data)
        report = check(data)
    found = [line for line in messages(report) if f": {path}: " in line or path in line]
    assert found, f"no diagnostic at {path}; got {messages(report)}"
    assert any(fragment.lower() in line.lower() for line in found), found
    assert report.config is None
    for line in messages(report):
        file, line_no, col, _ = line.split(":", 3)
        assert file == "c.yaml" and int(line_no) >= 1 and int(col) >= 1, line


# The same rules, satisfied: each of these is valid.
PASSING = [
    ("v2-whole-seconds", lambda d: d["vrrp"]["instances"][0].update(version=2, advert_interval=3)),
    ("v3-10ms", _set(f"{I0}.advert_interval", "10ms")),
    ("v3-max", _set(f"{I0}.advert_interval", "40.95s")),
    (
        "auth-v2",
        lambda d: d["vrrp"]["instances"][0].update(
            version=2, advert_interval="1s", auth={"type": "ah", "password": "s3cret"}
        ),
    ),
    (
        "owner-255",
        lambda d: d["vrrp"]["instances"][0].update(priority=255, address_owner=True),
    ),
    ("unicast-v4", _set(f"{I0}.unicast", {"source": "192.0.2.2", "peers": ["192.0.2.3"]})),
    ("same-vrid-other-family", lambda d: None),  # VI_1 and VI_6 share vrid 51 on eth0
    ("same-vrid-other-iface", _set("vrrp.instances.1.interface", "eth1")),
    ("sync-group", _set("vrrp.sync_groups", [{"name": "G", "instances": ["VI_1", "VI_6"]}])),
    ("label", _set(f"{I0}.addresses", [{"address": "192.0.2.100/24", "label": "eth0:vip"}])),
    (
        "tun",
        lambda d: d["services"][0].update(forwarding="tun", tunnel={"type": "gue", "port": 6080}),
    ),
    (
        "rs-tun",
        _set(
            f"{S0}.real_servers",
            [
                {
                    "address": "192.0.2.21",
                    "forwarding": "tun",
                    "tunnel": {"type": "gre", "checksum": "csum"},
                }
            ],
        ),
    ),
    ("sorry-v4", _set(f"{S0}.sorry_server", "192.0.2.99:8080")),
    ("sorry-bare", _set(f"{S0}.sorry_server", "192.0.2.99")),
    ("fwmark", lambda d: (d["services"][0].pop("vip"), d["services"][0].update(fwmark=7))),
    (
        "group",
        lambda d: (
            d["services"][0].pop("vip"),
            d["services"][0].update(vips=["192.0.2.100", "192.0.2.110-119"], fwmarks=[3, 4]),
        ),
    ),
    (
        "ipvs-section",
        _set(
            "ipvs",
            {
                "flush": True,
                "resync_interval": "5s",
                "sync_daemon": {"instance": "VI_1", "interface": "eth0", "sync_id": 7},
                "timeouts": {"tcp": "15m", "udp": "5m"},
            },
        ),
    ),
    ("sched-flag", lambda d: d["services"][0].update(scheduler="mh", scheduler_flags=["mh-port"])),
    ("udp-ops", lambda d: d["services"][0].update(protocol="udp", one_packet=True)),
    (
        "same-rs-other-port",
        _set(
            f"{S0}.real_servers",
            [{"address": "192.0.2.21", "port": 80}, {"address": "192.0.2.21", "port": 81}],
        ),
    ),
    ("empty", lambda d: d.clear()),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=i) for i, m in PASSING])
def test_rule_accepts(mutate: Any) -> None:
    data = base()
    mutate(data)
    report = check(data)
    assert report.errors == [], messages(report)
    assert report.config is not None


def test_vip_outside_vrrp_is_a_warning_not_an_error() -> None:
    data = base()
    data["services"][0]["vip"] = "192.0.2.200"
    report = check(data)
    assert report.errors == []
    assert report.config is not None
    (warning,) = report.warnings
    assert "192.0.2.200 is not a VIP of any vrrp instance" in warning.message
    assert "services[0].vip: warning:" in report.lines()[0]


def test_all_errors_at_once_with_positions() -> None:
    text = EXAMPLE.read_text().replace("vrid: 51", "vrid: 0", 1)
    text = text.replace("advert_interval: 100ms", "advert_interval: 15ms", 1)
    text = text.replace("scheduler: wrr", "scheduler: wrrr", 1)
    text = text.replace("preempt: true", "preempt: true\n      prempt_delay: 1s", 1)
    text = text.replace("{address: 192.0.2.22, port: 80", "{address: 192.0.2.21, port: 80", 1)
    report = check_text(text, "x.yaml")
    lines = report.lines()
    assert len(report.errors) == 5, lines
    lines_of_text = text.splitlines()
    for line in lines:
        _, line_no, col, rest = line.split(":", 3)
        path = rest.split(":")[0].strip()
        # The reported position holds the offending key or value.
        last_key = path.rstrip("]").split(".")[-1].split("[")[0]
        source = lines_of_text[int(line_no) - 1]
        assert last_key in source or "address" in source, (line, source)
        assert int(col) <= len(source)
    assert any("prempt_delay" in line and "did you mean 'preempt_delay'" in line for line in lines)


def test_duration_forms() -> None:
    assert parse_duration("10ms") == 0.01
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3.0
    assert parse_duration("0.25") == 0.25
    for bad in ("-1s", "1 week", True, None, "ms", -2):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_string_shorthands() -> None:
    data = base()
    inst = data["vrrp"]["instances"][0]
    inst["track"] = {"interfaces": ["eth1", {"name": "eth2", "weight": -10}]}
    inst["addresses"] = ["192.0.2.100", {"address": "192.0.2.101/24", "dev": "eth1"}]
    report = check(data)
    assert report.errors == [], report.lines()
    assert report.config is not None
    parsed = report.config.vrrp.instances[0]
    assert [t.name for t in parsed.track.interfaces] == ["eth1", "eth2"]
    assert parsed.track.interfaces[1].weight == -10
    assert str(parsed.addresses[0].address) == "192.0.2.100/32"  # bare address: host route
    assert parsed.addresses[1].dev == "eth1"


def test_models_are_frozen() -> None:
    report = check(base())
    assert report.config is not None
    with pytest.raises(Exception, match="frozen"):
        report.config.vrrp.instances[0].priority = 1  # type: ignore[misc]


# ---------------------------------------------------------------- the CLI


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli("check-config", str(EXAMPLE), capsys=capsys)
    assert code == 0
    assert out == ""
    assert "OK" in err


def test_cli_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    data = base()
    data["vrrp"]["instances"][0]["vrid"] = 300
    bad.write_text(yaml.safe_dump(data))
    code, out, _ = run_cli("check-config", str(bad), capsys=capsys)
    assert code == 1
    assert out.startswith(f"{bad}:")
    assert "vrrp.instances[0].vrid" in out


@pytest.mark.parametrize("content", [None, "a: [b\n", "\x00\x01"])
def test_cli_unreadable(
    tmp_path: Path, content: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "c.yaml"
    if content is not None:
        target.write_text(content)
    code, out, err = run_cli("check-config", str(target), capsys=capsys)
    assert code == 2
    assert str(target) in err
    assert "Traceback" not in out + err


def test_cli_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "c.yaml"
    target.write_text("- just\n- a list\n")
    code, out, _ = run_cli("check-config", str(target), capsys=capsys)
    assert code == 1
    assert "must be a mapping" in out


def test_config_schema_is_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli("config-schema", capsys=capsys)
    assert code == 0
    schema = json.loads(out)
    assert set(schema["properties"]) == {"node", "vrrp", "ipvs", "services"}
    assert schema["additionalProperties"] is False
    instance = schema["$defs"]["Instance"]
    assert "vrid" in instance["required"]
    assert {"type": "string", "description": "address with optional /prefix"} in schema["$defs"][
        "VirtualAddress"
    ]["anyOf"]


def test_console_script_and_module_entry() -> None:
    for argv in ([sys.executable, "-m", "director", "--version"],):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0
        assert done.stdout.startswith("director ")


def test_pass_password_length() -> None:
    data = base()
    data["vrrp"]["instances"][0].update(
        version=2, advert_interval=1, auth={"type": "pass", "password": "123456789"}
    )
    report = check(data)
    assert any("auth.password" in line and "at most 8" in line for line in report.lines())


def test_deepcopy_independence() -> None:
    # base() must hand out fresh data, or cases would leak into each other.
    a, b = base(), base()
    a["vrrp"]["instances"][0]["vrid"] = 1
    assert b["vrrp"]["instances"][0]["vrid"] == 51
    assert copy.deepcopy(a) == a


def test_a_bad_key_hides_no_other_mistake_and_invents_none() -> None:
    data = base()
    inst = data["vrrp"]["instances"][0]
    inst["vrid"] = 0  # bad: the instance fails field validation...
    inst["advert_interval"] = "15ms"  # ...and this cross-field mistake must still be reported
    data["vrrp"]["instances"][1].update(version=7, auth={"type": "pass", "password": "x"})
    lines = check(data).lines()
    assert any("instances[0].vrid" in line for line in lines), lines
    assert any("instances[0].advert_interval" in line and "10ms steps" in line for line in lines)
    assert any("instances[1].version" in line for line in lines), lines
    # With the version unknown, "auth needs v2" or "v2 is IPv4 only" would be guesses: not said.
    assert not any("instances[1].auth" in line for line in lines), lines
    assert len(lines) == 3, lines


def test_service_group_expands_ranges_in_order() -> None:
    data = base()
    svc = data["services"][0]
    svc.pop("vip")
    svc["vips"] = ["192.0.2.100", "192.0.2.110-112", "192.0.2.100"]
    report = check(data)
    assert report.config is not None, messages(report)
    addresses = [str(a) for a in report.config.services[0].addresses]
    assert addresses == ["192.0.2.100", "192.0.2.110", "192.0.2.111", "192.0.2.112"]
    from director.config.models import expand_vips

    assert [str(a) for a in expand_vips("2001:db8::fe-100")] == [
        "2001:db8::fe",
        "2001:db8::ff",
        "2001:db8::100",
    ]
