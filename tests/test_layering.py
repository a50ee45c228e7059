"""STYLE: pure packages never touch I/O, clocks or randomness, and layers import downward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "sipalive"
PURE = ("sip", "stun", "keepalive", "qualify")
FORBIDDEN = {"asyncio", "socket", "time", "random", "select", "ssl", "threading", "selectors"}
LAYERS = ["sip", "stun", "keepalive", "qualify", "io", "store", "http", "cli"]
RANK = {"sip": 0, "stun": 0, "keepalive": 1, "qualify": 2, "io": 3, "store": 4, "http": 4, "cli": 5}


def imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_do_no_io(package: str) -> None:
    files = list((SRC / package).glob("*.py"))
    assert files
    for path in files:
        bad = [n for n in imports(path) if n.split(".")[0] in FORBIDDEN]
        assert not bad, f"{path.name} imports {bad}"


def test_layers_import_downward() -> None:
    for package, rank in RANK.items():
        for path in (SRC / package).glob("*.py") if (SRC / package).exists() else []:
            for name in imports(path):
                parts = name.split(".")
                if parts[0] == "sipalive" and len(parts) > 1 and parts[1] in RANK:
                    assert RANK[parts[1]] <= rank, f"{package}/{path.name} imports {name}"
