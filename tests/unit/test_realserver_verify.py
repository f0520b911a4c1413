"""realserver status and check, on snapshots: each finding, and the /proc/net socket tables."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from realserver.plan import Link, Snapshot, plan_start, simulate
from realserver.spec import ServicePort, spec_from_flags
from realserver.state import State
from realserver.steps import AddAddress, DelAddress, SetLinkDown, SetSysctl
from realserver.verify import (
    Finding,
    Listener,
    check,
    client_ifaces,
    decode_address,
    effective,
    failed,
    format_findings,
    format_status,
    in_effect,
    parse_proc_net,
    status_report,
)


def conf(dev: str, name: str) -> str:
    return f"net/ipv4/conf/{dev}/{name}"


def host(**extra: int) -> Snapshot:
    """lo, eth0 (client side, 192.0.2.21) and eth1 (no IPv4) up; kernel defaults."""
    sysctls = {
        conf(dev, name): 0
        for dev in ("all", "default", "lo", "eth0", "eth1")
        for name in ("arp_ignore", "arp_announce", "rp_filter")
    }
    sysctls.update(extra)
    return Snapshot(
        sysctls=sysctls,
        links={"lo": Link("", True), "eth0": Link("veth", True), "eth1": Link("veth", True)},
        addresses=frozenset({("lo", "127.0.0.1/8"), ("eth0", "192.0.2.21/24")}),
        default_routes={4: "192.0.2.1"},
    )


def started(spec_args: dict[str, object], before: Snapshot | None = None) -> Snapshot:
    spec = spec_from_flags(**spec_args)  # type: ignore[arg-type]
    before = before or host()
    return simulate(before, plan_start(spec, before))


V4 = ipaddress.IPv4Address("192.0.2.100")
LISTEN_ANY = Listener("tcp", ipaddress.IPv4Address("0.0.0.0"), 80)


def levels(findings: list[Finding]) -> dict[str, str]:
    return {f"{f.subject}": f.level for f in findings}


def test_effective_is_the_larger_of_all_and_the_interface() -> None:
    snapshot = host(**{conf("all", "arp_ignore"): 1, conf("eth0", "arp_announce"): 2})
    assert effective(snapshot, "eth0", "arp_ignore") == 1
    assert effective(snapshot, "eth0", "arp_announce") == 2
    assert effective(snapshot, "eth9", "arp_ignore") is None


def test_client_ifaces_default_to_arp_capable_interfaces_with_ipv4() -> None:
    snapshot = simulate(host(), [AddAddress("lo", "192.0.2.100/32")])
    assert client_ifaces(spec_from_flags(["192.0.2.100"]), snapshot) == ["eth0"]
    given = spec_from_flags(["192.0.2.100"], client_ifaces=["eth1"])
    assert client_ifaces(given, snapshot) == ["eth1"]


def test_check_after_start_passes_and_names_each_part() -> None:
    spec = spec_from_flags(["192.0.2.100/80", "2001:db8::100"], client_ifaces=["eth0"])
    findings = check(spec, started({"vips": ["192.0.2.100/80", "2001:db8::100"]}), [LISTEN_ANY])
    assert failed(findings) == []
    assert levels(findings) == {
        "VIP 192.0.2.100 (dr)": "ok",
        "VIP 2001:db8::100 (dr)": "ok",
        "ARP on eth0": "ok",
        "service 192.0.2.100:80/tcp": "ok",
    }
    assert format_findings(findings).endswith("all checks passed")


def test_check_before_start_fails_on_vip_arp_and_port() -> None:
    spec = spec_from_flags(["192.0.2.100/80"])
    findings = check(spec, host(), [])
    assert [(f.subject, f.detail) for f in failed(findings)] == [
        ("VIP 192.0.2.100 (dr)", "192.0.2.100/32 is not on lo"),
        (
            "ARP on eth0",
            "arp_ignore 0 answers for the VIP (need 1); "
            "arp_announce 0 may announce the VIP (need 2)",
        ),
        ("service 192.0.2.100:80/tcp", "nothing listens on 192.0.2.100:80/tcp"),
    ]
    assert format_findings(findings).endswith("3 problem(s) found")


def test_check_arp_ignore_3_still_answers_and_8_is_silent() -> None:
    spec = spec_from_flags(["192.0.2.100"])
    done = started({"vips": ["192.0.2.100"]})
    three = simulate(done, [SetSysctl(conf("eth0", "arp_ignore"), 3, 0)])
    assert levels(check(spec, three, []))["ARP on eth0"] == "fail"
    eight = simulate(done, [SetSysctl(conf("eth0", "arp_ignore"), 8, 0)])
    assert levels(check(spec, eight, []))["ARP on eth0"] == "ok"


def test_check_vip_on_a_client_facing_interface_fails() -> None:
    spec = spec_from_flags(["192.0.2.100"])
    snapshot = simulate(started({"vips": ["192.0.2.100"]}), [AddAddress("eth0", "192.0.2.100/24")])
    bad = failed(check(spec, snapshot, []))
    assert [f.detail for f in bad] == ["also on eth0, which answers ARP for it"]


def test_check_vip_on_a_down_interface_and_missing_client_interface() -> None:
    applied = spec_from_flags(["192.0.2.100"], iface="rs0", dummy=True)
    snapshot = simulate(host(), plan_start(applied, host()))
    snapshot = simulate(snapshot, [SetLinkDown("rs0")])
    spec = replace(applied, client_ifaces=("eth9",))
    details = [f.detail for f in failed(check(spec, snapshot, []))]
    assert details == [
        "rs0 holds 192.0.2.100/32 but is down",
        "interface eth9 does not exist",
    ]


def test_check_tun_rp_filter_and_gue_port() -> None:
    spec = spec_from_flags(["192.0.2.100"], "tun", "gue", 5555)
    before = host(**{conf("all", "rp_filter"): 1, conf("default", "rp_filter"): 1})
    done = simulate(before, plan_start(spec, before))
    assert failed(check(spec, done, [])) == []
    # The kernel uses the larger of all and tunl0: start left all at 1 and set tunl0 to 2.
    assert done.sysctls[conf("all", "rp_filter")] == 1
    strict = simulate(done, [SetSysctl(conf("tunl0", "rp_filter"), 1, 2)])
    assert [f.subject for f in failed(check(spec, strict, []))] == ["rp_filter on tunl0"]
    # tunl0 at 1 under all at 2 is still loose.
    loose = simulate(strict, [SetSysctl(conf("all", "rp_filter"), 2, 1)])
    assert failed(check(spec, loose, [])) == []
    # The fou port is gone (someone ran `ip fou del`): gue packets would not be decapsulated.
    no_fou = replace(done, fou_ports=frozenset())
    assert [f.subject for f in failed(check(spec, no_fou, []))] == ["gue port 5555 (IPv4)"]


def test_check_nat_gateway() -> None:
    spec = spec_from_flags(["198.51.100.100/80"], "nat", gateway="192.0.2.2")
    listening = [Listener("tcp", ipaddress.IPv4Address("192.0.2.21"), 80)]
    assert [f.level for f in check(spec, host(), listening)] == ["ok", "fail", "ok"]
    done = started({"vips": ["198.51.100.100"], "mode": "nat", "gateway": "192.0.2.2"})
    assert failed(check(spec, done, listening)) == []
    # Without --set-gateway the route cannot be judged, only shown; no route at all fails.
    plain = spec_from_flags(["198.51.100.100"], "nat")
    assert [f.level for f in check(plain, host(), [])] == ["ok", "info"]
    assert [f.level for f in check(plain, replace(host(), default_routes={}), [])] == ["ok", "fail"]


def test_check_port_wildcards_and_protocols() -> None:
    spec = spec_from_flags(["192.0.2.100/80", "2001:db8::100/80"])
    done = started({"vips": ["192.0.2.100", "2001:db8::100"]})
    v6_any = Listener("tcp", ipaddress.IPv6Address("::"), 80)
    by_port = {f.subject: f for f in check(spec, done, [v6_any])}
    assert by_port["service 192.0.2.100:80/tcp"].detail == "listening on [::]:80 (if not IPv6-only)"
    assert by_port["service [2001:db8::100]:80/tcp"].level == "ok"
    udp = Listener("udp", V4, 80)
    other = Listener("tcp", ipaddress.IPv4Address("192.0.2.21"), 80)
    assert by_port["service 192.0.2.100:80/tcp"].level == "ok"
    levels_now = [f.level for f in check(spec, done, [udp, other]) if "service" in f.subject]
    assert levels_now == ["fail", "fail"]
    # A UDP service: a bound, unconnected UDP socket counts; a TCP one on the port does not.
    dns = replace(spec_from_flags(["192.0.2.100"]), ports=(ServicePort(V4, 53, "udp"),))
    assert [f.level for f in check(dns, done, [Listener("udp", V4, 53)]) if "53" in f.subject] == [
        "ok"
    ]
    assert [f.level for f in check(dns, done, [Listener("tcp", V4, 53)]) if "53" in f.subject] == [
        "fail"
    ]


def test_in_effect_follows_the_kernel() -> None:
    spec = spec_from_flags(["192.0.2.100"])
    steps = plan_start(spec, host())
    done = simulate(host(), steps)
    assert all(in_effect(step, done) for step in steps)
    undone = simulate(done, [DelAddress("lo", "192.0.2.100/32")])
    assert [in_effect(step, undone) for step in steps] == [True, True, False]


def test_status_report_and_text() -> None:
    spec = spec_from_flags(["192.0.2.100"], client_ifaces=["eth0"])
    steps = plan_start(spec, host())
    done = simulate(host(), steps)
    state = State(42, tuple(steps), spec)
    report = status_report(state, Path("/run/realserver/netns-42.json"), 42, spec, done)
    assert report["started"] and report["in_sync"]
    assert report["drift"] == []
    assert [item["in_effect"] for item in report["applied"]] == [True] * len(steps)
    text = format_status(report)
    assert "started in network namespace 42" in text
    assert "the live system matches the setup" in text

    drifted = simulate(done, [DelAddress("lo", "192.0.2.100/32")])
    report = status_report(state, Path("/x"), 42, spec, drifted)
    assert not report["in_sync"]
    assert report["drift"] == ["add address 192.0.2.100/32 on lo label lo:rs"]
    assert "UNDONE" in format_status(report)

    report = status_report(None, Path("/x"), 42, None, host())
    assert report["started"] is False and report["applied"] == []
    assert format_status(report).startswith("not started in network namespace 42")


# /proc/net/tcp as the kernel writes it: 127.0.0.1:631 and 0.0.0.0:80 listening, one
# established connection.
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 6400000A:0050 0B00000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
# /proc/net/tcp6: [2001:db8::100]:443 listening.
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st
   0: B80D0120000000000000000000010000:01BB 00000000000000000000000000000000:0000 0A
"""


def test_parse_proc_net() -> None:
    assert parse_proc_net(PROC_TCP, "tcp") == [
        Listener("tcp", ipaddress.IPv4Address("127.0.0.1"), 631),
        Listener("tcp", ipaddress.IPv4Address("0.0.0.0"), 80),
    ]
    assert parse_proc_net(PROC_TCP6, "tcp") == [
        Listener("tcp", ipaddress.IPv6Address("2001:db8::100"), 443)
    ]
    assert decode_address("0100007F") == ipaddress.IPv4Address("127.0.0.1")
