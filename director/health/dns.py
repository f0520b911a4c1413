"""DNS check: one query over UDP, the reply's rcode and (optionally) one answer checked."""

from __future__ import annotations

import asyncio
import random

from director.config.models import DnsCheck
from director.health.dnswire import (
    RCODE_NAMES,
    RCODES,
    TYPES,
    DnsError,
    answer_matches,
    decode,
    encode_query,
)
from director.health.probe import Done, Target, seconds
from director.health.result import CheckResult
from director.health.udp import DatagramProbe


class DnsChecker:
    kind = "dns"

    def __init__(self, dns: DnsCheck, target: Target, rng: random.Random | None = None) -> None:
        self.target = target
        self.config = dns
        self.qtype = TYPES[dns.type]
        self.rcode = RCODES[dns.rcode]
        self._rng = rng or random.SystemRandom()

    def start(self, timeout: float, done: Done, *, timer: bool = True) -> DatagramProbe:
        # A fresh id and source port per query: a stray or spoofed reply has to guess both.
        ident = self._rng.getrandbits(16)
        query = encode_query(ident, self.config.name, self.qtype, self.config.recursion)

        def accept(data: bytes) -> CheckResult | None:
            return self._accept(ident, data)

        loop = asyncio.get_running_loop()
        return DatagramProbe(loop, self.target, timeout, done, query, accept, self._silence, timer)

    def _accept(self, ident: int, data: bytes) -> CheckResult | None:
        target = self.target
        try:
            message = decode(data)
        except DnsError as exc:
            return CheckResult(False, f"malformed DNS reply from {target}: {exc}")
        if message.ident != ident or not message.is_response:
            return None
        rcode = RCODE_NAMES.get(message.rcode, str(message.rcode))
        seen = f"DNS {rcode} from {target}"
        if message.rcode != self.rcode:
            return CheckResult(False, f"{seen}, expected {self.config.rcode}")
        expected = self.config.answer
        if expected is not None:
            if not any(answer_matches(expected, record) for record in message.answers):
                got = ", ".join(record.text for record in message.answers[:4]) or "no answer"
                return CheckResult(False, f"{seen} without {expected!r} (got {got})")
            return CheckResult(True, f"{seen} with {expected!r}")
        return CheckResult(True, f"{seen} ({len(message.answers)} answers)")

    def _silence(self, timeout: float) -> CheckResult:
        return CheckResult(False, f"no DNS reply from {self.target} within {seconds(timeout)}")
