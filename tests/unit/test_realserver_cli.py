"""realserver's command line: bad input ends with exit 2 and a message, before any kernel access.

Only input errors are driven here (in-process, no root needed): a valid setup would change the
kernel of the namespace the test runs in, which is the lab's and the VM's job.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from realserver.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["start", "--vip", "10.0.0.300"], "'10.0.0.300' is not an IPv4 or IPv6 address"),
        (["start"], "no VIP given"),
        (["start", "--vip", "10.0.0.1", "--mode", "lvs"], "--mode 'lvs': not one of"),
        (["start", "--vip", "10.0.0.1", "--tunnel", "gre"], "tunnel options need mode tun"),
        (["start", "--vip", "10.0.0.1", "--dummy"], "--dummy: name the dummy interface"),
        (["status", "--client-iface", "eth0"], "--client-iface: give the VIPs too"),
        (["check", "--mode", "tun", "--self", "10.0.0.1"], "--self, --mode: give the VIPs too"),
    ],
)
def test_bad_input_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    assert main([*argv, "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("realserver: error: ")
    assert fragment in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_config_file_exits_2_with_its_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rs.yaml"
    config.write_text("services:\n  - name: web\n    vip: 10.0.0.300\n")
    assert main(["start", "-c", str(config), "--state-dir", str(tmp_path / "state")]) == 2
    assert f"{config}:3" in capsys.readouterr().err


def test_check_with_nothing_to_check_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--state-dir", str(tmp_path)]) == 2
    assert "nothing to check: realserver was not started here" in capsys.readouterr().err


def test_unreadable_state_exits_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from realserver.state import netns_inode, state_path

    path = state_path(netns_inode(), tmp_path)
    path.write_text("{")
    assert main(["check", "--state-dir", str(tmp_path)]) == 1
    assert f"{path}: not JSON" in capsys.readouterr().err


def test_usage_lists_the_four_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("start", "stop", "status", "check"):
        assert re.search(rf"^    {command} +\S", out, re.M), out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("realserver ")
