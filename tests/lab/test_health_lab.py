"""Every checker against real servers in the namespace lab: down detected, recovery seen.

The health runner runs in dir1 (`python -m director.health watch`) on one config with a service
per checker type, against servers in rs1-rs3:

    http   rs1:80    lab.web                  POST /status/500 makes it fail
    https  rs1:443   lab.tls (client cert)    same, over TLS, verified with the lab CA
    tcp    rs2:8080  lab.web                  stopped and started again
    udp    rs2:9999  lab.probe respond        stopped (ICMP port unreachable) and started again
    dns    rs3:53    lab.dns                  zone rewritten to SERVFAIL and back
    misc   rs3:8081  lab.web, probed by a command run in dir1
    file   -         a weight file on the host filesystem

Every process is started with `lab.popen` and ended by its pid (here, and by the lab's
teardown); the watcher's JSON lines are collected by a reader thread that tests wait on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.bench.failover import LineReader, end_process
from lab.core import Lab
from lab.tls import Material, make_material
from lab.vm import CHECKOUT

PY = sys.executable
RS1, RS2, RS3 = "192.0.2.21", "192.0.2.22", "192.0.2.23"
FAST = {"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1}
ZONE = {"records": {"www.example.": [["A", "192.0.2.80"]]}}
TCP_PROBE = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"
POST_STATUS = """
import http.client, ssl, sys
port, status, tls = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if tls == "-":
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
else:
    ctx = ssl.create_default_context(cafile=tls + "/ca.pem")
    ctx.check_hostname = False
    ctx.load_cert_chain(tls + "/client.pem", tls + "/client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
conn.request("POST", "/status/" + status)
sys.exit(0 if conn.getresponse().status else 1)
"""

Event = dict[str, Any]


class Events:
    """The watcher's JSON lines, read by a thread; tests wait for one that matches."""

    def __init__(self, stream: Any) -> None:
        self.items: list[Event] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self.cond:
                self.items.append(json.loads(line))
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.items)

    def wait(self, match: Callable[[Event], bool], since: int, timeout: float = 15.0) -> Event:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.items[since:]:
                    if match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event in {timeout}s: {self.items[since:]}")
                self.cond.wait(left)


class Health:
    def __init__(self, lab: Lab, tmp: Path, material: Material) -> None:
        self.lab = lab
        self.tmp = tmp
        self.material = material
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        self.zone = tmp / "zone.json"
        self.weight = tmp / "weight"
        self.sni_log = tmp / "sni.log"
        self.watcher: subprocess.Popen[str] | None = None
        self.events: Events | None = None

    # ------------------------------------------------------------ servers

    def start(self, name: str, node: str, argv: list[str], ready: str = "ready") -> None:
        proc = self.lab.popen(node, argv, stdout=subprocess.PIPE, cwd=CHECKOUT)
        self.servers[name] = proc
        assert proc.stdout is not None
        LineReader(proc.stdout).wait_for(ready, 20)

    def stop(self, name: str) -> None:
        proc = self.servers.pop(name)
        end_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()

    def web(self, name: str, node: str, port: int) -> None:
        argv = [PY, "-m", "lab.web", "serve", "--name", node, "--listen", f"0.0.0.0:{port}"]
        self.start(name, node, argv)

    def probe_responder(self) -> None:
        argv = [PY, "-m", "lab.probe", "respond", "--name", "rs2", "--port", "9999"]
        self.start("udp", "rs2", [*argv, "--family", "4", "--max-seconds", "300"], "ready rs2")

    def post_status(self, node: str, port: int, status: int, tls: bool = False) -> None:
        where = str(self.material.ca.parent) if tls else "-"
        argv = [PY, "-c", POST_STATUS, str(port), str(status), where]
        self.lab.run(node, argv, check=True, timeout=20)

    # ------------------------------------------------------------ the watcher

    def config(self) -> dict[str, Any]:
        m = self.material

        def service(name: str, port: int, check: dict[str, Any], rs: str, **kw: Any) -> Any:
            return {
                "name": name,
                "vip": "192.0.2.100",
                "port": port,
                "check": {**FAST, **check},
                "real_servers": [{"address": rs}],
                **kw,
            }

        tls = {
            "tls": True,
            "ca_file": str(m.ca),
            "cert_file": str(m.client_cert),
            "key_file": str(m.client_key),
            "sni": "rs1.lab",
            "body_regex": '"name": "rs1"',
        }
        udp = {"payload_hex": "44505242 0000000000000001", "expect": "rs2$"}
        misc = {"command": [PY, "-c", TCP_PROBE, "{address}", "{port}"]}
        return {
            "services": [
                service("http", 80, {"http": {"body_regex": '"name": "rs1"'}}, RS1),
                service("https", 443, {"http": tls, "timeout": "190ms"}, RS1),
                service("tcp", 8080, {"tcp": {}}, RS2),
                service("udp", 9999, {"udp": udp}, RS2, protocol="udp"),
                service("dns", 53, {"dns": {"name": "www.example", "answer": "192.0.2.80"}}, RS3),
                service("misc", 8081, {"misc": misc, "interval": "1s", "timeout": "1s"}, RS3),
                service("file", 8082, {"file": {"path": str(self.weight)}}, RS3),
            ]
        }

    def watch(self) -> None:
        path = self.tmp / "director.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log = (self.tmp / "watch.log").open("w")
        argv = [PY, "-m", "director.health", "-v", "watch", "-c", str(path), "--commands"]
        argv += ["--results"]
        argv += ["--duration", "300"]
        self.watcher = self.lab.popen(
            "dir1",
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=CHECKOUT,
        )
        log.close()
        self.events = Events(self.watcher.stdout)

    def command(self, line: str) -> None:
        assert self.watcher is not None and self.watcher.stdin is not None
        self.watcher.stdin.write(line + "\n")
        self.watcher.stdin.flush()

    def weight_event(self, service: str, weight: int | None, since: int) -> Event:
        assert self.events is not None

        def match(event: Event) -> bool:
            return bool(
                event.get("event") == "weight"
                and event["service"] == service
                and event["weight"] == weight
            )

        return self.events.wait(match, since)

    def mark(self) -> int:
        assert self.events is not None
        return self.events.mark()

    def result_event(self, service: str, reason: str, since: int) -> Event:
        assert self.events is not None

        def match(event: Event) -> bool:
            return bool(
                event.get("event") == "result"
                and event["service"] == service
                and event["reason"] == reason
            )

        return self.events.wait(match, since)


@pytest.fixture(scope="module")
def health(lab_module: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Health]:
    tmp = tmp_path_factory.mktemp("health")
    material = make_material(tmp / "tls", ips=[RS1], dns=["rs1.lab"])
    h = Health(lab_module, tmp, material)
    h.zone.write_text(json.dumps(ZONE))
    h.weight.write_text("3\n")
    try:
        h.web("http", "rs1", 80)
        tls = [PY, "-m", "lab.tls", "serve", "--name", "rs1", "--listen", "0.0.0.0:443"]
        tls += ["--dir", str(material.ca.parent), "--require-client-cert"]
        h.start("https", "rs1", [*tls, "--sni-log", str(h.sni_log)])
        h.web("tcp", "rs2", 8080)
        h.probe_responder()
        h.start("dns", "rs3", [PY, "-m", "lab.dns", "serve", "--zone", str(h.zone)])
        h.web("misc", "rs3", 8081)
        h.watch()
        yield h
    finally:
        if h.watcher is not None:
            end_process(h.watcher)
        for name in list(h.servers):
            h.stop(name)


def test_watcher_starts_every_real_server_down_then_up(health: Health) -> None:
    assert health.events is not None
    ready = health.events.wait(lambda e: e.get("event") == "ready", 0)
    # alpha: every real server starts out of IPVS until its first successful check.
    assert all(w is None for rows in ready["weights"].values() for _, _, w in rows)
    for service in ("http", "https", "tcp", "udp", "dns", "misc"):
        health.weight_event(service, 1, 0)
    assert health.weight_event("file", 3, 0)["reason"].endswith("holds weight 3")


def test_http(health: Health) -> None:
    health.weight_event("http", 1, 0)
    mark = health.mark()
    health.post_status("rs1", 80, 500)
    down = health.weight_event("http", None, mark)
    assert down["reason"] == f"HTTP 500 from {RS1}:80"
    mark = health.mark()
    health.post_status("rs1", 80, 200)
    assert health.weight_event("http", 1, mark)["reason"] == f"HTTP 200 from {RS1}:80"


def test_https_with_ca_client_certificate_and_sni(health: Health) -> None:
    health.weight_event("https", 1, 0)
    mark = health.mark()
    health.post_status("rs1", 443, 503, tls=True)
    assert health.weight_event("https", None, mark)["reason"] == f"HTTP 503 from {RS1}:443"
    mark = health.mark()
    health.post_status("rs1", 443, 200, tls=True)
    health.weight_event("https", 1, mark)
    # The checks sent the configured name; the status posts (to 127.0.0.1) sent none.
    assert "rs1.lab" in health.sni_log.read_text().splitlines()


def test_tcp(health: Health) -> None:
    health.weight_event("tcp", 1, 0)
    mark = health.mark()
    health.stop("tcp")
    down = health.weight_event("tcp", None, mark)
    assert down["reason"] == f"connection refused by {RS2}:8080"
    mark = health.mark()
    health.web("tcp", "rs2", 8080)
    assert health.weight_event("tcp", 1, mark)["reason"] == f"connected to {RS2}:8080"


def test_udp_icmp_port_unreachable(health: Health) -> None:
    health.weight_event("udp", 1, 0)
    mark = health.mark()
    health.stop("udp")
    down = health.weight_event("udp", None, mark)
    assert down["reason"] == f"ICMP port unreachable from {RS2}:9999"
    mark = health.mark()
    health.probe_responder()
    up = health.weight_event("udp", 1, mark)
    assert up["reason"].startswith(f"UDP reply from {RS2}:9999")


def test_dns(health: Health) -> None:
    health.weight_event("dns", 1, 0)
    mark = health.mark()
    health.zone.write_text(json.dumps({**ZONE, "rcode": "SERVFAIL"}))
    down = health.weight_event("dns", None, mark)
    assert down["reason"] == f"DNS SERVFAIL from {RS3}:53, expected NOERROR"
    # Answering again, but not what the check expects: a failure, for that reason.
    mark = health.mark()
    health.zone.write_text(json.dumps({"records": {"www.example.": [["A", "192.0.2.81"]]}}))
    wrong = f"DNS NOERROR from {RS3}:53 without '192.0.2.80' (got 192.0.2.81)"
    assert health.result_event("dns", wrong, mark)["ok"] is False
    mark = health.mark()
    health.zone.write_text(json.dumps(ZONE))
    up = health.weight_event("dns", 1, mark)
    assert up["reason"] == f"DNS NOERROR from {RS3}:53 with '192.0.2.80'"


def test_misc(health: Health) -> None:
    health.weight_event("misc", 1, 0)
    mark = health.mark()
    health.stop("misc")
    assert health.weight_event("misc", None, mark)["reason"] == f"{PY} exited 1"
    mark = health.mark()
    health.web("misc", "rs3", 8081)
    assert health.weight_event("misc", 1, mark)["reason"] == f"{PY} exited 0"


def test_file_weight(health: Health) -> None:
    health.weight_event("file", 3, 0)
    mark = health.mark()
    health.weight.write_text("-1\n")
    assert health.weight_event("file", None, mark)["reason"].endswith("holds -1: down")
    mark = health.mark()
    health.weight.write_text("7\n")
    assert health.weight_event("file", 7, mark)["reason"].endswith("holds weight 7")


def test_operator_drain_and_enable(health: Health) -> None:
    health.weight_event("tcp", 1, 0)
    mark = health.mark()
    health.command(f"drain tcp {RS2} 8080")
    assert health.weight_event("tcp", 0, mark)["reason"] == "drained by the operator"
    mark = health.mark()
    health.command(f"enable tcp {RS2} 8080")
    assert health.weight_event("tcp", 1, mark)["reason"] == "enabled by the operator"


def test_status_counts_checks_and_failures(health: Health) -> None:
    assert health.events is not None
    mark = health.mark()
    health.command("status")
    status = health.events.wait(lambda e: e.get("event") == "status", mark)["status"]
    by_name = {s["name"]: s["real_servers"][0] for s in status["services"]}
    assert set(by_name) == {"http", "https", "tcp", "udp", "dns", "misc", "file"}
    for name, rs in by_name.items():
        assert rs["checks"] >= 2, name
        assert rs["last_result"] is not None, name
    assert os.path.exists(health.tmp / "watch.log")
