"""Kernel features the host lacks and later work needs: dummy and ipip interfaces."""

from __future__ import annotations

from collections.abc import Callable

from pyroute2 import IPRoute


def kinds(ipr: IPRoute) -> dict[str, str | None]:
    return {link.get("ifname"): link.get(("linkinfo", "kind")) for link in ipr.get_links()}


def test_dummy_interface(modprobe: Callable[..., None], netns_name: str) -> None:
    modprobe("dummy")
    with IPRoute(netns=netns_name) as ipr:
        ipr.link("add", ifname="dvm-dummy0", kind="dummy")
        index = ipr.link_lookup(ifname="dvm-dummy0")[0]
        ipr.addr("add", index=index, address="192.0.2.1", prefixlen=32)
        ipr.link("set", index=index, state="up")
        assert kinds(ipr)["dvm-dummy0"] == "dummy"
        assert [a.get("address") for a in ipr.get_addr(index=index, family=2)] == ["192.0.2.1"]


def test_ipip_tunnel(modprobe: Callable[..., None], netns_name: str) -> None:
    modprobe("ipip")
    with IPRoute(netns=netns_name) as ipr:
        # With ipip loaded every namespace gets the catch-all tunl0, which real servers behind
        # an IPVS TUN director use to decapsulate.
        assert kinds(ipr).get("tunl0") == "ipip"
        ipr.link(
            "add", ifname="dvm-ipip0", kind="ipip", ipip_local="192.0.2.1", ipip_remote="192.0.2.2"
        )
        assert kinds(ipr)["dvm-ipip0"] == "ipip"
