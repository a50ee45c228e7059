"""RFC 3263 resolution against an in-process DNS server on 127.0.0.1 (tests/dnsserver.py).

Every behaviour is checked through both drivers, blocking and asyncio, which share the
procedure and so must give the same targets in the same order.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sipalive
from dnsserver import DnsServer
from sipalive.errors import LocalProtocolError, ResolveError
from sipalive.io.resolver import Srv, Target, order_srv, resolve, resolve_sync

Run = Callable[..., list[Target]]

V6 = "2001:db8::1"

# RFC 3263 §4.1's own example, made whole: TLS, then TCP, then UDP.
ZONE: dict[tuple[str, str], list[str]] = {
    ("example.com", "NAPTR"): [
        '100 50 "s" "SIP+D2U" "" _sip._udp.example.com.',
        '90 50 "s" "SIP+D2T" "" _sip._tcp.example.com.',
        '50 50 "s" "SIPS+D2T" "" _sips._tcp.example.com.',
    ],
    ("_sips._tcp.example.com", "SRV"): ["0 0 5061 tls.example.com."],
    ("_sip._tcp.example.com", "SRV"): [
        "10 0 5060 backup.example.com.",
        "0 0 5070 server1.example.com.",
    ],
    ("_sip._udp.example.com", "SRV"): ["0 0 5060 server1.example.com."],
    ("tls.example.com", "A"): ["192.0.2.10"],
    ("server1.example.com", "A"): ["192.0.2.1"],
    ("server1.example.com", "AAAA"): ["2001:db8::1"],
    ("backup.example.com", "AAAA"): ["2001:db8::2"],
    # No NAPTR: SRV for TCP only.
    ("srvonly.example", "TXT"): ['"no naptr here"'],
    ("_sip._tcp.srvonly.example", "SRV"): ["0 0 5080 pbx.srvonly.example."],
    ("_sips._tcp.srvonly.example", "SRV"): ["0 0 5081 pbx.srvonly.example."],
    ("pbx.srvonly.example", "A"): ["198.51.100.8"],
    # Neither NAPTR nor SRV: A and AAAA only.
    ("plain.example", "A"): ["198.51.100.5"],
    ("plain.example", "AAAA"): ["2001:db8::5"],
    ("v6only.example", "AAAA"): ["2001:db8::6"],
}


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "sync":
        return resolve_sync

    def run_async(*args: Any, **kwargs: Any) -> list[Target]:
        return asyncio.run(resolve(*args, **kwargs))

    return run_async


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as dns_server:
        yield dns_server


def parse_srv(text: str) -> Srv:
    priority, weight, port, target = text.split()
    return Srv(int(priority), int(weight), int(port), target.rstrip("."))


def triples(targets: list[Target]) -> list[tuple[str, str, int]]:
    return [(t.transport, t.address, t.port) for t in targets]


# -- IP literals: RFC 3263 §4.1-§4.2, no DNS at all ---------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (("sip", "192.0.2.7", None, None), Target("udp", "192.0.2.7", 5060, "192.0.2.7")),
        (("sips", "192.0.2.7", None, None), Target("tls", "192.0.2.7", 5061, "192.0.2.7")),
        (("sip", "192.0.2.7", 5070, None), Target("udp", "192.0.2.7", 5070, "192.0.2.7")),
        (("sip", "192.0.2.7", None, "TCP"), Target("tcp", "192.0.2.7", 5060, "192.0.2.7")),
        (("sip", "192.0.2.7", None, "tls"), Target("tls", "192.0.2.7", 5061, "192.0.2.7")),
        (("sips", "192.0.2.7", None, "tcp"), Target("tls", "192.0.2.7", 5061, "192.0.2.7")),
        (("sip", "::1", None, None), Target("udp", "::1", 5060, "::1")),
        (
            ("sip", "[2001:DB8:0::1]", 5062, "tcp"),
            Target("tcp", "2001:db8::1", 5062, "2001:db8::1"),
        ),
        (("sips", "2001:db8::9", None, None), Target("tls", "2001:db8::9", 5061, "2001:db8::9")),
    ],
)
def test_ip_literal_needs_no_dns(
    run: Run, server: DnsServer, uri: tuple[str, str, int | None, str | None], expected: Target
) -> None:
    assert run(*uri, nameservers=server.nameservers) == [expected]
    assert server.asked == []


def test_ip_literal_websocket_default_ports(run: Run) -> None:
    supported = ("udp", "tcp", "tls", "ws", "wss")
    assert run("sip", "192.0.2.7", None, "ws", supported=supported) == [
        Target("ws", "192.0.2.7", 80, "192.0.2.7")
    ]
    assert run("sips", "192.0.2.7", None, "ws", supported=supported) == [
        Target("wss", "192.0.2.7", 443, "192.0.2.7")
    ]


def test_default_transport_when_udp_is_not_supported(run: Run) -> None:
    assert run("sip", "192.0.2.7", None, None, supported=("tcp",)) == [
        Target("tcp", "192.0.2.7", 5060, "192.0.2.7")
    ]


@pytest.mark.parametrize(
    ("scheme", "transport", "supported", "message"),
    [
        ("sips", "udp", ("udp", "tcp", "tls"), "udp cannot carry"),
        ("sip", "sctp", ("udp", "tcp", "tls"), "'sctp' is not supported"),
        ("sip", "ws", ("udp", "tcp", "tls"), "'ws' is not supported"),
        ("sips", None, ("udp", "tcp"), "no supported transport can carry a sips: URI"),
    ],
)
def test_unusable_transport_is_a_resolve_error(
    run: Run, scheme: str, transport: str | None, supported: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ResolveError, match=message):
        run(scheme, "192.0.2.7", None, transport, supported=supported)


@pytest.mark.parametrize(
    ("scheme", "host", "port", "supported"),
    [
        ("tel", "192.0.2.7", None, ("udp",)),
        ("sip", "", None, ("udp",)),
        ("sip", "192.0.2.7", 0, ("udp",)),
        ("sip", "192.0.2.7", 65536, ("udp",)),
        ("sip", "192.0.2.7", None, ("udp", "carrier-pigeon")),
    ],
)
def test_bad_arguments_are_local_errors(
    run: Run, scheme: str, host: str, port: int | None, supported: tuple[str, ...]
) -> None:
    with pytest.raises(LocalProtocolError):
        run(scheme, host, port, None, supported=supported)


# -- host name with an explicit port: §4.2, A/AAAA only --------------------------------


def test_explicit_port_asks_only_addresses(run: Run, server: DnsServer) -> None:
    targets = run("sip", "plain.example", 5099, None, nameservers=server.nameservers)
    assert targets == [
        Target("udp", "198.51.100.5", 5099, "plain.example"),
        Target("udp", "2001:db8::5", 5099, "plain.example"),
    ]
    assert sorted(server.asked) == [("plain.example", "A"), ("plain.example", "AAAA")]


def test_explicit_port_sips_is_tls(run: Run, server: DnsServer) -> None:
    targets = run("sips", "plain.example", 5099, None, nameservers=server.nameservers)
    assert triples(targets) == [("tls", "198.51.100.5", 5099), ("tls", "2001:db8::5", 5099)]
    assert {rdtype for _, rdtype in server.asked} == {"A", "AAAA"}


def test_explicit_port_uses_the_system_resolver_without_nameservers(run: Run) -> None:
    targets = run("sip", "localhost", 5060, "tcp")
    assert targets
    assert {t.address for t in targets} <= {"127.0.0.1", "::1"}
    assert {(t.transport, t.port, t.host) for t in targets} == {("tcp", 5060, "localhost")}


def test_aaaa_only_host(run: Run, server: DnsServer) -> None:
    targets = run("sip", "v6only.example", 5060, None, nameservers=server.nameservers)
    assert targets == [Target("udp", "2001:db8::6", 5060, "v6only.example")]


# -- transport but no port: §4.2 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme_transport", "srv_name", "expected"),
    [
        (("sip", "tcp"), "_sip._tcp.example.com", ("tcp", "192.0.2.1", 5070)),
        (("sip", "udp"), "_sip._udp.example.com", ("udp", "192.0.2.1", 5060)),
        (("sip", "tls"), "_sips._tcp.example.com", ("tls", "192.0.2.10", 5061)),
        (("sips", "tcp"), "_sips._tcp.example.com", ("tls", "192.0.2.10", 5061)),
    ],
)
def test_transport_without_port_queries_that_srv_only(
    run: Run,
    server: DnsServer,
    scheme_transport: tuple[str, str],
    srv_name: str,
    expected: tuple[str, str, int],
) -> None:
    scheme, transport = scheme_transport
    targets = run(scheme, "example.com", None, transport, nameservers=server.nameservers)
    assert triples(targets)[0] == expected
    assert {t.transport for t in targets} == {expected[0]}
    assert server.asked[0] == (srv_name, "SRV")
    assert all(rdtype != "NAPTR" for _, rdtype in server.asked)


def test_transport_without_srv_falls_back_to_addresses(run: Run, server: DnsServer) -> None:
    targets = run("sip", "plain.example", None, "tls", nameservers=server.nameservers)
    assert targets == [
        Target("tls", "198.51.100.5", 5061, "plain.example"),
        Target("tls", "2001:db8::5", 5061, "plain.example"),
    ]
    assert server.asked[0] == ("_sips._tcp.plain.example", "SRV")


def test_websocket_transport_goes_straight_to_addresses(run: Run, server: DnsServer) -> None:
    supported = ("udp", "tcp", "tls", "ws", "wss")
    targets = run(
        "sips", "plain.example", None, "wss", nameservers=server.nameservers, supported=supported
    )
    assert triples(targets) == [("wss", "198.51.100.5", 443), ("wss", "2001:db8::5", 443)]
    assert sorted(server.asked) == [("plain.example", "A"), ("plain.example", "AAAA")]


# -- neither: NAPTR -> SRV -> A/AAAA, §4.1 -------------------------------------------


def test_full_naptr_srv_address_chain(run: Run, server: DnsServer) -> None:
    targets = run("sip", "example.com", None, None, nameservers=server.nameservers)
    assert targets == [
        Target("tls", "192.0.2.10", 5061, "tls.example.com"),
        Target("tcp", "192.0.2.1", 5070, "server1.example.com"),
        Target("tcp", "2001:db8::1", 5070, "server1.example.com"),
        Target("tcp", "2001:db8::2", 5060, "backup.example.com"),
        Target("udp", "192.0.2.1", 5060, "server1.example.com"),
        Target("udp", "2001:db8::1", 5060, "server1.example.com"),
    ]
    assert server.asked[0] == ("example.com", "NAPTR")
    assert ("_sip._udp.example.com", "SRV") in server.asked
    assert ("plain.example", "A") not in server.asked


def test_rfc3263_example_client_without_tls_uses_tcp(run: Run, server: DnsServer) -> None:
    targets = run(
        "sip", "example.com", None, None, nameservers=server.nameservers, supported=("udp", "tcp")
    )
    assert triples(targets)[0] == ("tcp", "192.0.2.1", 5070)
    assert {t.transport for t in targets} == {"tcp", "udp"}
    assert ("_sips._tcp.example.com", "SRV") not in server.asked


def test_sips_keeps_only_sips_services(run: Run, server: DnsServer) -> None:
    targets = run("sips", "example.com", None, None, nameservers=server.nameservers)
    assert targets == [Target("tls", "192.0.2.10", 5061, "tls.example.com")]
    assert ("_sip._udp.example.com", "SRV") not in server.asked
    assert ("_sip._tcp.example.com", "SRV") not in server.asked


def test_client_preference_orders_naptr_ties(run: Run) -> None:
    zone = {
        ("tie.example", "NAPTR"): [
            '10 10 "s" "SIP+D2T" "" _sip._tcp.tie.example.',
            '10 10 "s" "SIP+D2U" "" _sip._udp.tie.example.',
            '10 5 "S" "SIPS+D2T" "" _sips._tcp.tie.example.',
        ],
        ("_sip._udp.tie.example", "SRV"): ["0 0 5060 h.tie.example."],
        ("_sip._tcp.tie.example", "SRV"): ["0 0 5060 h.tie.example."],
        ("_sips._tcp.tie.example", "SRV"): ["0 0 5061 h.tie.example."],
        ("h.tie.example", "A"): ["203.0.113.1"],
    }
    with DnsServer(zone) as dns_server:
        targets = run("sip", "tie.example", None, None, nameservers=dns_server.nameservers)
    assert [t.transport for t in targets] == ["tls", "udp", "tcp"]


def test_naptr_records_not_for_us_are_dropped(run: Run) -> None:
    zone = {
        ("mixed.example", "NAPTR"): [
            '1 1 "s" "SIP+D2S" "" _sip._sctp.mixed.example.',
            '2 1 "s" "SIP+D2W" "" _sip._ws.mixed.example.',
            '3 1 "u" "E2U+sip" "!^.*$!sip:info@example.com!" .',
            '4 1 "" "SIP+D2T" "" other.mixed.example.',
            '5 1 "s" "SIP+D2U" "" _sip._udp.mixed.example.',
        ],
        ("_sip._ws.mixed.example", "SRV"): ["0 0 8080 ws.mixed.example."],
        ("_sip._udp.mixed.example", "SRV"): ["0 0 5060 udp.mixed.example."],
        ("ws.mixed.example", "A"): ["203.0.113.2"],
        ("udp.mixed.example", "A"): ["203.0.113.3"],
    }
    with DnsServer(zone) as dns_server:
        targets = run("sip", "mixed.example", None, None, nameservers=dns_server.nameservers)
        assert triples(targets) == [("udp", "203.0.113.3", 5060)]
        asked = {name for name, rdtype in dns_server.asked if rdtype == "SRV"}
        assert asked == {"_sip._udp.mixed.example"}
        with_ws = run(
            "sip",
            "mixed.example",
            None,
            None,
            nameservers=dns_server.nameservers,
            supported=("udp", "tcp", "tls", "ws"),
        )
    assert triples(with_ws) == [("ws", "203.0.113.2", 8080), ("udp", "203.0.113.3", 5060)]


def test_naptr_whose_srv_is_missing_falls_back_to_srv_at_the_domain(run: Run) -> None:
    zone = {
        ("broken.example", "NAPTR"): ['10 10 "s" "SIP+D2T" "" _sip._tcp.elsewhere.example.'],
        ("_sip._udp.broken.example", "SRV"): ["0 0 5060 h.broken.example."],
        ("h.broken.example", "A"): ["203.0.113.4"],
    }
    with DnsServer(zone) as dns_server:
        targets = run("sip", "broken.example", None, None, nameservers=dns_server.nameservers)
    assert triples(targets) == [("udp", "203.0.113.4", 5060)]


# -- no NAPTR: §4.1, §4.2 ---------------------------------------------------------


def test_no_naptr_queries_srv_for_each_supported_transport(run: Run, server: DnsServer) -> None:
    targets = run("sip", "srvonly.example", None, None, nameservers=server.nameservers)
    assert targets == [
        Target("tcp", "198.51.100.8", 5080, "pbx.srvonly.example"),
        Target("tls", "198.51.100.8", 5081, "pbx.srvonly.example"),
    ]
    srv_asked = [name for name, rdtype in server.asked if rdtype == "SRV"]
    assert sorted(srv_asked) == [
        "_sip._tcp.srvonly.example",
        "_sip._udp.srvonly.example",
        "_sips._tcp.srvonly.example",
    ]


def test_no_naptr_sips_queries_sips_only(run: Run, server: DnsServer) -> None:
    targets = run("sips", "srvonly.example", None, None, nameservers=server.nameservers)
    assert triples(targets) == [("tls", "198.51.100.8", 5081)]
    assert [name for name, rdtype in server.asked if rdtype == "SRV"] == [
        "_sips._tcp.srvonly.example"
    ]


@pytest.mark.parametrize(
    ("scheme", "transport", "port"), [("sip", "udp", 5060), ("sips", "tls", 5061)]
)
def test_no_naptr_no_srv_falls_back_to_addresses(
    run: Run, server: DnsServer, scheme: str, transport: str, port: int
) -> None:
    targets = run(scheme, "plain.example", None, None, nameservers=server.nameservers)
    assert targets == [
        Target(transport, "198.51.100.5", port, "plain.example"),
        Target(transport, "2001:db8::5", port, "plain.example"),
    ]


# -- SRV ordering: RFC 2782 ----------------------------------------------------------------


def test_srv_priority_then_seeded_weights(run: Run) -> None:
    records = [
        "20 0 5060 late.w.example.",
        "10 10 5060 a.w.example.",
        "10 30 5060 b.w.example.",
        "10 60 5060 c.w.example.",
    ]
    zone: dict[tuple[str, str], list[str]] = {("_sip._udp.w.example", "SRV"): records}
    for index, name in enumerate(["late", "a", "b", "c"]):
        zone[(f"{name}.w.example", "A")] = [f"203.0.113.{10 + index}"]
    parsed = [parse_srv(record) for record in records]
    orders = set()
    with DnsServer(zone) as dns_server:
        for seed in range(10):
            targets = run(
                "sip",
                "w.example",
                None,
                "udp",
                nameservers=dns_server.nameservers,
                rng=random.Random(seed),
            )
            hosts = [t.host for t in targets]
            assert hosts == [srv.target for srv in order_srv(parsed, random.Random(seed))]
            assert hosts[-1] == "late.w.example"
            orders.add(tuple(hosts))
    assert len(orders) > 1


def test_srv_weights_statistically() -> None:
    records = [
        Srv(0, 10, 5060, "a"),
        Srv(0, 30, 5060, "b"),
        Srv(0, 60, 5060, "c"),
        Srv(1, 0, 1, "z"),
    ]
    rng = random.Random(3263)
    runs = 4000
    first = collections.Counter(order_srv(records, rng)[0].target for _ in range(runs))
    assert set(first) == {"a", "b", "c"}
    for target, weight in (("a", 10), ("b", 30), ("c", 60)):
        assert abs(first[target] / runs - weight / 100) < 0.04


def test_srv_zero_weight_is_rarely_first() -> None:
    records = [Srv(0, 0, 5060, "zero"), Srv(0, 100, 5060, "heavy")]
    rng = random.Random(2782)
    first = collections.Counter(order_srv(records, rng)[0].target for _ in range(2000))
    assert 0 < first["zero"] < 60


@given(
    st.lists(
        st.builds(
            Srv,
            st.integers(0, 3),
            st.integers(0, 5),
            st.integers(1, 65535),
            st.sampled_from(["a", "b", "c", "d"]),
        ),
        max_size=12,
    ),
    st.integers(0, 2**32),
)
def test_order_srv_is_a_priority_sorted_permutation(records: list[Srv], seed: int) -> None:
    ordered = order_srv(records, random.Random(seed))
    assert collections.Counter(ordered) == collections.Counter(records)
    assert [r.priority for r in ordered] == sorted(r.priority for r in records)


def test_srv_dot_target_means_not_available(run: Run) -> None:
    zone = {
        ("_sip._udp.dot.example", "SRV"): ["0 0 0 ."],
        ("dot.example", "A"): ["203.0.113.5"],
    }
    with DnsServer(zone) as dns_server:
        with pytest.raises(ResolveError, match="decidedly not available"):
            run("sip", "dot.example", None, "udp", nameservers=dns_server.nameservers)
        assert ("dot.example", "A") not in dns_server.asked


def test_srv_dot_for_one_transport_leaves_the_others(run: Run) -> None:
    zone = {
        ("_sip._udp.dot.example", "SRV"): ["0 0 0 ."],
        ("_sip._tcp.dot.example", "SRV"): ["0 0 5060 h.dot.example."],
        ("h.dot.example", "A"): ["203.0.113.6"],
    }
    with DnsServer(zone) as dns_server:
        targets = run("sip", "dot.example", None, None, nameservers=dns_server.nameservers)
    assert triples(targets) == [("tcp", "203.0.113.6", 5060)]


def test_large_srv_answer_is_retried_over_tcp(run: Run) -> None:
    records = [f"0 1 {5060 + i} host{i:02d}.big.example." for i in range(40)]
    zone: dict[tuple[str, str], list[str]] = {("_sip._tcp.big.example", "SRV"): records}
    for i in range(40):
        zone[(f"host{i:02d}.big.example", "A")] = [f"198.51.100.{i + 1}"]
    with DnsServer(zone) as dns_server:
        targets = run("sip", "big.example", None, "tcp", nameservers=dns_server.nameservers)
        assert ("_sip._tcp.big.example", "SRV", "tcp") in dns_server.log
    assert len(targets) == 40
    assert {t.port for t in targets} == set(range(5060, 5100))


# -- failures: ResolveError says which name, which types, and what happened ----------------


def test_nxdomain_message(run: Run, server: DnsServer) -> None:
    with pytest.raises(ResolveError) as caught:
        run("sip", "nowhere.example", None, None, nameservers=server.nameservers)
    message = str(caught.value)
    assert message.startswith("sip:nowhere.example: no usable target")
    assert "NAPTR nowhere.example: NXDOMAIN" in message
    assert "A/AAAA nowhere.example: NXDOMAIN" in message
    assert "RFC 8020" in message
    assert all(rdtype != "SRV" for _, rdtype in server.asked)


def test_no_records_message(run: Run, server: DnsServer) -> None:
    with pytest.raises(ResolveError) as caught:
        run("sip", "srvonly.example", 5060, None, nameservers=server.nameservers)
    assert "A/AAAA srvonly.example: no records" in str(caught.value)


def test_every_lookup_is_named_in_the_message(run: Run) -> None:
    zone = {("empty.example", "TXT"): ['"nothing for SIP"']}
    with DnsServer(zone) as dns_server, pytest.raises(ResolveError) as caught:
        run("sip", "empty.example", None, None, nameservers=dns_server.nameservers)
    message = str(caught.value)
    for part in (
        "NAPTR empty.example: no records",
        "SRV _sip._udp.empty.example: NXDOMAIN",
        "SRV _sip._tcp.empty.example: NXDOMAIN",
        "SRV _sips._tcp.empty.example: NXDOMAIN",
        "A/AAAA empty.example: no records",
    ):
        assert part in message


def test_srv_target_without_address_is_an_error(run: Run) -> None:
    zone = {("_sip._udp.lame.example", "SRV"): ["0 0 5060 gone.lame.example."]}
    with DnsServer(zone) as dns_server, pytest.raises(ResolveError) as caught:
        run("sip", "lame.example", None, "udp", nameservers=dns_server.nameservers)
    assert "A/AAAA gone.lame.example: NXDOMAIN" in str(caught.value)


def test_servfail_on_naptr_still_tries_srv(run: Run) -> None:
    zone = {
        ("_sip._udp.flaky.example", "SRV"): ["0 0 5060 h.flaky.example."],
        ("h.flaky.example", "A"): ["203.0.113.7"],
    }
    with DnsServer(zone, rcodes={"flaky.example": "SERVFAIL"}) as dns_server:
        targets = run("sip", "flaky.example", None, None, nameservers=dns_server.nameservers)
    assert triples(targets) == [("udp", "203.0.113.7", 5060)]


def test_servfail_message(run: Run) -> None:
    with (
        DnsServer({}, rcodes={"flaky.example": "SERVFAIL"}) as dns_server,
        pytest.raises(ResolveError, match=r"A/AAAA flaky\.example: .*SERVFAIL"),
    ):
        run("sip", "flaky.example", 5060, None, nameservers=dns_server.nameservers)


def test_silent_nameserver_fails_within_the_timeout(run: Run) -> None:
    with DnsServer(ZONE, silent={"example.com"}) as dns_server:
        started = time.monotonic()
        with pytest.raises(ResolveError) as caught:
            run("sip", "example.com", None, None, nameservers=dns_server.nameservers, timeout=0.4)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "NAPTR example.com: timeout" in message
    assert "not asked, the time budget being spent" in message
    assert elapsed < 1.5


def test_silent_for_one_type_only(run: Run) -> None:
    zone = {**ZONE, ("slow.example", "A"): ["203.0.113.8"]}
    with DnsServer(zone, silent={("slow.example", "NAPTR")}) as dns_server:
        targets = run("sip", "slow.example", 5060, None, nameservers=dns_server.nameservers)
    assert triples(targets) == [("udp", "203.0.113.8", 5060)]


# -- lazy imports: the fast one-shot check must stay lean ----------------------------------


def _python(code: str) -> str:
    env = dict(os.environ)
    source_root = str(Path(sipalive.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_resolver_imports_neither_dns_nor_asyncio() -> None:
    out = _python(
        "import sys, sipalive.io.resolver\n"
        "print(sorted(m for m in sys.modules if m == 'asyncio' or m.split('.')[0] == 'dns'))\n"
    )
    assert out.strip() == "[]"


def test_resolve_sync_of_an_ip_literal_imports_neither_dns_nor_asyncio() -> None:
    out = _python(
        "import sys\n"
        "from sipalive.io.resolver import resolve_sync\n"
        "print(resolve_sync('sip', '192.0.2.1', None, None)[0].port)\n"
        "print(resolve_sync('sips', '::1', 5071, 'tcp')[0].transport)\n"
        "print('dns' in sys.modules, 'asyncio' in sys.modules)\n"
    )
    assert out.split() == ["5060", "tls", "False", "False"]


def test_resolve_sync_of_a_name_with_port_does_not_need_dnspython() -> None:
    out = _python(
        "import sys\n"
        "from sipalive.io.resolver import resolve_sync\n"
        "resolve_sync('sip', 'localhost', 5060, None)\n"
        "print('dns' in sys.modules, 'asyncio' in sys.modules)\n"
    )
    assert out.split() == ["False", "False"]


def test_async_resolve_of_an_ip_literal_does_not_import_dns() -> None:
    out = _python(
        "import asyncio, sys\n"
        "from sipalive.io.resolver import resolve\n"
        "print(asyncio.run(resolve('sip', '192.0.2.1', None, 'tcp'))[0].transport)\n"
        "print('dns' in sys.modules)\n"
    )
    assert out.split() == ["tcp", "False"]
