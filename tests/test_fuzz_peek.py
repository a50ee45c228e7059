"""Runs the peek's atheris fuzz target for a bounded time, seeded with real responses and the
RFC 4475 corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_peek import KAMAILIO, SIPP

ROOT = Path(__file__).parent.parent


def test_peek_fuzz_target_runs_clean(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    seconds = os.environ.get("SIPALIVE_FUZZ_SECONDS", "10")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in (ROOT / "tests" / "data" / "rfc4475").glob("*.dat"):
        (corpus / seed.name).write_bytes(seed.read_bytes())
    (corpus / "kamailio").write_bytes(KAMAILIO)
    (corpus / "sipp").write_bytes(SIPP + KAMAILIO)
    r = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_peek.py"), f"-max_total_time={seconds}",
         "-rss_limit_mb=1024", "-max_len=4096", str(corpus)],
        capture_output=True, text=True, timeout=int(seconds) + 120, cwd=tmp_path,
    )  # fmt: skip
    tail = r.stderr[-3000:]
    assert r.returncode == 0, tail
    assert "Done " in tail
    assert "crash-" not in " ".join(p.name for p in tmp_path.iterdir())
