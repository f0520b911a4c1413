"""realserver's state file: versioned JSON, atomic writes, one file per network namespace."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from realserver.spec import spec_from_flags
from realserver.state import (
    State,
    StateError,
    dumps,
    load,
    loads,
    netns_inode,
    remove,
    save,
    state_path,
)
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
    step_from_dict,
    step_to_dict,
)

EVERY_STEP: list[Step] = [
    SetSysctl("net/ipv4/conf/all/arp_ignore", 1, 0),
    SetSysctl("net/ipv4/conf/tunl0/rp_filter", 2, None),
    CreateLink("tunl0", "ipip"),
    DeleteLink("tunl0", "ipip"),
    SetLinkUp("tunl0"),
    SetLinkDown("tunl0"),
    AddAddress("lo", "10.0.0.100/32", label="lo:rs"),
    AddAddress("lo", "2001:db8::100/128", nodad=True),
    DelAddress("lo", "10.0.0.100/32"),
    AddFou(5555, 4),
    DelFou(5555, 6),
    SetDefaultRoute(4, "10.0.1.254", "10.0.1.1"),
    SetDefaultRoute(6, "2001:db8::1", None),
    DelDefaultRoute(4, "10.0.1.254"),
]


@pytest.mark.parametrize("step", EVERY_STEP, ids=lambda s: s.op)
def test_step_round_trips_through_json(step: Step) -> None:
    assert step_from_dict(json.loads(json.dumps(step_to_dict(step)))) == step


@pytest.mark.parametrize("step", EVERY_STEP, ids=lambda s: s.op)
def test_inverse_of_inverse_is_the_step(step: Step) -> None:
    undo = inverse(step)
    if undo is None:
        assert isinstance(step, SetSysctl)
        assert step.previous is None
        return
    back = inverse(undo)
    if isinstance(step, AddAddress):  # label and nodad are not needed to remove it
        assert back == AddAddress(step.dev, step.address)
    else:
        assert back == step


def test_state_round_trip_and_format(tmp_path: Path) -> None:
    state = State(4026531992, tuple(EVERY_STEP))
    path = state_path(state.netns, tmp_path / "run")
    assert path == tmp_path / "run" / "netns-4026531992.json"
    save(path, state)
    assert load(path) == state
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["netns"] == 4026531992
    assert data["steps"][0] == {
        "op": "set_sysctl",
        "key": "net/ipv4/conf/all/arp_ignore",
        "value": 1,
        "previous": 0,
    }
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save(path, State(1, (SetLinkUp("tunl0"),)))
    inode = path.stat().st_ino
    save(path, State(1).appended([SetLinkUp("tunl0"), AddFou(1, 4)]))
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    loaded = load(path)
    assert loaded is not None
    assert loaded.steps == (SetLinkUp("tunl0"), AddFou(1, 4))


def test_missing_state_is_none_and_remove_is_idempotent(tmp_path: Path) -> None:
    assert load(tmp_path / "none.json") is None
    remove(tmp_path / "none.json")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"version": 2, "netns": 1, "steps": []}', "version 2, expected 1"),
        ('{"version": 1, "netns": "x", "steps": []}', "netns must be an integer"),
        ('{"version": 1, "netns": 1, "steps": {}}', "steps must be a list"),
        ('{"version": 1, "netns": 1, "steps": [{"op": "reboot"}]}', "steps[0]: unknown step"),
        ('{"version": 1, "netns": 1, "steps": [{"op": "link_up"}]}', "steps[0]: step link_up"),
        (
            '{"version": 1, "netns": 1, "steps": [{"op": "link_up", "dev": "a", "x": 1}]}',
            "unknown fields ['x']",
        ),
        ('{"version": 1, "netns": 1, "steps": [3]}', "steps[0]: not a step"),
    ],
)
def test_bad_state_names_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError) as info:
        load(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_dumps_loads_inverse() -> None:
    state = State(7, (SetSysctl("a/b", 1, 0),))
    assert loads(dumps(state)) == state


def test_netns_inode_from_a_given_path(tmp_path: Path) -> None:
    file = tmp_path / "net"
    file.write_text("")
    assert netns_inode(file) == os.stat(file).st_ino
    assert netns_inode(file) != netns_inode(tmp_path)


def test_state_keeps_the_setup_for_status_and_check(tmp_path: Path) -> None:
    spec = spec_from_flags(
        ["192.0.2.100/80", "192.0.2.101@rs1", "2001:db8::100"], client_ifaces=["eth0"]
    )
    state = State(9, (SetLinkUp("lo"),), spec)
    path = tmp_path / "state.json"
    save(path, state)
    assert load(path) == state
    assert json.loads(path.read_text())["spec"]["vips"][1]["dev"] == "rs1"
    assert State(9).appended([SetLinkUp("lo")]).spec is None
    assert state.appended([SetLinkUp("lo")]).spec == spec


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ('{"vips": []}', "missing or wrong"),
        (
            '{"vips": [{"address": "x", "mode": "dr", "tunnel": null, "dev": null}], "ports": [],'
            ' "iface": "lo", "dummy": false, "client_ifaces": [], "gateway": null}',
            "'x' does not appear to be an IPv4 or IPv6 address",
        ),
        (
            '{"vips": [{"address": "10.0.0.1", "mode": "lvs", "tunnel": null, "dev": null}],'
            ' "ports": [], "iface": "lo", "dummy": false, "client_ifaces": [], "gateway": null}',
            "mode 'lvs'",
        ),
    ],
)
def test_bad_recorded_setup_names_the_file(tmp_path: Path, spec: str, fragment: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(f'{{"version": 1, "netns": 1, "steps": [], "spec": {spec}}}')
    with pytest.raises(StateError) as info:
        load(path)
    assert f"{path}: spec:" in str(info.value)
    assert fragment in str(info.value)
