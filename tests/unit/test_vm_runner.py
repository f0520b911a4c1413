"""The VM runner's pure parts, and its process handling with stand-ins for vng (no VM boots)."""

from __future__ import annotations

import os
import select
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import lab.vm as vm
import lab.vmsuite as vmsuite
from lab.vm import VmError, VmResult, VmSetupError


def make_boot(tmp_path: Path, kernels: list[str], with_modules: list[str]) -> tuple[Path, Path]:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    modules.mkdir()
    for name in kernels:
        (boot / f"vmlinuz-{name}").write_bytes(b"")
    for name in with_modules:
        (modules / name).mkdir()
    return boot, modules


def test_kernel_versions_sort_naturally() -> None:
    versions = ["6.1.0-9", "6.10.0-1", "5.10.0-30", "6.1.0-56", "6.9.12-3", "6.12.12+bpo"]
    assert sorted(versions, key=vm.kernel_sort_key) == [
        "5.10.0-30",
        "6.1.0-9",
        "6.1.0-56",
        "6.9.12-3",
        "6.10.0-1",
        "6.12.12+bpo",
    ]


def test_find_kernel_picks_newest_stock_kernel_with_modules(tmp_path: Path) -> None:
    names = ["6.1.0-9-amd64", "6.1.0-56-amd64", "6.1.0-60-cloud-amd64", "6.1.0-61-rt-amd64"]
    names.append("6.1.0-70-amd64")  # newest, but its modules are gone: unusable
    boot, modules = make_boot(tmp_path, names, with_modules=[n for n in names if "70" not in n])
    assert vm.find_kernel(boot, modules) == boot / "vmlinuz-6.1.0-56-amd64"


def test_find_kernel_without_kernel_names_the_package(tmp_path: Path) -> None:
    boot, modules = make_boot(tmp_path, ["6.1.0-56-cloud-amd64"], ["6.1.0-56-cloud-amd64"])
    with pytest.raises(VmSetupError, match="apt-get install linux-image-amd64"):
        vm.find_kernel(boot, modules)


def test_find_vng_prefers_the_venv_and_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv_bin = tmp_path / "bin"
    venv_bin.mkdir()
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(VmSetupError, match="pip install virtme-ng"):
        vm.find_vng()
    (venv_bin / "vng").write_text("#!/bin/sh\n")
    (venv_bin / "vng").chmod(0o755)
    assert vm.find_vng() == venv_bin / "vng"


def test_find_qemu_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VmSetupError, match="apt-get install qemu-system-x86"):
        vm.find_qemu()


def elf(program_header_types: list[int]) -> bytes:
    """A minimal little-endian ELF64 header followed by its program header table."""
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[0x20:0x28] = struct.pack("<Q", phoff)
    header[0x36:0x38] = struct.pack("<H", phentsize)
    header[0x38:0x3A] = struct.pack("<H", len(program_header_types))
    table = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in program_header_types)
    return bytes(header) + table


def test_static_elf_detection(tmp_path: Path) -> None:
    static, dynamic, text = tmp_path / "static", tmp_path / "dynamic", tmp_path / "text"
    static.write_bytes(elf([1, 1, 4]))  # PT_LOAD, PT_LOAD, PT_NOTE
    dynamic.write_bytes(elf([6, 3, 1]))  # PT_PHDR, PT_INTERP, PT_LOAD
    text.write_text("#!/bin/sh\n")
    assert vm.is_static_elf(static)
    assert not vm.is_static_elf(dynamic)
    assert not vm.is_static_elf(text)


def test_dynamic_busybox_names_busybox_static(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "busybox").write_bytes(elf([6, 3, 1]))
    (tmp_path / "busybox").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VmSetupError, match="apt-get install busybox-static"):
        vm.check_busybox()
    (tmp_path / "busybox").write_bytes(elf([1]))
    vm.check_busybox()


def test_vng_argv() -> None:
    argv = vm.build_vng_argv(
        Path("/v/bin/vng"),
        Path("/boot/vmlinuz-6.1.0-56-amd64"),
        Path("/usr/bin/qemu-system-x86_64"),
        Path("/r/.vm-run-x/run.sh"),
        rwdir=Path("/r"),
        memory="3G",
        cpus=4,
    )
    assert argv == [
        "/v/bin/vng",
        "--run",
        "/boot/vmlinuz-6.1.0-56-amd64",
        "--user",
        "root",
        "--memory",
        "3G",
        "--cpus",
        "4",
        "--disable-kvm",
        "--force-9p",
        "--qemu",
        "/usr/bin/qemu-system-x86_64",
        "--rwdir",
        "/r",
        "--qemu-opts=-fsdev local,id=labvm_cache,path=/,security_model=none,readonly=on,"
        "multidevs=remap -device virtio-9p-pci,fsdev=labvm_cache,mount_tag=labvm_cache",
        "--",
        "sh",
        "/r/.vm-run-x/run.sh",
    ]
    verbose = vm.build_vng_argv(
        Path("v"), Path("k"), Path("q"), Path("s"), rwdir=Path("r"), console=True
    )
    assert verbose[1] == "--verbose"


def test_guest_env() -> None:
    env = vm.guest_env({"FOO": "bar"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["DIRECTOR_IN_VM"] == "1"
    assert env["FOO"] == "bar"
    with pytest.raises(ValueError, match="invalid environment variable"):
        vm.guest_env({"A B": "x"})


def test_guest_script_runs_in_cwd_with_env_and_records_exit_code(tmp_path: Path) -> None:
    """The generated script, run by the host's sh: what the guest's sh does with it."""
    control, work = tmp_path / "control", tmp_path / "work dir"
    control.mkdir()
    work.mkdir()
    tricky = 'it\'s a $HOME `x` "q"'
    argv = ["sh", "-c", 'printf "%s|%s|%s" "$1" "$FOO" "$PWD" > out; exit 7', "-", tricky]
    script = vm.build_guest_script(argv, cwd=work, env={"FOO": tricky}, control=control)
    (control / "run.sh").write_text(script)
    proc = subprocess.run(["sh", str(control / "run.sh")], cwd=tmp_path, env={"PATH": "/bin"})
    assert proc.returncode == 0  # the script's own status; the command's is in rc
    assert (control / "started").exists()
    assert (control / "rc").read_text() == "7\n"
    assert (work / "out").read_text() == f"{tricky}|{tricky}|{work}"


def test_python_library_dirs_are_outermost_and_hold_the_stdlib() -> None:
    dirs = vm.python_library_dirs()
    assert any((d / "os.py").is_file() for d in dirs)
    assert any(Path(pytest.__file__).is_relative_to(d) for d in dirs)
    assert not any(a != b and a.is_relative_to(b) for a in dirs for b in dirs)


def test_cached_mounts_leave_the_writable_dir_alone() -> None:
    lines = vm.cached_mount_lines([Path("/py/lib"), Path("/r"), Path("/r/sub")], rwdir=Path("/r"))
    assert "cache=loose labvm_cache /run/labvm-cache" in lines
    assert "mount --bind /run/labvm-cache/py/lib /py/lib" in lines
    assert "/run/labvm-cache/r" not in lines
    # A failed mount only costs speed: the command still runs, after a warning.
    assert lines.rstrip().endswith("imports will be slow' >&2")


def fake_vng(control: Path, body: str) -> list[str]:
    """A stand-in for vng: a shell that plays the guest's part on the control directory."""
    return ["sh", "-c", body.replace("CONTROL", shlex.quote(str(control)))]


def test_run_reads_exit_code_and_separate_streams(tmp_path: Path) -> None:
    body = ": > CONTROL/started; echo 5 > CONTROL/rc; echo out; echo err >&2; exit 9"
    result = vm._run(fake_vng(tmp_path, body), dict(os.environ), tmp_path, tmp_path, 30, False)
    # vng's own status (9) is ambiguous; the recorded one wins.
    assert (result.returncode, result.stdout, result.stderr) == (5, "out\n", "err\n")
    assert 0 <= result.boot_seconds <= result.wall_seconds


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo no-kernel >&2; exit 255", "did not start the command"),
        (": > CONTROL/started; exit 255", "stopped before the command finished"),
    ],
)
def test_run_without_records_is_a_vm_error(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(VmError, match=message) as info:
        vm._run(fake_vng(tmp_path, body), dict(os.environ), tmp_path, tmp_path, 30, False)
    assert not info.value.timed_out
    if "no-kernel" in body:
        assert "no-kernel" in str(info.value)


def test_run_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The grandchild stands for qemu, started by vng's child.
    body = "sh -c 'echo $$ > CONTROL/qemu.pid; exec sleep 60' & wait"
    with pytest.raises(VmError, match="timed out") as info:
        vm._run(fake_vng(tmp_path, body), dict(os.environ), tmp_path, tmp_path, 1.0, False)
    assert info.value.timed_out
    pid = int((tmp_path / "qemu.pid").read_text())
    # SIGKILL went to the whole group; the grandchild dies when it next runs, so await its
    # exit (a pidfd turns readable then) rather than look at it at once.
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        exited = bool(select.select([pidfd], [], [], 10)[0])
    finally:
        os.close(pidfd)
    assert exited, f"grandchild {pid} survived the timeout by 10 s"


def fake_run_in_vm(calls: list[dict[str, Any]], returncode: int = 3) -> Any:
    def run(argv: list[str], **kwargs: Any) -> VmResult:
        calls.append({"argv": argv, **kwargs})
        return VmResult(returncode, "", "", boot_seconds=1.0, wall_seconds=2.0)

    return run


def test_cli_passes_command_and_options_and_returns_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(vm, "run_in_vm", fake_run_in_vm(calls))
    argv = ["--rwdir", str(tmp_path), "--timeout", "5", "-e", "A=b=c", "--", "ls", "-l", "--", "x"]
    assert vm.main(argv) == 3
    (call,) = calls
    assert call["argv"] == ["ls", "-l", "--", "x"]
    assert (call["rwdir"], call["timeout"], call["env"]) == (tmp_path, 5.0, {"A": "b=c"})
    assert call["echo"] is True


def test_cli_default_rwdir_is_results_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(vm, "run_in_vm", fake_run_in_vm(calls, returncode=0))
    assert vm.main(["--", "true"]) == 0
    assert calls[0]["rwdir"] == vm.CHECKOUT / "results" / "vm"


@pytest.mark.parametrize(
    "error", [VmError("boom", stderr="guest said no"), VmSetupError("apt-get install x")]
)
def test_cli_vm_failure_exits_125(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    def fail(argv: list[str], **kwargs: Any) -> VmResult:
        raise error

    monkeypatch.setattr(vm, "run_in_vm", fail)
    assert vm.main(["--", "true"]) == vm.RUNNER_FAILED == 125
    assert str(error).splitlines()[0] in capsys.readouterr().err


def test_cli_without_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        vm.main(["--timeout", "5"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("nodeid", "key"),
    [
        ("tests/vm/test_ipvs.py::test_x", ("tests.vm.test_ipvs", "test_x")),
        ("tests/vm/test_a.py::TestC::test_m[1-a::b]", ("tests.vm.test_a.TestC", "test_m[1-a::b]")),
    ],
)
def test_junit_key(nodeid: str, key: tuple[str, str]) -> None:
    assert vmsuite.junit_key(nodeid) == key


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.vm.test_a" name="test_ok" time="0.1" />
<testcase classname="tests.vm.test_a" name="test_bad" time="0.1">
  <failure message="assert 1 == 2">trace of the failure</failure></testcase>
<testcase classname="tests.vm.test_a" name="test_skip" time="0.1">
  <skipped type="pytest.skip" message="no ipvsadm">why</skipped></testcase>
<testcase classname="tests.vm.test_a" name="test_teardown" time="0.1" />
<testcase classname="tests.vm.test_a" name="test_teardown" time="0.1">
  <error message="failed on teardown">teardown trace</error></testcase>
<testcase classname="" name="tests.vm.test_broken" time="0.0">
  <error message="collection failure">ImportError</error></testcase>
</testsuite></testsuites>"""


def test_read_junit(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    out = vmsuite.read_junit(tmp_path / "junit.xml")
    assert out[("tests.vm.test_a", "test_ok")].passed
    bad = out[("tests.vm.test_a", "test_bad")]
    assert not bad.passed and "assert 1 == 2" in bad.text and "trace of the failure" in bad.text
    assert not out[("tests.vm.test_a", "test_skip")].passed, "a skip inside the VM is no pass"
    teardown = out[("tests.vm.test_a", "test_teardown")]
    assert not teardown.passed and "teardown trace" in teardown.text
    assert not out[("", "tests.vm.test_broken")].passed


def test_run_suite_maps_report_to_node_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(argv: list[str], **kwargs: Any) -> VmResult:
        assert "tests/vm" in argv and f"--junitxml={tmp_path / 'junit.xml'}" in argv
        (tmp_path / "junit.xml").write_text(JUNIT)
        return VmResult(1, "inner out", "", boot_seconds=20.0, wall_seconds=60.0)

    monkeypatch.setattr(vmsuite, "run_in_vm", run)
    ids = [
        "tests/vm/test_a.py::test_ok",
        "tests/vm/test_a.py::test_bad",
        "tests/vm/test_a.py::gone",
    ]
    suite = vmsuite.run_suite(ids, rwdir=tmp_path)
    assert suite.error is None and suite.returncode == 1
    assert suite.outcomes["tests/vm/test_a.py::test_ok"].passed
    assert not suite.outcomes["tests/vm/test_a.py::test_bad"].passed
    assert "tests/vm/test_a.py::gone" not in suite.outcomes
    assert " :: tests.vm.test_broken" in suite.unmatched
    assert (tmp_path / "pytest.log").read_text() == "inner out"


@pytest.mark.parametrize("timed_out", [False, True])
def test_run_suite_vm_failure_is_an_error_for_every_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timed_out: bool
) -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **kwargs: Any) -> VmResult:
        calls.append(argv)
        raise VmError("VM did not start the command", stderr="Probing EDD", timed_out=timed_out)

    monkeypatch.setattr(vmsuite, "run_in_vm", run)
    suite = vmsuite.run_suite(["tests/vm/test_a.py::test_ok"], rwdir=tmp_path)
    assert suite.error is not None and "Probing EDD" in suite.error
    assert suite.outcomes == {}
    # A boot failure gets one diagnostic boot with the console; a timeout does not.
    assert len(calls) == (1 if timed_out else 2)
