"""`director plan`, `director apply --once` and `director flush`: IPVS without the daemon.

Each reads the live kernel table by dump, so what it prints is the real difference.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from director.config.models import Config
from director.ipvs.desired import desired_table
from director.ipvs.kernel import IpvsError, IpvsKernel
from director.ipvs.model import Service, ServiceKey
from director.ipvs.owned import OwnedStore
from director.ipvs.plan import describe, plan
from director.ipvs.reconcile import release, sync_once
from director.ipvs.system import SetupError, SysctlGuard, load_modules, requirements, timeouts

EXIT_OK, EXIT_FAILED = 0, 1


def _say(line: str) -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_plan(config: Config, flush: bool) -> int:
    desired = desired_table(config.services)
    store = OwnedStore(config.node.state_dir)
    try:
        with IpvsKernel() as kernel:
            actual: dict[ServiceKey, Service] = kernel.dump()
    except IpvsError as exc:
        if not exc.unavailable:
            _err(f"director plan: {exc}")
            return EXIT_FAILED
        # No ip_vs yet: the kernel table is empty, and apply would load the module.
        _say(f"# {exc}: planning against an empty table")
        actual = {}
    owns: Callable[[ServiceKey], bool] = (lambda _k: True) if flush else store.owns
    ops = plan(desired, actual, owns)
    for op in ops:
        _say(describe(op))
    untouched = [k for k in actual if k not in desired and not owns(k)]
    _say(
        f"# {len(ops)} change(s); {len(desired)} service(s) desired"
        + (f"; {len(untouched)} service(s) not owned, left alone" if untouched else "")
    )
    return EXIT_OK


def cmd_apply(config: Config, with_vips: bool) -> int:
    needs = requirements(config)
    try:
        load_modules(needs.modules)
        if config.ipvs.sysctls:
            SysctlGuard().apply({name: value for name, (value, _) in needs.sysctls.items()})
    except SetupError as exc:
        _err(f"director apply: {exc}")
        return EXIT_FAILED
    desired = desired_table(config.services)
    store = OwnedStore(config.node.state_dir)
    try:
        with IpvsKernel() as kernel:
            result = sync_once(kernel, desired, store, config.ipvs.flush)
            wanted = timeouts(config)
            if wanted is not None:
                kernel.set_timeouts(*wanted)
    except IpvsError as exc:
        _err(f"director apply: {exc}")
        return EXIT_FAILED
    for op in result.ops:
        _say(describe(op))
    for message in result.failures:
        _err(f"director apply: {message}")
    _say(f"# {len(result.ops) - len(result.failures)} change(s) applied")
    if with_vips and not _add_vips(config):
        return EXIT_FAILED
    return EXIT_FAILED if result.failures else EXIT_OK


def _add_vips(config: Config) -> bool:
    from director.net.addresses import AddressError, VipManager, instance_vips

    vips = [v for inst in config.vrrp.instances for v in instance_vips(inst)]

    async def add() -> list[str]:
        async with VipManager() as manager:
            return [str(v) for v in await manager.add(vips)]

    try:
        added = asyncio.run(add())
    except AddressError as exc:
        _err(f"director apply: {exc}")
        return False
    for vip in added:
        _say(f"+ vip {vip}")
    return True


def cmd_flush(config: Config) -> int:
    store = OwnedStore(config.node.state_dir)
    # What the config names is the director's too, even if no record says so.
    store.keys |= set(desired_table(config.services))
    try:
        with IpvsKernel() as kernel:
            result = release(kernel, store)
    except IpvsError as exc:
        if exc.unavailable:
            _say(f"# {exc}: nothing to flush")
            return EXIT_OK
        _err(f"director flush: {exc}")
        return EXIT_FAILED
    for op in result.ops:
        _say(describe(op))
    for message in result.failures:
        _err(f"director flush: {message}")
    return EXIT_FAILED if result.failures else EXIT_OK
