"""The -S launcher that `make install` writes over pip's console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from realpeers import free_port
from sipalive.cli.launcher import write_launcher


def imported(stderr: str) -> set[str]:
    """Module names from PYTHONPROFILEIMPORTTIME output."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def test_launcher_skips_site_for_check_only(tmp_path: Path) -> None:
    launcher = write_launcher(tmp_path)
    assert launcher.read_text().splitlines()[0].endswith(" -S")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    port = free_port("udp")
    check = subprocess.run([str(launcher), "check", "-H", "127.0.0.1", "-p", str(port)],
                           capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert check.returncode == 2
    assert check.stdout.startswith("SIP CRITICAL - ICMP port unreachable")
    assert "site" not in imported(check.stderr)
    assert "sipalive.cli.common" in imported(check.stderr)  # (import_module is not traced)
    ping = subprocess.run([str(launcher), "ping", "--help"], capture_output=True, text=True,
                          timeout=30, env=env)  # fmt: skip
    assert ping.returncode == 0
    assert "usage: sipalive ping" in ping.stdout
    assert "site" in imported(ping.stderr)


def test_installed_sipalive_is_the_launcher() -> None:
    installed = Path(sys.executable).parent / "sipalive"
    first = installed.read_text().splitlines()[0]
    assert first.endswith(" -S"), f"make install did not write the launcher: {first}"
