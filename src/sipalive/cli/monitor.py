"""``sipalive monitor -c FILE``: the qualify daemon with its web page, metrics and events.

SIGHUP reloads the configuration (a bad file is reported and the running one kept); SIGTERM
and SIGINT stop it after committing state. Transitions are logged as JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from sipalive.cli.common import UsageError
from sipalive.config import MonitorConfig, load_config
from sipalive.errors import ConfigError, SipaliveError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sipalive monitor",
        description="Continuously qualify SIP peers; web page, /metrics, JSON API, events.",
    )
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="monitor TOML file")
    p.add_argument("--max-in-flight", type=int, default=2000, help="probes in flight at most")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--check-config", action="store_true", help="validate the file and exit")
    return p


async def _run(config: MonitorConfig, args: argparse.Namespace) -> int:
    from aiohttp import web

    from sipalive.events import EventDispatcher, ExecSink, JsonLineSink, Sink, WebhookSink
    from sipalive.http.app import make_app
    from sipalive.monitor.engine import MonitorEngine
    from sipalive.store.sqlite import Store, StoreWriter

    store_w = Store(config.storage.path)
    store_r = Store(config.storage.path)
    writer = StoreWriter(store_w)
    sinks: list[Sink] = [
        WebhookSink(h.url, h.secret.reveal() if h.secret else None) for h in config.webhooks
    ]
    sinks += [ExecSink(list(h.command)) for h in config.exec_hooks]
    dispatcher = EventDispatcher(writer, sinks, lines=JsonLineSink(sys.stdout))
    engine = MonitorEngine(
        config,
        store=store_r,
        writer=writer,
        dispatcher=dispatcher,
        max_in_flight=args.max_in_flight,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner: web.AppRunner | None = None
    try:
        await dispatcher.start()
        await engine.start()
        token = config.http.token.reveal() if config.http.token else None
        runner = web.AppRunner(make_app(engine, token=token), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.http.host, config.http.port)
        await site.start()
        logging.getLogger("sipalive.monitor").info(
            "web page on http://%s (%d targets, database %s)",
            config.http.listen,
            len(config.targets),
            config.storage.path,
        )

        def reload() -> None:
            try:
                engine.reload(load_config(config.source))
            except ConfigError as exc:
                logging.getLogger("sipalive.monitor").error("reload refused: %s", exc)
            except SipaliveError as exc:
                logging.getLogger("sipalive.monitor").error("reload failed: %s", exc)

        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
    except OSError as exc:
        sys.stderr.write(f"sipalive monitor: {exc.strerror or exc}\n")
        return 1
    finally:
        if runner is not None:
            await runner.cleanup()
        await engine.close()
        await dispatcher.close()
        writer.close()
        store_r.close()
        store_w.close()
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not Path(args.config).exists():
        parser.error(f"{args.config}: no such file")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"sipalive monitor: {exc}\n")
        return 1
    if args.check_config:
        sys.stdout.write(f"{args.config}: OK, {len(config.targets)} targets\n")
        return 0
    from sipalive.cli.ping import run_loop

    try:
        return run_loop(_run(config, args))
    except ConfigError as exc:
        sys.stderr.write(f"sipalive monitor: {exc}\n")
        return 1
    except UsageError as exc:
        parser.error(str(exc))
    return 2
