"""realserver planning: exact steps on a fresh host, idempotence, exact and reverse revert."""

from __future__ import annotations

from realserver.plan import Link, Snapshot, drift, plan_revert, plan_start, simulate
from realserver.spec import spec_from_flags
from realserver.steps import (
    AddAddress,
    AddFou,
    CreateLink,
    DelAddress,
    DelDefaultRoute,
    DeleteLink,
    DelFou,
    SetDefaultRoute,
    SetLinkDown,
    SetLinkUp,
    SetSysctl,
    Step,
    inverse,
)


def conf(family: int, dev: str, name: str) -> str:
    return f"net/ipv{family}/conf/{dev}/{name}"


def fresh(**extra: int) -> Snapshot:
    """A freshly booted host: kernel defaults, lo and eth0 up, no VIPs."""
    sysctls = {}
    for dev in ("all", "default", "lo", "eth0"):
        sysctls[conf(4, dev, "arp_ignore")] = 0
        sysctls[conf(4, dev, "arp_announce")] = 0
        sysctls[conf(4, dev, "rp_filter")] = 0
    sysctls.update(extra)
    return Snapshot(
        sysctls=sysctls,
        links={"lo": Link("", True), "eth0": Link("", True)},
        addresses=frozenset({("lo", "127.0.0.1/8"), ("eth0", "10.0.1.11/24")}),
    )


def test_dr_plan_on_fresh_host_exact_steps() -> None:
    spec = spec_from_flags(["10.0.0.100/80", "2001:db8::100"], client_ifaces=["eth0"])
    assert plan_start(spec, fresh()) == [
        SetSysctl(conf(4, "all", "arp_ignore"), 1, 0),
        SetSysctl(conf(4, "all", "arp_announce"), 2, 0),
        SetSysctl(conf(4, "eth0", "arp_ignore"), 1, 0),
        SetSysctl(conf(4, "eth0", "arp_announce"), 2, 0),
        AddAddress("lo", "10.0.0.100/32", label="lo:rs"),
        AddAddress("lo", "2001:db8::100/128", nodad=True),
    ]


def test_start_twice_plans_nothing() -> None:
    for spec in (
        spec_from_flags(["10.0.0.100"], client_ifaces=["eth0"]),
        spec_from_flags(["10.0.0.100"], iface="rs0", dummy=True),
        spec_from_flags(["10.0.0.100", "2001:db8::100"], "tun", "gue", 5555),
        spec_from_flags(["10.0.0.100"], "tun", "gre"),
        spec_from_flags(["10.0.0.100"], "nat", gateway="10.0.1.254"),
    ):
        before = fresh()
        after = simulate(before, plan_start(spec, before))
        assert plan_start(spec, after) == [], spec
        assert drift(spec, after) == []


def test_already_configured_values_are_left_alone() -> None:
    snapshot = fresh(**{conf(4, "all", "arp_ignore"): 2, conf(4, "all", "arp_announce"): 2})
    snapshot = simulate(snapshot, [AddAddress("lo", "10.0.0.100/32")])
    spec = spec_from_flags(["10.0.0.100"])
    # arp_ignore 2 is not the 1 asked for: set it, recording 2; arp_announce is right already.
    assert plan_start(spec, snapshot) == [SetSysctl(conf(4, "all", "arp_ignore"), 1, 2)]


def test_revert_restores_non_default_previous_values() -> None:
    before = fresh(**{conf(4, "all", "arp_announce"): 1, conf(4, "eth0", "arp_ignore"): 8})
    spec = spec_from_flags(["10.0.0.100"], client_ifaces=["eth0"])
    applied = plan_start(spec, before)
    after = simulate(before, applied)
    revert = plan_revert(applied, after)
    assert SetSysctl(conf(4, "all", "arp_announce"), 1, 2) in revert
    assert SetSysctl(conf(4, "eth0", "arp_ignore"), 8, 1) in revert
    assert simulate(after, revert) == before


def test_revert_is_reverse_order_of_applied() -> None:
    before = fresh()
    spec = spec_from_flags(["10.0.0.100"], "tun", "gue", 5555, client_ifaces=["eth0"])
    applied = plan_start(spec, before)
    revert = plan_revert(applied, simulate(before, applied))
    assert revert == [u for u in (inverse(s) for s in reversed(applied)) if u is not None]
    assert revert[0] == DelAddress("tunl0", "10.0.0.100/32")
    assert revert[-1] == SetSysctl(conf(4, "all", "arp_ignore"), 0, 1)


def test_revert_removes_only_what_was_added() -> None:
    # The VIP was already on lo before start: start does not add it, stop does not remove it.
    before = simulate(fresh(), [AddAddress("lo", "10.0.0.100/32")])
    spec = spec_from_flags(["10.0.0.100", "10.0.0.101"])
    applied = plan_start(spec, before)
    assert AddAddress("lo", "10.0.0.100/32", label="lo:rs") not in applied
    after = simulate(before, applied)
    revert = plan_revert(applied, after)
    assert DelAddress("lo", "10.0.0.101/32") in revert
    assert DelAddress("lo", "10.0.0.100/32") not in revert
    assert simulate(after, revert) == before


def test_revert_skips_what_is_already_undone() -> None:
    before = fresh()
    spec = spec_from_flags(["10.0.0.100"])
    applied = plan_start(spec, before)
    after = simulate(before, applied)
    # Someone removed the VIP by hand and reset arp_ignore: stop only restores arp_announce.
    tampered = simulate(after, [DelAddress("lo", "10.0.0.100/32")])
    tampered = simulate(tampered, [SetSysctl(conf(4, "all", "arp_ignore"), 0, 1)])
    assert plan_revert(applied, tampered) == [SetSysctl(conf(4, "all", "arp_announce"), 0, 2)]
    assert plan_revert(applied, before) == []


def test_tun_ipip_needs_tunnel_up_and_rp_filter_relaxed() -> None:
    before = fresh(**{conf(4, "all", "rp_filter"): 1, conf(4, "default", "rp_filter"): 1})
    spec = spec_from_flags(["10.0.0.100"], "tun")
    assert plan_start(spec, before) == [
        SetSysctl(conf(4, "all", "arp_ignore"), 1, 0),
        SetSysctl(conf(4, "all", "arp_announce"), 2, 0),
        CreateLink("tunl0", "ipip"),
        SetLinkUp("tunl0"),
        # Only the tunnel is loosened: max(all=1, tunl0=2) is 2 there, and every other
        # interface keeps its strict filter.
        SetSysctl(conf(4, "tunl0", "rp_filter"), 2, 1),
        AddAddress("tunl0", "10.0.0.100/32", label="tunl0:rs"),
    ]


def test_tun_rp_filter_zero_on_the_tunnel_is_not_enough_under_a_strict_all() -> None:
    before = fresh(**{conf(4, "all", "rp_filter"): 1, conf(4, "default", "rp_filter"): 0})
    steps = plan_start(spec_from_flags(["10.0.0.100"], "tun"), before)
    assert [s for s in steps if isinstance(s, SetSysctl) and "rp_filter" in s.key] == [
        SetSysctl(conf(4, "tunl0", "rp_filter"), 2, 0)
    ]
    # With `all` at 0 the tunnel's own 0 is loose enough.
    before = fresh(**{conf(4, "all", "rp_filter"): 0, conf(4, "default", "rp_filter"): 0})
    steps = plan_start(spec_from_flags(["10.0.0.100"], "tun"), before)
    assert not [s for s in steps if isinstance(s, SetSysctl) and "rp_filter" in s.key]


def test_tun_rp_filter_zero_or_two_is_relaxed_enough() -> None:
    before = simulate(fresh(**{conf(4, "all", "rp_filter"): 2}), [CreateLink("tunl0", "ipip")])
    spec = spec_from_flags(["10.0.0.100"], "tun")
    steps = plan_start(spec, before)
    assert not [s for s in steps if isinstance(s, SetSysctl) and "rp_filter" in s.key]
    assert SetLinkUp("tunl0") in steps
    assert not [s for s in steps if isinstance(s, CreateLink)]


def test_tun_existing_tunnel_down_is_set_up_and_revert_sets_it_down() -> None:
    before = simulate(fresh(), [CreateLink("tunl0", "ipip")])
    spec = spec_from_flags(["10.0.0.100"], "tun")
    applied = plan_start(spec, before)
    after = simulate(before, applied)
    revert = plan_revert(applied, after)
    assert SetLinkDown("tunl0") in revert
    assert not [s for s in revert if isinstance(s, DeleteLink)]
    assert simulate(after, revert) == before


def test_tun_gue_adds_fou_port_and_ipv6_uses_ip6tnl() -> None:
    spec = spec_from_flags(["10.0.0.100", "2001:db8::100"], "tun", "gue", 5555)
    steps = plan_start(spec, fresh())
    assert steps[2:] == [
        CreateLink("tunl0", "ipip"),
        CreateLink("ip6tnl0", "ip6tnl"),
        AddFou(5555, 4),
        AddFou(5555, 6),
        SetLinkUp("tunl0"),
        SetLinkUp("ip6tnl0"),
        AddAddress("tunl0", "10.0.0.100/32", label="tunl0:rs"),
        AddAddress("ip6tnl0", "2001:db8::100/128", nodad=True),
    ]
    revert = plan_revert(steps, simulate(fresh(), steps))
    assert DelFou(5555, 6) in revert
    assert simulate(simulate(fresh(), steps), revert) == fresh()


def test_tun_gre_uses_gre0() -> None:
    steps = plan_start(spec_from_flags(["10.0.0.100"], "tun", "gre"), fresh())
    assert CreateLink("gre0", "gre") in steps
    assert AddAddress("gre0", "10.0.0.100/32", label="gre0:rs") in steps


def test_ipv6_only_dr_needs_no_arp_sysctls() -> None:
    steps = plan_start(spec_from_flags(["2001:db8::100"]), fresh())
    assert steps == [AddAddress("lo", "2001:db8::100/128", nodad=True)]


def test_dr_on_dummy_interface() -> None:
    spec = spec_from_flags(["10.0.0.100"], iface="rs0", dummy=True)
    steps = plan_start(spec, fresh())
    assert steps[2:] == [
        CreateLink("rs0", "dummy"),
        SetLinkUp("rs0"),
        AddAddress("rs0", "10.0.0.100/32", label="rs0:rs"),
    ]
    after = simulate(fresh(), steps)
    assert plan_revert(steps, after)[0] == DelAddress("rs0", "10.0.0.100/32")
    assert simulate(after, plan_revert(steps, after)) == fresh()


def test_long_interface_name_gets_no_label() -> None:
    steps = plan_start(spec_from_flags(["10.0.0.100"], iface="abcdefghijklmn"), fresh())
    assert steps[-1] == AddAddress("abcdefghijklmn", "10.0.0.100/32", label=None)


def test_nat_sets_gateway_and_revert_restores_previous_route() -> None:
    before = Snapshot(default_routes={4: "10.0.1.1"})
    spec = spec_from_flags(["10.0.0.100"], "nat", gateway="10.0.1.254")
    steps = plan_start(spec, before)
    assert steps == [SetDefaultRoute(4, "10.0.1.254", "10.0.1.1")]
    after = simulate(before, steps)
    assert plan_revert(steps, after) == [SetDefaultRoute(4, "10.0.1.1", "10.0.1.254")]
    # Without a previous default route the route is removed.
    steps = plan_start(spec, Snapshot())
    assert plan_revert(steps, simulate(Snapshot(), steps)) == [DelDefaultRoute(4, "10.0.1.254")]


def test_nat_without_gateway_changes_nothing() -> None:
    assert plan_start(spec_from_flags(["10.0.0.100"], "nat"), fresh()) == []


def test_drift_describes_what_is_missing() -> None:
    spec = spec_from_flags(["10.0.0.100"])
    lines = drift(spec, fresh())
    assert lines == [
        "sysctl net.ipv4.conf.all.arp_ignore = 1 (was 0)",
        "sysctl net.ipv4.conf.all.arp_announce = 2 (was 0)",
        "add address 10.0.0.100/32 on lo label lo:rs",
    ]


def test_second_start_after_drift_appends_and_full_revert_restores_original() -> None:
    before = fresh(**{conf(4, "all", "arp_ignore"): 2})
    spec = spec_from_flags(["10.0.0.100"])
    first = plan_start(spec, before)
    state = simulate(before, first)
    # Drift: arp_ignore reset by hand to 0; the second start records 0 as its previous value.
    drifted = simulate(state, [SetSysctl(conf(4, "all", "arp_ignore"), 0, 1)])
    second = plan_start(spec, drifted)
    assert second == [SetSysctl(conf(4, "all", "arp_ignore"), 1, 0)]
    recorded: list[Step] = [*first, *second]
    after = simulate(drifted, second)
    # The original 2 wins: reverse order undoes the second start first, then the first.
    assert simulate(after, plan_revert(recorded, after)).sysctls == before.sysctls


def test_dr_vip_on_its_own_interface_comes_in_order() -> None:
    spec = spec_from_flags(["10.0.0.100", "10.0.0.101", "10.0.0.102@eth1"])
    steps = plan_start(spec, fresh())
    assert steps[-3:] == [
        AddAddress("lo", "10.0.0.100/32", label="lo:rs"),
        AddAddress("lo", "10.0.0.101/32", label="lo:rs"),
        AddAddress("eth1", "10.0.0.102/32", label="eth1:rs"),
    ]
