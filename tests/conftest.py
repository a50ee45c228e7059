"""Shared fixtures: real SIP peers from realpeers.py (SIPp, Kamailio) on free 127.0.0.1 ports.

A test that uses one of the peer fixtures is marked ``realpeer`` automatically, so
``pytest -m "not realpeer"`` runs without any peer installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from realpeers import Kamailio, SippUas, kamailio_on_free_port, sipp_uas_on_free_port

_PEER_FIXTURES = frozenset({"sipp_uas_udp", "sipp_uas_tcp", "sipp_silent_udp", "kamailio"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _PEER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realpeer)


@pytest.fixture
def sipp_uas_udp(tmp_path: Path) -> Iterator[SippUas]:
    """SIPp answering every OPTIONS over UDP with 200 OK (fresh per test: its log is the test's)."""
    with sipp_uas_on_free_port("udp", log_dir=tmp_path / "sipp-uas-udp") as uas:
        yield uas


@pytest.fixture
def sipp_uas_tcp(tmp_path: Path) -> Iterator[SippUas]:
    """SIPp answering every OPTIONS over TCP with 200 OK."""
    with sipp_uas_on_free_port("tcp", log_dir=tmp_path / "sipp-uas-tcp") as uas:
        yield uas


@pytest.fixture
def sipp_silent_udp(tmp_path: Path) -> Iterator[SippUas]:
    """SIPp receiving OPTIONS over UDP and never answering (a hung peer)."""
    with sipp_uas_on_free_port("udp", mode="silent", log_dir=tmp_path / "sipp-silent") as uas:
        yield uas


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """One Kamailio per test module: UDP+TCP on ``.port``, TLS on ``.tls_port``, no auth."""
    with kamailio_on_free_port(tls=True, run_dir=tmp_path_factory.mktemp("kamailio")) as kam:
        yield kam
