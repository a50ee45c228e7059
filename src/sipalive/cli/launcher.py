"""Writes the ``sipalive`` launcher that starts the interpreter with ``-S``.

``site`` (venv detection, .pth files) costs ~3 ms, a quarter of a Nagios check's whole budget.
The launcher skips it, puts this installation's site-packages on ``sys.path`` itself, and runs
``site.main()`` after all for every command but ``check``, so they see the usual environment.
``make install`` writes it over pip's console script; a plain ``pip install`` keeps pip's.

    python -m sipalive.cli.launcher [BIN_DIR]
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

TEMPLATE = """\
#!{python} -S
# Written by sipalive.cli.launcher: -S skips site on the check fast path.
import sys
sys.path.append({purelib!r})
if sys.argv[1:2] != ["check"]:
    import site
    site.main()
from sipalive.cli.main import run
run()
"""


def launcher_text(python: str, purelib: str) -> str:
    return TEMPLATE.format(python=python, purelib=purelib)


def write_launcher(bin_dir: Path, python: str | None = None, purelib: str | None = None) -> Path:
    target = bin_dir / "sipalive"
    text = launcher_text(
        python or os.path.realpath(sys.executable), purelib or sysconfig.get_paths()["purelib"]
    )
    tmp = target.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    bin_dir = Path(args[0]) if args else Path(sys.executable).parent
    print(f"wrote {write_launcher(bin_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
