"""The pure part of lab.probe: blackout, losses and VRRP timeline on synthetic records."""

from __future__ import annotations

import argparse
import json

import pytest

from lab.probe import (
    MAGIC,
    AdvertSeen,
    Probe,
    ProbeRecord,
    analyse,
    max_reply_gap,
    parse_advert,
    parse_target,
    reply_for,
    summary,
    vrrp_timeline,
)

INTERVAL = 0.002


def timeline(
    n: int, answer: dict[range, str | None], latency: float = 0.0005, start: float = 100.0
) -> list[Probe]:
    """n probes every 2 ms; `answer` maps ranges of sequence numbers to a responder (None: lost)."""
    probes = []
    for seq in range(n):
        sent = start + seq * INTERVAL
        who = next((name for r, name in answer.items() if seq in r), None)
        probes.append(Probe(seq, sent, None if who is None else sent + latency, who))
    return probes


def test_blackout_from_the_cut_to_the_first_new_reply() -> None:
    # dir1 answers 0..99, probes 100..149 are lost, dir2 answers from 150 on.
    probes = timeline(200, {range(0, 100): "dir1", range(150, 200): "dir2"})
    cut = 100.0 + 99 * INTERVAL + 0.001  # just after probe 99 left
    a = analyse(probes, new="dir2", old="dir1", cut=cut)
    first_new = 100.0 + 150 * INTERVAL + 0.0005
    assert a.start_kind == "cut"
    assert a.first_new == pytest.approx(first_new)
    assert a.blackout == pytest.approx(first_new - cut)
    assert a.last_old == pytest.approx(100.0 + 99 * INTERVAL + 0.0005)
    assert (a.sent, a.answered, a.lost, a.lost_after_start) == (200, 150, 50, 50)
    assert a.per_responder == {"dir1": 100, "dir2": 50}
    assert a.max_gap == pytest.approx(51 * INTERVAL)


def test_blackout_without_a_cut_runs_from_the_last_old_reply() -> None:
    probes = timeline(200, {range(0, 100): "dir1", range(150, 200): "dir2"})
    a = analyse(probes, new="dir2", old="dir1")
    assert a.start_kind == "last-old-reply"
    assert a.blackout == pytest.approx(51 * INTERVAL)
    assert a.lost_after_start == 50


def test_replies_from_the_new_responder_before_the_cut_do_not_count() -> None:
    # dir2 was master first, then dir1, then the cut moves it back to dir2.
    probes = timeline(300, {range(0, 50): "dir2", range(50, 150): "dir1", range(200, 300): "dir2"})
    cut = 100.0 + 150 * INTERVAL
    a = analyse(probes, new="dir2", old="dir1", cut=cut)
    assert a.first_new == pytest.approx(100.0 + 200 * INTERVAL + 0.0005)
    b = analyse(probes, new="dir2", old="dir1")
    assert b.first_new == a.first_new
    assert b.last_old == pytest.approx(100.0 + 149 * INTERVAL + 0.0005)


def test_no_switch_over_means_no_blackout() -> None:
    probes = timeline(100, {range(0, 60): "dir1"})
    a = analyse(probes, new="dir2", old="dir1", cut=100.05)
    assert a.first_new is None and a.blackout is None
    assert a.lost == 40
    b = analyse(probes, new="dir2", old="dir1")
    assert (b.start, b.start_kind, b.blackout) == (None, "none", None)


def test_a_planned_stop_without_loss() -> None:
    # make before break: dir1 answers until dir2 does.
    probes = timeline(200, {range(0, 103): "dir1", range(103, 200): "dir2"})
    a = analyse(probes, new="dir2", old="dir1", cut=100.1)
    assert a.lost == 0
    assert a.max_gap == pytest.approx(INTERVAL)
    assert a.blackout == pytest.approx(100.0 + 103 * INTERVAL + 0.0005 - 100.1)


def test_reordered_replies_and_unknown_old() -> None:
    probes = [
        Probe(0, 1.000, 1.0010, "a"),
        Probe(1, 1.002, 1.0100, "a"),  # late
        Probe(2, 1.004, 1.0050, "b"),  # overtakes probe 1
        Probe(3, 1.006, None, None),
    ]
    a = analyse(probes, new="b")  # old: anyone but b
    assert a.last_old == pytest.approx(1.0010)
    assert a.first_new == pytest.approx(1.0050)
    assert a.blackout == pytest.approx(0.0040)
    gap, at = max_reply_gap(probes)
    assert gap == pytest.approx(0.0050) and at == pytest.approx(1.0100)
    gap, at = max_reply_gap(probes, since=1.0011)
    assert gap == pytest.approx(0.0050) and at == pytest.approx(1.0100)
    gap, at = max_reply_gap(probes, until=1.0060)
    assert gap == pytest.approx(0.0040) and at == pytest.approx(1.0050)
    assert max_reply_gap(probes[:1]) == (None, None)


def test_vrrp_timeline_splits_the_blackout() -> None:
    adverts = [AdvertSeen(10.0 + i * 0.1, "192.0.2.2", 51, 150, 3) for i in range(10)]
    adverts += [AdvertSeen(10.0 + i * 0.1, "192.0.2.9", 7, 200, 3) for i in range(20)]  # noise
    adverts += [
        AdvertSeen(11.25, "192.0.2.3", 51, 100, 3),
        AdvertSeen(11.35, "192.0.2.3", 51, 100, 3),
    ]
    tl = vrrp_timeline(adverts, vrid=51, old_src="192.0.2.2", new_src="192.0.2.3", at=10.93)
    assert tl.last_old == pytest.approx(10.9)
    assert tl.first_new == pytest.approx(11.25)
    assert tl.old_zero is None
    # An advert that left just after the instant taken before the cut still counts.
    late = [*adverts, AdvertSeen(10.935, "192.0.2.2", 51, 150, 3)]
    tl = vrrp_timeline(late, vrid=51, old_src="192.0.2.2", new_src="192.0.2.3", at=10.93)
    assert tl.last_old == pytest.approx(10.935)
    gone = [a for a in adverts if a.src != "192.0.2.3"]  # the new master never spoke
    tl = vrrp_timeline(gone, vrid=51, old_src="192.0.2.2", new_src="192.0.2.3", at=10.93)
    assert tl.first_new is None and tl.last_old == pytest.approx(10.9)
    stop = [AdvertSeen(10.0, "192.0.2.2", 51, 150, 3), AdvertSeen(10.01, "192.0.2.2", 51, 0, 3)]
    tl = vrrp_timeline(stop, vrid=51, old_src="192.0.2.2", new_src="192.0.2.3", at=10.005)
    assert (tl.last_old, tl.old_zero, tl.first_new) == (10.0, 10.01, None)


def test_record_round_trips_through_json() -> None:
    record = ProbeRecord(
        target="192.0.2.100:9999",
        interval=INTERVAL,
        started=1.0,
        ended=2.0,
        probes=(Probe(0, 1.0, 1.001, "dir1"), Probe(1, 1.002)),
        duplicates=1,
        adverts=(AdvertSeen(1.5, "192.0.2.2", 51, 150, 3),),
    )
    again = ProbeRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record


def test_wire_format_and_parsers() -> None:
    probe = MAGIC + (7).to_bytes(8, "big")
    assert reply_for(probe, b"dir1") == probe + b"dir1"
    assert reply_for(b"junk" + bytes(8), b"dir1") is None
    assert reply_for(MAGIC, b"dir1") is None
    assert parse_target("192.0.2.100:9999") == ("192.0.2.100", 9999)
    assert parse_target("[2001:db8:0:1::100]:53") == ("2001:db8:0:1::100", 53)
    for bad in ("192.0.2.100", "host:80", "192.0.2.1:0", ":80"):
        with pytest.raises(ValueError):
            parse_target(bad)
    ip = bytes([0x45, 0xC0, 0, 40]) + bytes(8) + bytes([192, 0, 2, 2, 224, 0, 0, 18])
    vrrp = bytes([0x31, 51, 150, 1, 0, 10, 0, 0])
    assert parse_advert(ip + vrrp, 5.0) == AdvertSeen(5.0, "192.0.2.2", 51, 150, 3)
    assert parse_advert(ip, 5.0) is None


def test_summary() -> None:
    assert summary([]) is None
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_cli_refuses_unbounded_or_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from lab.probe import build_parser, main

    for argv in (
        ["probe", "--to", "192.0.2.100:9999", "--duration", "0"],
        ["probe", "--to", "192.0.2.100:9999", "--duration", "100000"],
        ["probe", "--to", "192.0.2.100:9999", "--interval", "0"],
        ["probe", "--to", "nowhere"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    args = build_parser().parse_args(["respond", "--name", "dir1"])
    assert isinstance(args, argparse.Namespace) and args.port == 9999


def test_kernel_receive_time_is_kept_when_read_late() -> None:
    """recv_stamped gives the arrival time, not the (later) read time (loopback only)."""
    import socket
    import time

    from lab.probe import SO_TIMESTAMPNS, recv_stamped

    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        rx.settimeout(5)
        # The kernel turns receive stamping on lazily (a deferred static key): datagrams that
        # arrive before it is on carry the read time. Bounded: 20 exchanges of 30 ms.
        for _ in range(20):
            sent = time.monotonic()
            tx.sendto(b"x", rx.getsockname())
            time.sleep(0.03)
            data, at = recv_stamped(rx)
            read = time.monotonic()
            if read - at > 0.02:
                break
    assert data == b"x"
    assert sent - 0.002 <= at < sent + 0.01 < read
