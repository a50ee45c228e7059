"""``sipalive check`` on a literal IP over UDP stays lean: no asyncio, dnspython, aiohttp,
msgspec (STYLE: fast paths stay lean)."""

from __future__ import annotations

import subprocess
import sys

from realpeers import free_port

HEAVY = ("asyncio", "dns", "aiohttp", "msgspec", "ssl", "argparse")


def test_check_literal_ip_imports_nothing_heavy() -> None:
    port = free_port("udp")
    code = (
        "import sys\n"
        "from sipalive.cli.main import main\n"
        f"rc = main(['check', '-H', '127.0.0.1', '-p', '{port}'])\n"
        "print('RC', rc)\n"
        f"print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "RC 2" in r.stdout, r.stdout + r.stderr  # closed port: CRITICAL via ICMP
    assert "HEAVY []" in r.stdout, r.stdout
