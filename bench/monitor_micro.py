"""The monitor's per-probe CPU in Python, without the network: a micro-benchmark.

``bench/monitor_scale.sh`` measures the monitor as a whole (CPU of all its threads, kernel
included) against a real responder; its CPU figure moves by a point or more from run to run
on this 2-core machine, more than most single changes to the probe path are worth. This
script measures that path alone and steadily: the real MonitorEngine, store writer and event
dispatcher, N targets of one shared UDP endpoint, a simulated clock stepped by the engine's
5-ms tick, and every request answered at once by handing a 200 OK with its branch to the
endpoint's ``datagram_received`` (the socket's ``sendto`` is replaced: no syscalls).

After one frequency period of warm-up (every target probed once, as in the real monitor), it
runs HALF a period more and prints the main thread's CPU per probe (``time.thread_time``;
the store thread's work is left out: it is printed as the process total minus the main
thread), less the cost of making the answers, which is measured alone on the same answers.

    .venv/bin/python bench/monitor_micro.py [--n 100000] [--freq 60] [--repeat 3]

Not a test, and no peer to compare with: it compares the monitor with itself, before and
after a change (run it on both builds). Prints the best (noise only adds) and the median of
``--repeat`` windows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sipalive import clock
from sipalive.config import parse_config
from sipalive.events import EventDispatcher, JsonLineSink
from sipalive.io.udpshared import SharedUdpEndpoint
from sipalive.monitor.engine import TICK, MonitorEngine
from sipalive.store.sqlite import Store, StoreWriter

BRANCH = re.compile(rb";branch=([^;\r\n]+)")
HEAD = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch="
TAIL = (
    b";rport=5060\r\nFrom: <sip:sipalive@invalid>;tag=1\r\nTo: <sip:t@127.0.0.1>;tag=2\r\n"
    b"Call-ID: c@h\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def address(k: int) -> str:
    b, c = divmod(k, 254)
    return f"127.1.{b}.{c + 1}"


def config_text(n: int, freq: float, db: Path) -> str:
    head = f'[http]\nlisten = "127.0.0.1:1"\n[storage]\npath = "{db}"\n'
    head += f"[defaults]\nqualify_frequency = {freq}\nqualify_timeout = 3\n"
    targets = (
        f'[[targets]]\nname = "t{i}"\nuri = "sip:t{i}@{address(i % 1000)}:5060"\n' for i in range(n)
    )
    return head + "".join(targets)


def answer(data: bytes) -> bytes:
    m = BRANCH.search(data)
    assert m is not None
    return HEAD + m.group(1) + TAIL


async def run(n: int, freq: float, repeat: int) -> None:
    now = [clock.monotonic()]
    real_monotonic = clock.monotonic
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "m.db"
        cfg = parse_config(config_text(n, freq, db), "micro.toml")
        store_w, store_r = Store(db), Store(db)
        writer = StoreWriter(store_w)
        dispatcher = EventDispatcher(writer, [], lines=JsonLineSink(io.StringIO()))
        engine = MonitorEngine(cfg, store=store_r, writer=writer, dispatcher=dispatcher)
        clock.monotonic = lambda: now[0]  # type: ignore[assignment]
        try:
            await dispatcher.start()
            await engine.start()
            for rt in engine.runtimes.values():  # resolve, open the endpoint, the templates
                await engine._prepare(rt, now[0] + 3)
            endpoint: SharedUdpEndpoint = next(iter(engine.udp.values()))
            sent: list[tuple[bytes, tuple[str, int]]] = []
            endpoint.sendto = lambda data, addr: sent.append((data, addr))  # type: ignore[method-assign]

            def step() -> int:
                if engine._handle is not None:
                    engine._handle.cancel()
                now[0] += TICK
                engine._due()
                batch = sent[:]
                sent.clear()
                for data, addr in batch:
                    endpoint.datagram_received(answer(data), addr)
                return len(batch)

            steps = round(freq / TICK)
            t0 = time.perf_counter()
            probes = sum(step() for _ in range(steps + round(0.1 * steps)))
            print(f"# warm-up: {probes} probes of {n} targets in {time.perf_counter() - t0:.1f} s")
            per_probe: list[float] = []
            store_share: list[float] = []
            for _ in range(repeat):
                samples: list[bytes] = []
                grab = endpoint.sendto

                def keep(
                    data: bytes, addr: tuple[str, int], samples: list[bytes] = samples
                ) -> None:
                    sent.append((data, addr))
                    samples.append(data)

                endpoint.sendto = keep  # type: ignore[method-assign]
                gc.collect(0)
                c0, p0 = time.thread_time(), time.process_time()
                probes = sum(step() for _ in range(steps // 2))
                c1, p1 = time.thread_time(), time.process_time()
                endpoint.sendto = grab  # type: ignore[method-assign]
                a0 = time.thread_time()
                for data in samples:
                    answer(data)
                a1 = time.thread_time()
                main = (c1 - c0 - (a1 - a0)) / probes * 1e6
                per_probe.append(main)
                store_share.append(((p1 - p0) - (c1 - c0)) / probes * 1e6)
                print(
                    f"  {probes} probes: main thread {main:.1f} us/probe (answers made: "
                    f"{(a1 - a0) / probes * 1e6:.1f} us, left out), other threads "
                    f"{store_share[-1]:.1f} us/probe; results {engine.counts}"
                )
            print(
                f"RESULT main_us_per_probe={min(per_probe):.1f} (median "
                f"{statistics.median(per_probe):.1f}) other_threads_us_per_probe="
                f"{statistics.median(store_share):.1f} n={n} freq={freq}"
            )
        finally:
            clock.monotonic = real_monotonic  # type: ignore[assignment]
            await engine.close()
            await dispatcher.close()
            writer.close()
            store_r.close()
            store_w.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--freq", type=float, default=60.0)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(a.n, a.freq, a.repeat))
    else:
        uvloop.run(run(a.n, a.freq, a.repeat))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
