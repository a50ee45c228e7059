"""Runs the atheris fuzz target for a bounded time, seeded with the RFC 4475 corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_fastpath import CLIENTS

ROOT = Path(__file__).parent.parent


def test_fuzz_target_runs_clean(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    seconds = os.environ.get("SIPALIVE_FUZZ_SECONDS", "20")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for seed in (ROOT / "tests" / "data" / "rfc4475").glob("*.dat"):
        (corpus / seed.name).write_bytes(seed.read_bytes())
    for name, request in CLIENTS.items():  # seeds that reach the responder's fast path
        (corpus / f"client-{name}.dat").write_bytes(request)
    r = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_sip.py"), f"-max_total_time={seconds}",
         "-rss_limit_mb=1024", "-max_len=4096", str(corpus)],
        capture_output=True, text=True, timeout=int(seconds) + 120, cwd=tmp_path,
    )  # fmt: skip
    tail = r.stderr[-3000:]
    assert r.returncode == 0, tail
    assert "Done " in tail  # libFuzzer's closing line: it ran to the time limit
    assert "crash-" not in " ".join(p.name for p in tmp_path.iterdir())
