"""The OPTIONS fast path against the full responder: whenever the fast path answers, its octets
and destination are the full path's, byte for byte (RFC 4475 corpus, real clients' requests,
random well-formed and mutated requests); and it does answer the plain requests real clients
send, so the differential tests are not vacuous."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mutate import GRAMMAR_OCTETS, mutate
from sipalive.sip import fastpath
from sipalive.sip.responder import ResponderConfig, StatelessResponder

DATA = Path(__file__).parent / "data" / "rfc4475"
CORPUS = {p.name: p.read_bytes() for p in sorted(DATA.glob("*.dat"))}
SRC = ("198.51.100.7", 40000)
CONFIGS = [
    ResponderConfig(tag_key=b"k1"),
    ResponderConfig(
        reason="Alive",
        server=None,
        accept="",
        supported=("path", "outbound"),
        allow=("OPTIONS", "REGISTER"),
        extra_200=(("X-Extra", "1"),),
        tag_key=b"k2" * 20,
    ),
    ResponderConfig(reason="", max_message=300),
]
RESPONDERS = [StatelessResponder(c) for c in CONFIGS]


def differential(
    data: bytes, source: tuple[str, int] = SRC, responder: StatelessResponder = RESPONDERS[0]
) -> bool:
    """Assert the fast path agrees with the full path; True if the fast path answered."""
    fast = responder.fast.answer(data, source)
    if fast is None:
        return False
    full = responder.handle_datagram(data, source)
    assert full is not None, data
    assert full.status == 200
    assert full.error is None
    assert full.method == "OPTIONS"
    assert fast == (full.data, full.addr), data
    return True


SIPP = (
    b"OPTIONS sip:service@127.0.0.1:7480 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:7460;branch=z9hG4bK-4077-1-0;rport\r\n"
    b"From: <sip:test-uac@127.0.0.1:7460>;tag=4077SIPpTag001\r\n"
    b"To: <sip:service@127.0.0.1:7480>\r\n"
    b"Call-ID: 1-4077@127.0.0.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Contact: <sip:test-uac@127.0.0.1:7460;transport=UDP>\r\n"
    b"Max-Forwards: 70\r\n"
    b"User-Agent: sipalive-test-sipp-uac\r\n"
    b"Accept: application/sdp\r\n"
    b"Content-Length: 0\r\n\r\n"
)
SIPSAK = (
    b"OPTIONS sip:ping@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.1.1:41399;branch=z9hG4bK.0e8a3f2c;rport;alias\r\n"
    b"From: sip:sipsak@127.0.1.1:41399;tag=6a3b1c2d\r\n"
    b"To: sip:ping@127.0.0.1:5060\r\n"
    b"Call-ID: 1782325036@127.0.1.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Contact: sip:sipsak@127.0.1.1:41399\r\n"
    b"Content-Length: 0\r\n"
    b"Max-Forwards: 70\r\n"
    b"User-Agent: sipsak 0.9.8.1\r\n"
    b"Accept: text/plain\r\n\r\n"
)
KAMAILIO = (
    b"OPTIONS sip:10.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1234.abc.0\r\n"
    b"To: <sip:10.0.0.1:5060>\r\n"
    b"From: <sip:keepalive@10.0.0.2>;tag=a1b2c3d4-1700000000\r\n"
    b"CSeq: 10 OPTIONS\r\n"
    b"Call-ID: 5f3e2a1b-12345@10.0.0.2\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n"
    b"User-Agent: kamailio (5.7.4 (x86_64/linux))\r\n\r\n"
)
PROXIED = (
    b"OPTIONS sips:alice@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/tls proxy.example.com:5061;branch=z9hG4bKp1;received=192.0.2.9;RPort=5070\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5099;branch=z9hG4bKc1\r\n"
    b'f: "Bob Smith" <sip:bob@example.com>;TAG=abc;x=<y>\r\n'
    b"t: Alice <sip:alice@example.com>;tag=already\r\n"
    b"i: cid-9@example.com\r\n"
    b"CSeq : 4294967295 OPTIONS\r\n"
    b"l:  0   \r\n"
    b"Require-Not: x\r\n\r\n"
    b"trailing octets beyond Content-Length are ignored"
)
CLIENTS = {"sipp": SIPP, "sipsak": SIPSAK, "kamailio": KAMAILIO, "proxied": PROXIED}


@pytest.mark.parametrize("name", sorted(CLIENTS))
@pytest.mark.parametrize("responder", RESPONDERS[:2])
def test_real_clients_take_the_fast_path(name: str, responder: StatelessResponder) -> None:
    assert differential(CLIENTS[name], responder=responder)
    # a second time: the remembered lines give the same answer
    assert differential(CLIENTS[name], responder=responder)


def test_source_port_and_via_port_routing() -> None:
    reply = RESPONDERS[0].fast.answer(KAMAILIO, ("10.0.0.2", 33333))
    assert reply is not None
    assert reply[1] == ("10.0.0.2", 5060)
    reply = RESPONDERS[0].fast.answer(SIPP, ("127.0.0.1", 33333))
    assert reply is not None
    assert reply[1] == ("127.0.0.1", 33333)
    assert b"received=127.0.0.1;rport=33333\r\n" in reply[0]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_rfc4475_corpus(name: str) -> None:
    for responder in RESPONDERS:
        differential(CORPUS[name], responder=responder)


@pytest.mark.parametrize(
    "data",
    [
        SIPP.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"),
        SIPP.replace(b"OPTIONS sip:", b"OPTIONS tel:"),
        SIPP.replace(b"OPTIONS sip:", b"OPTIONS SIP:"),
        SIPP.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
        SIPP.replace(b"Accept:", b"Require: foo\r\nAccept:"),
        SIPP.replace(b"Call-ID: 1-4077@127.0.0.1", b"Call-ID: 1 4077"),
        SIPP.replace(b"To: <sip:service@127.0.0.1:7480>", b"To: <sip:service@127.0.0.1:7480"),
        SIPP.replace(b"Content-Length: 0", b"Content-Length: 10"),
        SIPP.replace(b"Max-Forwards: 70", b"Max-Forwards: 7O"),
        SIPP.replace(b"127.0.0.1:7460;branch", b"127.0.0.1:70000;branch"),
        SIPP.replace(b"127.0.0.1:7460;branch", b"[::1]:7460;branch"),
        SIPP.replace(b"User-Agent: sipalive", b"User-Agent:\r\n sipalive"),
        SIPP.replace(b"Accept:", b"Accept :\t"),
        SIPP.replace(b"Accept:", b"Accept:\xc3\xa9"),
        SIPP.replace(b"CSeq: 1 OPTIONS\r\n", b"CSeq: 1 OPTIONS\r\nCSeq: 2 OPTIONS\r\n"),
        SIPP.replace(b"To: <", b"To: <sip:x>\r\nt: <"),
        SIPP.replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0/UDP 192.0.2.1, SIP/2.0/UDP"),
        b"\r\n" + SIPP,
        SIPP[:-4],
        SIPP.replace(b"From: <sip:test-uac@127.0.0.1:7460>;", b"From: sip:x@y;a=<b;"),
    ],
)
def test_anything_unusual_falls_back(data: bytes) -> None:
    for responder in RESPONDERS:
        assert responder.fast.answer(data, SRC) is None
    # ... and the full path still answers whatever it answers (nothing lost)
    RESPONDERS[0].handle_datagram(data, SRC)


def test_bounded_memo_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_LINES_MAX", 3)
    monkeypatch.setattr(fastpath, "_NAMES_MAX", 4)
    responder = StatelessResponder(ResponderConfig(tag_key=b"m"))
    for i in range(10):
        data = SIPP.replace(b"Max-Forwards: 70", b"Max-Forwards: %d\r\nX-N%d: %d" % (i, i, i))
        assert differential(data, responder=responder)
    assert len(responder.fast._lines) <= 3
    # spellings of the varying names (Via, From, Call-ID) beyond the bound fall back
    answered = [
        differential(SIPP.replace(b"Via:", name + b":"), responder=responder)
        for name in (b"VIA", b"vIa", b"viA", b"ViA")
    ]
    assert answered == [True, False, False, False]
    assert len(responder.fast._names) == 4


# -- random requests: well formed (most of them take the fast path) and mutated ------------

_TOKEN = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=8)
_VALUE = st.text(alphabet="abcXYZ019-.!%*_+`'~:@[]/?<>=", min_size=1, max_size=8)


@st.composite
def _params(draw: st.DrawFn, extra: list[str]) -> str:
    names = draw(st.lists(st.one_of(_TOKEN, st.sampled_from(extra)), max_size=4))
    out = ""
    for name in names:
        value = draw(st.one_of(st.none(), _VALUE.filter(lambda v: "<" not in v)))
        out += f";{name}" if value is None else f";{name}={value}"
    return out


@st.composite
def _name_addr(draw: st.DrawFn) -> str:
    uri = draw(st.sampled_from(["sip:a@example.com", "sips:b@192.0.2.1:5061", "tel:+123"]))
    params = draw(_params(["tag", "TAG", "tag=x"]))
    form = draw(st.sampled_from(["bare", "plain", "quoted", "token"]))
    if form == "bare":
        return uri + params
    display = {"plain": "", "quoted": '"A b" ', "token": "Alice Z "}[form]
    return f"{display}<{uri}>{params}"


@st.composite
def options_requests(draw: st.DrawFn) -> bytes:
    def name(long: str, compact: str | None = None) -> str:
        choices = [long, long.upper(), long.lower()] + ([compact] if compact else [])
        return draw(st.sampled_from(choices)) + draw(st.sampled_from([":", " :", ":  "]))

    vias = []
    for _ in range(draw(st.integers(1, 3))):
        transport = draw(st.sampled_from(["UDP", "udp", "TCP", "TLS", "WS"]))
        host = draw(st.sampled_from(["192.0.2.1", "h-1.example.org", "x_y"]))
        port = draw(st.one_of(st.none(), st.integers(1, 65535).map(str), st.just("070")))
        sent_by = host if port is None else f"{host}:{port}"
        params = draw(_params(["rport", "received=192.0.2.9", "RPORT=1", "branch=z9hG4bK1"]))
        vias.append(f"{name('Via', 'v')} SIP/2.0/{transport} {sent_by}{params}")
    lines = [f"OPTIONS {draw(st.sampled_from(['sip:x@y', 'sips:y', 'sip:[::1]:5']))} SIP/2.0"]
    lines += vias
    lines.append(f"{name('From', 'f')} {draw(_name_addr())}")
    lines.append(f"{name('To', 't')} {draw(_name_addr())}")
    lines.append(f"{name('Call-ID', 'i')} {draw(_VALUE.filter(lambda v: ' ' not in v))}")
    lines.append(f"{name('CSeq')} {draw(st.integers(0, 2**32 - 1))} OPTIONS")
    if draw(st.booleans()):
        lines.append(f"{name('Max-Forwards')} {draw(st.integers(0, 300))}")
    for _ in range(draw(st.integers(0, 3))):
        lines.append(f"{name('X-' + draw(_TOKEN))} {draw(_VALUE)}")
    body = draw(st.sampled_from(["", "v=0\r\n"]))
    if draw(st.booleans()):
        lines.append(f"{name('Content-Length', 'l')} {len(body)}")
    draw(st.randoms()).shuffle(lines[len(vias) + 1 :])
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


@settings(max_examples=400, deadline=None)
@given(options_requests(), st.sampled_from(RESPONDERS))
def test_random_options_agree(data: bytes, responder: StatelessResponder) -> None:
    differential(data, responder=responder)


def test_random_options_mostly_take_the_fast_path() -> None:
    answered: list[bool] = []

    @settings(max_examples=200, deadline=None, database=None)
    @given(options_requests())
    def run(data: bytes) -> None:
        answered.append(differential(data))

    run()
    assert sum(answered) > len(answered) // 4, "the generator hardly reaches the fast path"


@settings(max_examples=600, deadline=None)
@given(st.sampled_from([*CLIENTS.values(), *CORPUS.values()]), st.data())
def test_mutated_requests_agree(seed: bytes, data: st.DataObject) -> None:
    mutated = mutate(seed, data, 4, GRAMMAR_OCTETS + b"\tAa")
    for responder in RESPONDERS:
        differential(mutated, responder=responder)


@pytest.mark.parametrize(
    ("via", "fast"),
    [
        (b"SIP/2.0/UDP h:65535;branch=z9hG4bK1;rport", True),
        (b"SIP/2.0/UDP h:65536;branch=z9hG4bK1;rport", False),
        (b"SIP/2.0/UDP h:6553;branch=z9hG4bK1;rport", True),
        (b"SIP/2.0/UDP h;received=192.0.2.1;branch=z9hG4bK1;rport", True),
        (b"SIP/2.0/UDP h;rport=9;branch=z9hG4bK1;rport", True),
        (b"SIP/2.0/UDP h;branch=z9hG4bK1;RPORT", True),
        (b"SIP/2.0/UDP h;branch=z9hG4bK1;rport=", False),
        (b"SIP/2.0/UDP h;branch=z9hG4bK1;xrport", True),
        (b"SIP/2.0/UDP h;rport;branch=z9hG4bK1;Received=x", True),
    ],
)
def test_via_ports_and_routing_parameters(via: bytes, fast: bool) -> None:
    data = SIPP.replace(b"SIP/2.0/UDP 127.0.0.1:7460;branch=z9hG4bK-4077-1-0;rport", via)
    assert differential(data) == fast
