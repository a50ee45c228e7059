"""``sipalive monitor -c FILE`` as a real process, for tests that need the whole daemon.

:func:`monitor` writes the config (``[http]`` on a free 4-digit port of 127.0.0.1 and
``[storage]`` in the test's directory, then the test's own tables) and starts the installed
console script; it returns once ``/api/targets`` answers. The process can be SIGKILLed and
started again on the same database and config file (:meth:`MonitorProc.kill`,
:meth:`MonitorProc.start`), reconfigured (:meth:`MonitorProc.write_config`,
:meth:`MonitorProc.reload` sends SIGHUP), and is always stopped when the ``with`` ends.

Logs of every run of one :class:`MonitorProc` are appended to the same two files: stderr (the
logging lines) and stdout (one JSON line per transition, see :meth:`MonitorProc.events`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from procs import BIN
from realpeers import free_port

T = TypeVar("T")

START_TIMEOUT = 10.0
STOP_GRACE = 5.0
HTTP_TIMEOUT = 2.0


class MonitorError(RuntimeError):
    """The monitor did not start, or exited while a test was talking to it."""


class MonitorProc:
    """One monitor's directory (config, database, logs) and its current process, if any."""

    def __init__(self, directory: Path, body: str) -> None:
        self.dir = directory
        self.config_path = directory / "monitor.toml"
        self.db_path = directory / "monitor.db"
        self.stderr_path = directory / "monitor.stderr"
        self.stdout_path = directory / "monitor.stdout"
        self.port = free_port("tcp")
        self.body = body
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(body)

    # -- config ----------------------------------------------------------------------------

    def header(self) -> str:
        return (
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n'
            f"[storage]\npath = {json.dumps(str(self.db_path))}\n"
        )

    def write_config(self, body: str, *, raw: bool = False) -> None:
        """Replace the config file: the header and ``body``, or ``body`` alone when ``raw``."""
        self.body = body
        text = body if raw else self.header() + body
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    # -- life cycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise MonitorError("the monitor is not running")
        return self.proc.pid

    def start(self, *extra: str) -> None:
        """Start the process (again) on this directory; returns once /api/targets answers."""
        if self.running:
            raise MonitorError("the monitor is already running")
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [str(BIN), "monitor", "-c", str(self.config_path), *extra],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MonitorError(
                    f"monitor exited with {self.proc.returncode} at start:\n{self.log()}"
                )
            with contextlib.suppress(OSError, ValueError):
                self.api("/api/targets")
                return
            time.sleep(0.05)
        self.kill()
        raise MonitorError(f"/api/targets did not answer within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM, up to STOP_GRACE seconds to commit and exit, then SIGKILL; the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._reap()

    def kill(self) -> int | None:
        """SIGKILL to the monitor's process group (it and any hook it ran); the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return self._reap()

    def _reap(self) -> int | None:
        proc = self.proc
        assert proc is not None
        try:
            code = proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait(STOP_GRACE)
        self.proc = None
        return code

    def reload(self) -> None:
        """SIGHUP: the monitor reads its config file again."""
        os.kill(self.pid, signal.SIGHUP)

    # -- talking to it ---------------------------------------------------------------------

    def get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            body: bytes = response.read()
        return body

    def api(self, path: str) -> Any:
        return json.loads(self.get(path))

    def metrics(self) -> str:
        return self.get("/metrics").decode()

    def targets(self) -> dict[str, dict[str, Any]]:
        """``/api/targets`` by name."""
        return {t["name"]: t for t in self.api("/api/targets")}

    def history(self, name: str) -> list[dict[str, Any]]:
        return list(self.api(f"/api/targets/{name}/history"))

    def log(self) -> str:
        """Everything every run wrote to stderr (the logging lines)."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON transition lines every run wrote to stdout, in order."""
        try:
            text = self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def wait_for(
        self, what: str, probe: Callable[[], T | None], timeout: float, step: float = 0.05
    ) -> T:
        """Poll ``probe`` until it returns something other than None (bounded), and return it.

        A monitor that exits meanwhile fails at once, with its log."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise MonitorError(f"monitor exited with {self.proc.returncode}:\n{self.log()}")
            try:
                found = probe()
            except (OSError, ValueError) as exc:
                found, last = None, exc
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"not within {timeout} s: {what} (last error: {last!r})\n{self.log()[-3000:]}"
                )
            time.sleep(step)

    def wait_targets(
        self, what: str, ok: Callable[[dict[str, dict[str, Any]]], bool], timeout: float
    ) -> dict[str, dict[str, Any]]:
        """Wait until ``ok(targets)`` holds for ``/api/targets`` by name; returns them."""

        def probe() -> dict[str, dict[str, Any]] | None:
            targets = self.targets()
            return targets if ok(targets) else None

        return self.wait_for(what, probe, timeout)

    def wait_history(self, name: str, count: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Wait until ``name`` has ``count`` transitions in its history and return them.

        The API shows a new state at once, its transition once it is committed (soon after)."""
        return self.wait_for(
            f"{count} transitions of {name!r}",
            lambda: h if len(h := self.history(name)) >= count else None,
            timeout,
        )

    def wait_states(self, want: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every named target is in its wanted state; all targets by name."""
        return self.wait_targets(
            f"states {want}",
            lambda t: all(name in t and t[name]["state"] == s for name, s in want.items()),
            timeout,
        )


@contextlib.contextmanager
def monitor(directory: Path, body: str, *, start: bool = True) -> Iterator[MonitorProc]:
    """A monitor over ``body`` (TOML after the [http] and [storage] tables) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    mon = MonitorProc(directory, body)
    try:
        if start:
            mon.start()
        yield mon
    finally:
        mon.stop()
