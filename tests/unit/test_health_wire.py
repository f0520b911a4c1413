"""The sans-IO wire code of the checks: HTTP request and response reader, DNS codec (scapy as
the independent oracle)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRMX, DNSRRSRV

from director.config.models import HttpCheck
from director.health.dnswire import (
    TYPES,
    DnsError,
    Record,
    answer_matches,
    decode,
    encode_query,
)
from director.health.httpwire import HttpSpec, ResponseParser, build_request, judge, settled
from director.health.probe import Target

TARGET = Target("10.0.0.21", 80)


def parse(raw: bytes, cuts: list[int], want_body: bool = True) -> ResponseParser:
    parser = ResponseParser(want_body)
    start = 0
    for cut in sorted(cuts):
        parser.feed(raw[start:cut])
        start = cut
    parser.feed(raw[start:])
    parser.feed_eof()
    return parser


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(RESPONSES), st.lists(st.integers(0, 120), max_size=6))
def test_response_reader_does_not_care_how_bytes_arrive(raw: bytes, cuts: list[int]) -> None:
    parser = parse(raw, [min(c, len(raw)) for c in cuts])
    assert parser.error is None
    assert (parser.status, parser.body) == (200, b"hello")


def test_status_only_stops_at_the_status_line() -> None:
    parser = ResponseParser(want_body=False)
    parser.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Le")
    assert parser.done and parser.status == 503


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "no HTTP response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "incomplete HTTP response"),
        (b"garbage\r\n", "invalid HTTP response"),
        (b"HTTP/1.1 2x0 OK\r\n", "invalid HTTP response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid HTTP response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", "HTTP body over 1024 KiB"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid HTTP response"),
    ],
)
def test_response_reader_errors(raw: bytes, error: str) -> None:
    parser = parse(raw, [])
    assert parser.error == error
    assert judge(HttpSpec.of(HttpCheck()), parser, TARGET).reason == f"{error} from {TARGET}"


def test_head_and_no_content_statuses_have_no_body() -> None:
    head = ResponseParser(want_body=True, head_request=True)
    head.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
    assert head.done and head.body == b""
    empty = ResponseParser(want_body=True)
    empty.feed(b"HTTP/1.1 304 Not Modified\r\n\r\n")
    assert empty.done and empty.status == 304


def test_settled_as_soon_as_the_status_fails() -> None:
    spec = HttpSpec.of(HttpCheck(body_regex="ok"))
    parser = ResponseParser(spec.needs_body)
    parser.feed(b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\n")
    assert not parser.done and settled(spec, parser)
    assert judge(spec, parser, TARGET).reason == "HTTP 500 from 10.0.0.21:80"


def test_status_list_and_ranges() -> None:
    spec = HttpSpec.of(HttpCheck(status=[200, "301-302", "500-599"]))
    assert [s for s in (199, 200, 201, 300, 301, 302, 303, 500, 599) if spec.status_ok(s)] == [
        200,
        301,
        302,
        500,
        599,
    ]


def test_request_bytes() -> None:
    http = HttpCheck(method="POST", path="/h", headers={"X-A": "1", "host": "api.example"})
    raw = build_request(http, Target("2001:db8::21", 8080))
    assert raw.startswith(b"POST /h HTTP/1.1\r\n")
    assert b"\r\nhost: api.example\r\n" in raw and b"Host: [" not in raw
    assert b"\r\nContent-Length: 0\r\n" in raw and raw.endswith(b"\r\n\r\n")
    default = build_request(HttpCheck(), Target("2001:db8::21", 8080))
    assert b"\r\nHost: [2001:db8::21]:8080\r\n" in default
    tls = build_request(HttpCheck(tls=True), Target("10.0.0.21", 443))
    assert b"\r\nHost: 10.0.0.21\r\n" in tls


def test_request_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        build_request(HttpCheck(headers={"X-A": "1\r\nEvil: yes"}), TARGET)


# ---------------------------------------------------------------- DNS


def test_query_as_scapy_reads_it() -> None:
    raw = encode_query(0x1234, "www.Example.org", TYPES["AAAA"], recursion=False)
    parsed = DNS(raw)
    assert parsed.id == 0x1234 and parsed.qr == 0 and parsed.rd == 0 and parsed.qdcount == 1
    assert parsed.qd[0].qname == b"www.Example.org." and parsed.qd[0].qtype == 28
    assert DNS(encode_query(1, ".", TYPES["SOA"])).qd[0].qname == b"."


def test_response_built_by_scapy_decodes() -> None:
    answers = [
        DNSRR(rrname="www.example.", type="CNAME", rdata="web.example."),
        DNSRR(rrname="web.example.", type="A", rdata="192.0.2.80"),
        DNSRR(rrname="web.example.", type="AAAA", rdata="2001:db8::80"),
        DNSRRMX(rrname="example.", preference=10, exchange="mail.example."),
        DNSRR(rrname="example.", type="TXT", rdata=[b"v=spf1 ", b"-all"]),
        DNSRRSRV(rrname="_h._tcp.example.", priority=1, weight=5, port=80, target="web."),
    ]
    reply = DNS(
        id=7,
        qr=1,
        rd=1,
        ra=1,
        rcode=0,
        qd=DNSQR(qname="www.example.", qtype="A"),
        an=answers,
    )
    message = decode(bytes(reply))
    assert message.ident == 7 and message.is_response and message.rcode == 0
    assert message.questions == (("www.example.", 1),)
    assert [(r.type, r.text) for r in message.answers] == [
        (5, "web.example."),
        (1, "192.0.2.80"),
        (28, "2001:db8::80"),
        (15, "10 mail.example."),
        (16, "v=spf1 -all"),
        (33, "1 5 80 web."),
    ]


def test_rcode_and_compression_pointers() -> None:
    reply = DNS(id=9, qr=1, rcode=3, qd=DNSQR(qname="nope.example."))
    message = decode(bytes(reply))
    assert message.rcode == 3 and message.answers == ()
    # A name that is a pointer to the question's name (0xc00c), as most servers answer.
    raw = bytearray(encode_query(5, "a.example", 1))
    raw[2:4] = struct.pack("!H", 0x8180)
    raw[6:8] = struct.pack("!H", 1)
    raw += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    assert decode(bytes(raw)).answers == (Record("a.example.", 1, "192.0.2.1"),)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01",
        struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x05ab",
        struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",
        struct.pack("!HHHHHH", 1, 0x8000, 0, 1, 0, 0) + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\xff",
    ],
)
def test_malformed_messages_raise(raw: bytes) -> None:
    with pytest.raises(DnsError):
        decode(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_decoder_never_fails_other_than_with_dns_error(raw: bytes) -> None:
    with contextlib.suppress(DnsError):
        decode(raw)


def test_answer_matching_normalises() -> None:
    assert answer_matches("2001:DB8:0::80", Record("x.", 28, "2001:db8::80"))
    assert answer_matches("WWW.Example", Record("x.", 5, "www.example."))
    assert answer_matches("10 MAIL.example.", Record("x.", 15, "10 mail.example."))
    assert answer_matches('"v=spf1 -all"', Record("x.", 16, "v=spf1 -all"))
    assert not answer_matches("192.0.2.8", Record("x.", 1, "192.0.2.80"))
