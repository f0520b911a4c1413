"""Config keys and rules of health checks (check models and rules._check_check)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from director.config import Report, check_text
from director.config.models import inherited_check


def report_for(check: dict[str, Any], where: str = "service") -> Report:
    service: dict[str, Any] = {
        "name": "web",
        "vip": "192.0.2.100",
        "port": 80,
        "real_servers": [{"address": "192.0.2.21"}],
    }
    if where == "service":
        service["check"] = check
    else:
        service["real_servers"][0]["check"] = check
    return check_text(yaml.safe_dump({"services": [service]}, sort_keys=False), "c.yaml")


def test_every_checker_with_its_options_is_valid() -> None:
    checks: list[dict[str, Any]] = [
        {"tcp": {}, "connect_ip": "192.0.2.31", "connect_port": 8080, "bind_to": "192.0.2.2"},
        {
            "http": {
                "method": "HEAD",
                "path": "/healthz",
                "host": "www.example",
                "headers": {"X-Check": "1"},
                "status": [200, "300-399"],
                "body_regex": "ok",
                "digest": "sha256:" + "a" * 64,
                "tls": True,
                "verify": True,
                "ca_file": "/etc/ca.pem",
                "cert_file": "/etc/c.pem",
                "key_file": "/etc/c.key",
                "sni": "www.example",
            }
        },
        {"udp": {"payload_hex": "de ad be ef", "expect_hex": "00 01", "require_reply": True}},
        {"udp": {"payload": "ping", "expect": "^pong"}},
        {"dns": {"name": "www.example.", "type": "AAAA", "answer": "2001:db8::1"}},
        {"dns": {"name": "x.example", "rcode": "NXDOMAIN", "recursion": False}},
        {"misc": {"command": ["/usr/bin/check", "{address}"], "dynamic_weight": True}},
        {"file": {"path": "/run/weight"}, "notify_up": ["logger", "up"], "notify_timeout": "5s"},
    ]
    for check in checks:
        report = report_for({**check, "interval": "1s", "timeout": "500ms", "retries": 2})
        # (The VIP of this lone service is not a VRRP address: that warning is not ours.)
        ours = [d for d in report.diagnostics if "check" in d.path]
        assert report.config is not None and ours == [], (check, report.lines())


@pytest.mark.parametrize(
    ("check", "where", "message"),
    [
        ({"tcp": {}, "timeout": 0}, "check.timeout", "timeout must be more than 0s"),
        ({"tcp": {}, "interval": 0, "timeout": 0}, "check.interval", "more than 0s"),
        (
            {"tcp": {}, "connect_ip": "2001:db8::9", "bind_to": "192.0.2.2"},
            "check.bind_to",
            "192.0.2.2 is not IPv6 like connect_ip 2001:db8::9",
        ),
        (
            {"udp": {"payload": "a", "payload_hex": "61"}},
            "check.udp.payload_hex",
            "payload and payload_hex exclude each other",
        ),
        (
            {"udp": {"expect": "a", "expect_hex": "61"}},
            "check.udp.expect_hex",
            "expect and expect_hex exclude each other",
        ),
        ({"udp": {"payload_hex": "zz"}}, "check.udp.payload_hex", "not hex bytes"),
        ({"udp": {"expect": "("}}, "check.udp.expect", "invalid regular expression"),
        (
            {"http": {"tls": True, "key_file": "/k"}},
            "check.http.key_file",
            "key_file needs cert_file",
        ),
        ({"dns": {"name": "a..b"}}, "check.dns.name", "not a domain name"),
        ({"dns": {"name": "x" * 64 + ".example"}}, "check.dns.name", "not a domain name"),
    ],
)
def test_errors(check: dict[str, Any], where: str, message: str) -> None:
    report = report_for(check, where="real_server")
    assert report.errors, report.lines()
    line = next(line for line in report.lines() if message in line)
    assert f"services[0].real_servers[0].{where}:" in line


@pytest.mark.parametrize(
    ("check", "where", "message"),
    [
        ({"misc": {"command": ["x"]}, "connect_port": 81}, "check.connect_port", "ignored"),
        ({"file": {"path": "/w"}, "bind_to": "192.0.2.2"}, "check.bind_to", "file check"),
        ({"http": {"ca_file": "/ca.pem"}}, "check.http.ca_file", "tls: true only"),
        ({"http": {"verify": False}}, "check.http.verify", "tls: true only"),
    ],
)
def test_warnings(check: dict[str, Any], where: str, message: str) -> None:
    report = report_for(check)
    assert not report.errors and report.config is not None
    line = next(line for line in report.lines() if message in line)
    assert f"services[0].{where}: warning:" in line


def service_with(check: dict[str, Any], rs_check: dict[str, Any]) -> Report:
    service = {
        "name": "web",
        "vip": "192.0.2.100",
        "port": 80,
        "check": check,
        "real_servers": [{"address": "192.0.2.21", "check": rs_check}, {"address": "192.0.2.22"}],
    }
    return check_text(yaml.safe_dump({"services": [service]}, sort_keys=False), "c.yaml")


def test_a_real_servers_check_inherits_the_services_keys() -> None:
    report = service_with(
        {"http": {"path": "/healthz"}, "interval": "5s", "rise": 3},
        {"connect_port": 8080, "timeout": "2s"},
    )
    assert report.config is not None, report.lines()
    svc = report.config.services[0]
    own, plain = (inherited_check(svc.check, rs.check) for rs in svc.real_servers)
    assert own is not None and own.http is not None and own.http.path == "/healthz"
    assert (own.interval, own.rise, own.timeout, own.connect_port) == (5.0, 3, 2.0, 8080)
    assert plain == svc.check

    # Naming a checker replaces the service's checker; the timing is still inherited.
    report = service_with({"http": {"path": "/healthz"}, "interval": "5s"}, {"tcp": {}})
    assert report.config is not None, report.lines()
    svc = report.config.services[0]
    tcp = inherited_check(svc.check, svc.real_servers[0].check)
    assert tcp is not None and tcp.kinds == ["tcp"] and tcp.interval == 5.0


def test_inherited_checks_are_validated_once() -> None:
    # The real server's own timeout against the interval it inherits.
    report = service_with({"tcp": {}, "interval": "2s"}, {"timeout": "3s"})
    lines = [line for line in report.lines() if "timeout is longer than interval" in line]
    assert len(lines) == 1 and "services[0].real_servers[0].check.timeout:" in lines[0]
    # A mistake in the service's check is reported there, not again for each real server.
    report = service_with({"tcp": {}, "interval": "2s", "timeout": "3s"}, {"rise": 2})
    lines = [line for line in report.lines() if "timeout is longer than interval" in line]
    assert len(lines) == 1 and "services[0].check.timeout:" in lines[0], lines
