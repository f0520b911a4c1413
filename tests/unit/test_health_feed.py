"""The daemon's link from health to IPVS: operator drains kept in the state directory, so
that maintenance survives a restart of the daemon until `director enable` clears it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from director.config.models import Config
from director.health.feed import HealthFeed
from director.ipvs.desired import Weights


def config(state_dir: Path) -> Config:
    return Config.model_validate(
        {
            "node": {"name": "d1", "state_dir": str(state_dir)},
            "services": [
                {
                    "name": "web",
                    "vip": "10.0.0.100",
                    "port": 80,
                    "check": {"tcp": {}},
                    "real_servers": [{"address": "10.0.0.21"}, {"address": "10.0.0.22"}],
                }
            ],
        }
    )


def test_a_drain_survives_restarts_until_enabled(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    updates: list[tuple[Weights, frozenset[str]]] = []
    feed = HealthFeed(cfg, lambda weights, sorry: updates.append((weights, sorry)))
    assert feed.set_drained("web", "10.0.0.22", True) == "10.0.0.22:80"
    assert updates, "a drain is handed on to the reconciler at once"
    assert json.loads((tmp_path / "drained.json").read_text()) == [["web", "10.0.0.22", 80]]

    # A restart: a new feed from the same config and state directory.
    restarted = HealthFeed(cfg, lambda *_: None)
    assert restarted.runner.overrides() == [("web", ("10.0.0.22", 80))]
    entry = restarted.status()["services"][0]["real_servers"][1]
    assert entry["maintenance"] is True

    assert restarted.set_drained("web", "10.0.0.22:80", False) == "10.0.0.22:80"
    assert HealthFeed(cfg, lambda *_: None).runner.overrides() == []


def test_bad_drain_requests_change_nothing(tmp_path: Path) -> None:
    feed = HealthFeed(config(tmp_path), lambda *_: None)
    with pytest.raises(ValueError, match="no service named 'api'"):
        feed.set_drained("api", "10.0.0.21", True)
    with pytest.raises(ValueError, match=r"has no real server 10\.0\.0\.23"):
        feed.set_drained("web", "10.0.0.23", True)
    with pytest.raises(ValueError, match=r"has no real server 10\.0\.0\.21:8080"):
        feed.set_drained("web", "10.0.0.21:8080", True)
    assert feed.runner.overrides() == []
    assert not (tmp_path / "drained.json").exists()


def test_a_drained_server_no_longer_configured_is_forgotten(tmp_path: Path) -> None:
    (tmp_path / "drained.json").write_text(json.dumps([["web", "10.0.0.99", 80]]))
    feed = HealthFeed(config(tmp_path), lambda *_: None)
    assert feed.runner.overrides() == []


def test_a_drain_that_cannot_be_recorded_is_refused_and_not_applied(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    feed = HealthFeed(config(blocker / "state"), lambda *_: None)
    with pytest.raises(ValueError, match=r"cannot record it in .*drained\.json: Not a directory"):
        feed.set_drained("web", "10.0.0.21", True)
    assert feed.runner.overrides() == []


def test_an_address_on_several_ports_needs_its_port(tmp_path: Path) -> None:
    cfg = Config.model_validate(
        {
            "node": {"name": "d1", "state_dir": str(tmp_path)},
            "services": [
                {
                    "name": "web",
                    "vip": "10.0.0.100",
                    "port": 80,
                    "forwarding": "nat",
                    "real_servers": [
                        {"address": "10.0.0.21", "port": 8081},
                        {"address": "10.0.0.21", "port": 8082},
                    ],
                }
            ],
        }
    )
    feed = HealthFeed(cfg, lambda *_: None)
    with pytest.raises(ValueError, match=r"has 10\.0\.0\.21 on ports 8081, 8082: say which"):
        feed.set_drained("web", "10.0.0.21", True)
    assert feed.runner.overrides() == []
    assert feed.set_drained("web", "10.0.0.21:8082", True) == "10.0.0.21:8082"
    assert feed.runner.overrides() == [("web", ("10.0.0.21", 8082))]
