"""`python -m lab.bench NAME [ARGS]`: run one benchmark (`failover`, `ipvs`, `health`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _failover(argv: Sequence[str]) -> int:
    from lab.bench.failover import main

    return main(argv)


def _ipvs(argv: Sequence[str]) -> int:
    from lab.bench.ipvs import main

    return main(argv)


def _health(argv: Sequence[str]) -> int:
    from lab.bench.health import main

    return main(argv)


BENCHMARKS: dict[str, Callable[[Sequence[str]], int]] = {
    "failover": _failover,
    "health": _health,
    "ipvs": _ipvs,
}


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        names = ", ".join(sorted(BENCHMARKS))
        print(f"usage: python -m lab.bench {{{names}}} [ARGS]", file=sys.stderr)
        return 2
    return BENCHMARKS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
