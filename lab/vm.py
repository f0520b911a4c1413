"""Run a command inside a VM that boots Debian's stock kernel over the host filesystem.

The host kernel lacks IPVS, dummy and tunnel interfaces; Debian's stock kernel has them. virtme-ng
(`vng`) boots that kernel under QEMU with the host's root filesystem mounted read-only (writable
overlays on /etc, /tmp, /var, ...), so the checkout and its virtualenv are visible at the same
paths inside, and `--rwdir` makes one host directory writable from inside.

    result = run_in_vm([".venv/bin/pytest", "tests/vm"], rwdir=Path("results/vm"), timeout=900)
    result.returncode, result.stdout, result.stderr

or from a shell: `python -m lab vm [--rwdir DIR] [--timeout S] -- CMD...`.

How the command's outcome gets back (checked empirically with vng 1.42 and QEMU 7.2):

- stdout and stderr: vng forwards the guest command's stdout and stderr over separate virtio
  serial ports to its own stdout and stderr, which are pipes read here.
- exit code: vng does return the command's exit code, but it also returns 1 for its own errors
  and 255 when the guest dies, so those are ambiguous. The command therefore runs under a small
  generated shell script that writes its exit code into a control directory inside `rwdir`; the
  file's absence means the VM failed (raised as `VmError` with vng's output).
- QEMU (TCG, `--disable-kvm`: nested KVM hangs on these machines) runs in its own process group
  started here, which is killed on timeout.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

# Set to "1" in every command run inside the VM; tests/vm refuses to run without it.
IN_VM_ENV = "DIRECTOR_IN_VM"
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_RWDIR = CHECKOUT / "results" / "vm"
DEFAULT_TIMEOUT = 900.0
DEFAULT_MEMORY = "2G"
DEFAULT_CPUS = 2
# Exit code of the CLI when the VM itself failed (prerequisite missing, boot failure, timeout),
# as `env`, `timeout` and container runners use 125 for "the runner failed, not the command".
RUNNER_FAILED = 125
# The PATH a login shell on Debian gets, behind the venv's bin (the guest starts with less).
GUEST_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Stock Debian flavour only ("6.1.0-56-amd64", "6.12.12+bpo-amd64"): cloud and rt kernels lack
# modules the lab needs.
_KERNEL_RE = re.compile(r"^vmlinuz-(?P<release>(?P<version>\d[^-]*(?:-\d[^-]*)?)-amd64)$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAIL_LINES = 40
# The second, cached export of the host's root (QEMU fsdev id and 9p mount tag) and where the
# guest mounts it.
CACHE_TAG = "labvm_cache"
CACHE_MOUNT = "/run/labvm-cache"
PT_INTERP = 3


class VmSetupError(RuntimeError):
    """A prerequisite of the VM lab is missing; the message says what to install."""


class VmError(RuntimeError):
    """The VM did not run the command to completion (boot failure, guest crash, timeout)."""

    def __init__(
        self, message: str, *, stdout: str = "", stderr: str = "", timed_out: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out

    def __str__(self) -> str:
        return f"{self.message}\n{format_tail(self.stdout, self.stderr)}"


@dataclass(frozen=True)
class VmResult:
    returncode: int
    stdout: str
    stderr: str
    # Host wall-clock seconds from starting vng until the command started in the guest.
    boot_seconds: float
    # Host wall-clock seconds of the whole run: boot, command, shutdown.
    wall_seconds: float


def format_tail(stdout: str, stderr: str, lines: int = _TAIL_LINES) -> str:
    """The last lines of both streams, for error messages."""
    parts = []
    for name, text in (("stdout", stdout), ("stderr", stderr)):
        tail = text.splitlines()[-lines:]
        body = "\n".join(tail) if tail else "(empty)"
        parts.append(f"--- {name} (last {lines} lines) ---\n{body}")
    return "\n".join(parts)


def kernel_sort_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural ordering of kernel versions: 6.10.0-1 > 6.9.12-3 > 6.1.0-56 > 6.1.0-9."""
    return tuple(
        (1, int(part), "") if part.isdigit() else (0, 0, part)
        for part in re.findall(r"\d+|\D+", version)
    )


def find_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> Path:
    """The newest stock Debian amd64 kernel that has its modules installed."""
    candidates: list[tuple[tuple[tuple[int, int, str], ...], Path]] = []
    for path in boot.glob("vmlinuz-*-amd64"):
        match = _KERNEL_RE.match(path.name)
        # Without its modules directory the guest could not modprobe ip_vs, dummy or ipip.
        if match and (modules / match["release"]).is_dir():
            candidates.append((kernel_sort_key(match["version"]), path))
    if not candidates:
        raise VmSetupError(
            f"no Debian stock kernel with modules ({boot}/vmlinuz-*-amd64 and "
            f"{modules}/<release>): apt-get install linux-image-amd64"
        )
    return max(candidates)[1]


def find_vng() -> Path:
    """vng from this interpreter's virtualenv, else from PATH."""
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("vng")
    if found is None:
        raise VmSetupError("vng (virtme-ng) not found: pip install virtme-ng")
    return Path(found)


def find_qemu() -> Path:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise VmSetupError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return Path(found)


def is_static_elf(path: Path) -> bool:
    """True if path is an ELF executable without a program interpreter (dynamic loader)."""
    with open(path, "rb") as binary:
        header = binary.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only (amd64 host)
            return False
        byteorder: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[0x20:0x28], byteorder)
        phentsize = int.from_bytes(header[0x36:0x38], byteorder)
        phnum = int.from_bytes(header[0x38:0x3A], byteorder)
        binary.seek(phoff)
        table = binary.read(phentsize * phnum)
    types = (int.from_bytes(table[i : i + 4], byteorder) for i in range(0, len(table), phentsize))
    return PT_INTERP not in types


def check_busybox() -> None:
    """virtme-ng builds an initramfs for a modular kernel, with a static busybox inside."""
    # The names and the order virtme-ng searches.
    for name in ("busybox-static", "busybox.static", "busybox"):
        found = shutil.which(name)
        if found is not None:
            if is_static_elf(Path(found)):
                return
            break
    raise VmSetupError(
        "virtme-ng needs a statically linked busybox to boot Debian's kernel: "
        "apt-get install busybox-static"
    )


def build_vng_argv(
    vng: Path,
    kernel: Path,
    qemu: Path,
    script: Path,
    *,
    rwdir: Path,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    console: bool = False,
) -> list[str]:
    # vng's --verbose sends the kernel's boot console to stderr (mixed with the command's):
    # without it a guest that dies while booting leaves no trace at all.
    verbose = ["--verbose"] if console else []
    return [
        str(vng),
        *verbose,
        "--run",
        str(kernel),
        "--user",
        "root",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        # Nested KVM hangs at boot on these machines; TCG works (LAB.md).
        "--disable-kvm",
        # Debian's /usr/lib/qemu/virtiofsd is QEMU's C daemon, which rejects the options vng
        # gives it: vng falls back to 9p anyway, after waiting for it (boots took 7 s longer).
        "--force-9p",
        "--qemu",
        str(qemu),
        "--rwdir",
        str(rwdir),
        # A second read-only export of the host's root, which the guest script mounts with a
        # page cache (see cached_mount_lines). One word: vng's argparse would take a separate
        # "-fsdev ..." for an option of its own.
        f"--qemu-opts=-fsdev local,id={CACHE_TAG},path=/,security_model=none,readonly=on,"
        f"multidevs=remap -device virtio-9p-pci,fsdev={CACHE_TAG},mount_tag={CACHE_TAG}",
        "--",
        # The command itself goes in a script: the kernel command line that carries vng's
        # command is limited to 2 KiB.
        "sh",
        str(script),
    ]


def guest_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the command in the guest: fresh, with the venv's bin first on PATH."""
    out = {
        "PATH": f"{Path(sys.executable).parent}:{GUEST_SYSTEM_PATH}",
        IN_VM_ENV: "1",
        # The host filesystem is read-only in the guest: do not even try to write .pyc files.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if env:
        out.update(env)
    for name in out:
        if not _ENV_NAME_RE.match(name):
            raise ValueError(f"invalid environment variable name: {name!r}")
    return out


def python_library_dirs() -> list[Path]:
    """This interpreter's stdlib and site-packages, outermost only."""
    paths = sysconfig.get_paths()
    dirs = sorted({Path(paths[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")})
    outer: list[Path] = []
    for path in dirs:
        if path.is_dir() and not any(path.is_relative_to(o) for o in outer):
            outer.append(path)
    return outer


def cached_mount_lines(dirs: Sequence[Path], rwdir: Path) -> str:
    """Shell lines that put a cached view of dirs over the guest's uncached ones.

    virtme-ng mounts the host's root over 9p without a cache, so every stat and read of an
    import is a round trip through emulated virtio: importing pyroute2 takes 8-14 s under TCG,
    about half that from a cache=loose mount. The host does not change these directories while
    the VM runs, so a loose cache is safe; anything under rwdir stays uncached and writable.
    """
    mnt = shlex.quote(CACHE_MOUNT)
    binds = "".join(
        f" && mount --bind {shlex.quote(CACHE_MOUNT + str(d))} {shlex.quote(str(d))}"
        for d in dirs
        if not (d.is_relative_to(rwdir) or rwdir.is_relative_to(d))
    )
    options = "ro,trans=virtio,version=9p2000.L,access=any,msize=524288,cache=loose"
    return (
        f"mkdir -p {mnt} && mount -t 9p -o {options} {CACHE_TAG} {mnt}{binds} ||\n"
        "  echo 'lab.vm: no cached mount for Python, imports will be slow' >&2\n"
    )


def build_guest_script(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    control: Path,
    cached: Sequence[Path] = (),
) -> str:
    """A POSIX sh script that runs argv and records its start and exit code under control/."""
    if not argv:
        raise ValueError("empty command")
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    started = shlex.quote(str(control / "started"))
    rc = shlex.quote(str(control / "rc"))
    return (
        "# Generated by lab.vm.\n"
        f"{cached_mount_lines(cached, control.parent) if cached else ''}"
        f": > {started}\n"
        f"{exports}"
        f"cd {shlex.quote(str(cwd))} && {shlex.join(argv)}\n"
        f"echo $? > {rc}\n"
    )


class _Collector(threading.Thread):
    """Drains one pipe so vng never blocks on it, optionally echoing to a stream as it comes."""

    def __init__(self, pipe: IO[bytes], echo: IO[bytes] | None) -> None:
        super().__init__(daemon=True)
        self._pipe = pipe
        self._echo = echo
        self._chunks: list[bytes] = []

    def run(self) -> None:
        while chunk := os.read(self._pipe.fileno(), 65536):
            self._chunks.append(chunk)
            if self._echo is not None:
                self._echo.write(chunk)
                self._echo.flush()

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")


def run_in_vm(
    argv: Sequence[str],
    *,
    rwdir: Path,
    timeout: float,
    memory: str = DEFAULT_MEMORY,
    cpus: int = DEFAULT_CPUS,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    echo: bool = False,
    console: bool = False,
    cache: bool = True,
) -> VmResult:
    """Boot the VM, run argv in it (as root, in cwd), and return its exit code and output.

    rwdir (created if missing) is writable from inside at the same path; everything else of the
    host is read-only there. env adds to a fresh guest environment (see guest_env). With echo,
    the output is also copied to this process's stdout and stderr as it arrives; with console,
    the kernel's console is added to stderr (to diagnose a failing boot); with cache, Python's
    libraries are read through a cached mount (see cached_mount_lines). Raises
    VmSetupError when a prerequisite is missing and VmError when the VM did not run the command
    to completion within timeout seconds.
    """
    kernel = find_kernel()
    vng = find_vng()
    qemu = find_qemu()
    check_busybox()
    rwdir = rwdir.resolve()
    rwdir.mkdir(parents=True, exist_ok=True)
    workdir = (cwd or Path.cwd()).resolve()
    control = Path(tempfile.mkdtemp(prefix=".vm-run-", dir=rwdir))
    try:
        script = control / "run.sh"
        script.write_text(
            build_guest_script(
                argv,
                cwd=workdir,
                env=guest_env(env),
                control=control,
                cached=python_library_dirs() if cache else (),
            )
        )
        cmd = build_vng_argv(
            vng, kernel, qemu, script, rwdir=rwdir, memory=memory, cpus=cpus, console=console
        )
        host_env = dict(os.environ)
        # vng runs virtme-run by name: it lives beside vng.
        host_env["PATH"] = f"{vng.parent}:{host_env.get('PATH', GUEST_SYSTEM_PATH)}"
        return _run(cmd, host_env, workdir, control, timeout, echo)
    finally:
        shutil.rmtree(control, ignore_errors=True)


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, control: Path, timeout: float, echo: bool
) -> VmResult:
    start = time.time()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        # Its own process group (vng, virtme-run, qemu), so a timeout can kill exactly that.
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    collectors = (
        _Collector(proc.stdout, sys.stdout.buffer if echo else None),
        _Collector(proc.stderr, sys.stderr.buffer if echo else None),
    )
    for collector in collectors:
        collector.start()
    timed_out = False
    try:
        vng_rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.returncode is None:
            # Not reaped yet, so the group id still belongs to the group started above.
            os.killpg(proc.pid, signal.SIGKILL)
            vng_rc = proc.wait()
    for collector in collectors:
        # The pipes close when qemu exits; the bound only guards against a stray holder.
        collector.join(timeout=10)
    proc.stdout.close()
    proc.stderr.close()
    wall = time.time() - start
    stdout, stderr = collectors[0].text(), collectors[1].text()
    if timed_out:
        raise VmError(
            f"VM timed out after {timeout:g} s and was killed",
            stdout=stdout,
            stderr=stderr,
            timed_out=True,
        )
    started = control / "started"
    if not started.exists():
        raise VmError(
            f"VM did not start the command (vng exited {vng_rc} after {wall:.1f} s)",
            stdout=stdout,
            stderr=stderr,
        )
    rc_text = (control / "rc").read_text().strip() if (control / "rc").exists() else ""
    if not rc_text.isdigit():
        raise VmError(
            f"VM stopped before the command finished (vng exited {vng_rc} after {wall:.1f} s)",
            stdout=stdout,
            stderr=stderr,
        )
    # The guest writes through 9p, so the file's mtime is on the host's clock (which stamps
    # files with a coarse clock, a few ms behind time.time()).
    boot = max(0.0, started.stat().st_mtime - start)
    return VmResult(int(rc_text), stdout, stderr, boot_seconds=boot, wall_seconds=wall)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab vm",
        description="Run CMD inside a VM booting Debian's stock kernel over the host filesystem "
        "(IPVS, dummy and tunnel interfaces available); exit with CMD's exit code, or "
        f"{RUNNER_FAILED} if the VM itself failed.",
    )
    parser.add_argument(
        "--rwdir",
        type=Path,
        default=DEFAULT_RWDIR,
        help="host directory writable inside the VM (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="kill the VM after this many seconds (default: %(default)s)",
    )
    parser.add_argument("--memory", default=DEFAULT_MEMORY, help="default: %(default)s")
    parser.add_argument("--cpus", type=int, default=DEFAULT_CPUS, help="default: %(default)s")
    parser.add_argument(
        "--console",
        action="store_true",
        help="also show the kernel's boot console on stderr (to diagnose a failing boot)",
    )
    parser.add_argument(
        "--no-cache",
        dest="cache",
        action="store_false",
        help="read Python's libraries through the uncached root mount (slower)",
    )
    parser.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an environment variable for CMD (repeatable)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD")
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: list[str] = args.command
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no command given: python -m lab vm [options] -- CMD...")
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env expects NAME=VALUE, got {item!r}")
        env[name] = value
    try:
        result = run_in_vm(
            command,
            rwdir=args.rwdir,
            timeout=args.timeout,
            memory=args.memory,
            cpus=args.cpus,
            env=env,
            echo=True,
            console=args.console,
            cache=args.cache,
        )
    except VmSetupError as exc:
        print(f"lab vm: {exc}", file=sys.stderr)
        return RUNNER_FAILED
    except VmError as exc:
        # The output was already echoed as it came: only the reason is new.
        hint = "" if args.console or exc.timed_out else " (rerun with --console to see the boot)"
        print(f"lab vm: {exc.message}{hint}", file=sys.stderr)
        return RUNNER_FAILED
    print(
        f"lab vm: exit {result.returncode}, boot {result.boot_seconds:.1f} s, "
        f"total {result.wall_seconds:.1f} s",
        file=sys.stderr,
    )
    return result.returncode
