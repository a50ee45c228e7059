"""Runs the atheris fuzz targets for a bounded time: the parser and the responder with its fast
path (fuzz/fuzz_sip.py), and the response peek (fuzz/fuzz_peek.py), seeded with the RFC 4475
corpus and real clients' and servers' messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_fastpath import CLIENTS
from test_peek import KAMAILIO, SIPP

ROOT = Path(__file__).parent.parent


def run_target(tmp_path: Path, script: str, seeds: dict[str, bytes], seconds: str) -> None:
    """Run fuzz/SCRIPT on the RFC 4475 corpus plus ``seeds`` for ``seconds`` (or
    SIPALIVE_FUZZ_SECONDS): it must end at the time limit with no crash file."""
    pytest.importorskip("atheris")
    seconds = os.environ.get("SIPALIVE_FUZZ_SECONDS", seconds)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in (ROOT / "tests" / "data" / "rfc4475").glob("*.dat"):
        (corpus / seed.name).write_bytes(seed.read_bytes())
    for name, data in seeds.items():
        (corpus / f"{name}.dat").write_bytes(data)
    r = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / script), f"-max_total_time={seconds}",
         "-rss_limit_mb=1024", "-max_len=4096", str(corpus)],
        capture_output=True, text=True, timeout=int(seconds) + 120, cwd=tmp_path,
    )  # fmt: skip
    tail = r.stderr[-3000:]
    assert r.returncode == 0, tail
    assert "Done " in tail  # libFuzzer's closing line: it ran to the time limit
    assert "crash-" not in " ".join(p.name for p in tmp_path.iterdir())


def test_fuzz_target_runs_clean(tmp_path: Path) -> None:
    # the clients' OPTIONS reach the responder's fast path
    run_target(tmp_path, "fuzz_sip.py", {f"client-{n}": r for n, r in CLIENTS.items()}, "20")


def test_peek_fuzz_target_runs_clean(tmp_path: Path) -> None:
    run_target(tmp_path, "fuzz_peek.py", {"kamailio": KAMAILIO, "sipp": SIPP + KAMAILIO}, "10")
