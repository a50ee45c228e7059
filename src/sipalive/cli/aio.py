"""Running an asyncio sub-command: on uvloop when it is installed, usage errors as usage."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from sipalive.cli.common import UsageError


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """asyncio.run, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def run_command(
    parser: argparse.ArgumentParser,
    argv: list[str],
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> int:
    """Parse ``argv``, run ``command(args)`` on the loop and return its exit code; a
    UsageError raised while it runs exits with the usage line and 2, as argparse's do."""
    args = parser.parse_args(argv)
    try:
        return run_loop(command(args))
    except UsageError as exc:
        parser.error(str(exc))
    return 2
