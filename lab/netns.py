"""Kernel primitives for the lab: namespaces, sysctls inside a namespace, processes in one.

Everything goes through pyroute2 and /proc; nothing shells out to `ip`.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

NETNS_DIR = Path("/run/netns")

NsId = tuple[int, int]  # (st_dev, st_ino) of a namespace: what /proc/PID/ns/net stats to


class NetnsError(RuntimeError):
    pass


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def listnetns() -> list[str]:
    return sorted(pr_netns.listnetns())


def create(name: str) -> None:
    """Create a named namespace (like `ip netns add`), refusing to reuse an existing one."""
    if exists(name):
        raise NetnsError(f"namespace {name} already exists")
    pr_netns.create(name)
    if not exists(name):
        raise NetnsError(f"namespace {name} was not created")


def remove(name: str) -> bool:
    """Remove a named namespace; False if it was already gone (so teardown can run twice).

    The kernel frees the namespace, and with it every interface inside, once nothing holds it.
    """
    if not (NETNS_DIR / name).exists():
        return False
    pr_netns.remove(name)
    return True


def ipr(name: str) -> Any:
    """An IPRoute bound to namespace `name`. flags=0: never create it implicitly."""
    return IPRoute(netns=name, flags=0)


def ns_id(name: str) -> NsId | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def run_in_ns(name: str, func: Callable[[], None], timeout: float = 10.0) -> None:
    """Run `func` in a forked child that has entered namespace `name`.

    Why a fork: /proc/sys/net/* shows the namespace of the task that opens it, and setns()
    in this process could leave it stranded in the lab if anything failed half-way. The child
    only does syscalls and file writes, then _exit()s, so forking a threaded parent is safe.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 0
        try:
            pr_netns.setns(name, flags=0, fork=False)
            func()
        except BaseException as e:
            os.write(wfd, f"{type(e).__name__}: {e}".encode()[:4000])
            code = 1
        os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + timeout
    err = b""
    try:
        while True:  # read until EOF (the child exited) or the deadline
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                raise NetnsError(f"timed out running {func.__name__} in namespace {name}")
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            err += chunk
        _, status = os.waitpid(pid, 0)
    except BaseException:
        _reap(pid)
        raise
    finally:
        os.close(rfd)
    if os.waitstatus_to_exitcode(status) != 0:
        raise NetnsError(f"in namespace {name}: {err.decode(errors='replace') or status}")


def _reap(pid: int) -> None:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def write_sysctls(name: str, items: Sequence[tuple[str, str]], optional: bool = False) -> None:
    """Write dotted sysctls inside namespace `name`; `optional` skips keys the kernel lacks."""
    if not items:
        return

    def apply() -> None:
        for key, value in items:
            path = sysctl_path(key)
            if optional and not path.exists():
                continue
            path.write_text(value)

    apply.__name__ = "sysctl"
    run_in_ns(name, apply)


# --- processes -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def proc_starttime(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def _alive(pid: int, starttime: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z" and int(f[19]) == starttime


def pids_in(ids: Iterable[NsId]) -> dict[int, int]:
    """pid -> start time of every live process whose network namespace is one of `ids`.

    The calling process is never included.
    """
    wanted = set(ids)
    out: dict[int, int] = {}
    if not wanted:
        return out
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:  # gone, or a zombie
            continue
        if (st.st_dev, st.st_ino) not in wanted:
            continue
        f = _stat_fields(pid)
        if f is None or f[0] == "Z":
            continue
        out[pid] = int(f[19])
    return out


def kill_in_namespaces(
    names: Iterable[str],
    grace: float = 3.0,
    poll: float = 0.02,
    already_termed: Iterable[int] = (),
) -> list[int]:
    """SIGTERM every process inside the namespaces, SIGKILL those still there after `grace`.

    Processes are found by comparing /proc/PID/ns/net with each namespace's inode, and signalled
    by pid (checked against their start time, so a recycled pid is never hit). Processes in the
    root namespace are never touched. Rescans until the namespaces are empty, so children forked
    during teardown are caught too. Returns the pids that were signalled.
    """
    names = list(names)
    ids = {i for i in (ns_id(n) for n in names) if i is not None}
    termed: dict[tuple[int, int], float] = {}  # (pid, starttime) -> when SIGTERM was sent
    start = time.monotonic()
    for pid in already_termed:  # the caller sent these SIGTERM: don't send a second one
        st = proc_starttime(pid)
        if st is not None:
            termed[(pid, st)] = start
    deadline = start + grace + 5.0
    while True:
        procs = pids_in(ids)
        if not procs:
            break
        now = time.monotonic()
        if now > deadline:
            raise NetnsError(f"processes survive SIGKILL in {sorted(names)}: {sorted(procs)}")
        for pid, started in procs.items():
            key = (pid, started)
            if key not in termed:
                termed[key] = now
                _signal(pid, started, signal.SIGTERM)
            elif now - termed[key] > grace:
                _signal(pid, started, signal.SIGKILL)
        time.sleep(poll)
    return sorted({pid for pid, _ in termed})


def _signal(pid: int, starttime: int, sig: int) -> None:
    if not _alive(pid, starttime):
        return
    with suppress(ProcessLookupError):
        os.kill(pid, sig)
