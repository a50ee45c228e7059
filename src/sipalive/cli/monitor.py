"""``sipalive monitor -c FILE``: the qualify daemon with its web page, metrics and events.

SIGHUP reloads the configuration (a bad file is reported and the running one kept); SIGTERM
and SIGINT stop it after committing state. Transitions are logged as JSON lines on stdout.

With a ``[registrar]`` table it is a registrar too, as ``sipalive respond --registrar`` is:
its listeners take REGISTERs (and answer OPTIONS, CRLF pings and STUN like ``respond``), the
contacts are qualified through their flows and shown by the HTTP app. It starts before the
targets and stops after the web server; SIGHUP does not change it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sipalive.cli.common import UsageError
from sipalive.config import MonitorConfig, RegistrarSection, load_config
from sipalive.errors import ConfigError, SipaliveError

if TYPE_CHECKING:
    from sipalive.events import EventDispatcher
    from sipalive.qualify import Transition


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


def _contact_event(dispatcher: EventDispatcher, aor: str, contact: str, t: Transition) -> None:
    """A registered contact's qualify transition, as an event of type "contact" (AOR, contact)."""
    from sipalive.events import Event
    from sipalive.store.sqlite import TransitionRow

    row = TransitionRow(aor, t.at, t.from_state.value, t.to_state.value, t.cause, t.rtt)
    dispatcher.publish([Event.from_transition(row, contact, kind="contact")])


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
    registrar: RegistrarRole | None = None
    try:
        if config.registrar is not None:
            registrar = RegistrarRole(config.registrar)
            await registrar.start()
            engine.registrar = registrar.service
            registrar.service.on_transition = partial(_contact_event, dispatcher)
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
                new = load_config(config.source)
                engine.reload(new)
                if new.registrar != config.registrar:
                    logging.getLogger("sipalive.monitor").warning(
                        "[registrar] changed: the registrar keeps its settings until a restart"
                    )
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
        if registrar is not None:
            await registrar.close()
        await engine.close()
        await dispatcher.close()
        writer.close()
        store_r.close()
        store_w.close()
    return 0


class RegistrarRole:
    """The registrar of ``[registrar]``: its service, and the listeners it takes REGISTERs
    from. Construction loads the users file and opens the binding database (ConfigError)."""

    def __init__(self, section: RegistrarSection) -> None:
        from sipalive.io.registrar import build_service

        self.section = section
        self.log = logging.getLogger("sipalive.monitor")
        self.service = build_service(
            users_path=section.users,
            realm=section.realm,
            algorithms=section.digest_algorithms,
            min_expires=section.min_expires,
            max_expires=section.max_expires,
            flow_timer=section.flow_timer,
            flow_timer_always=section.flow_timer_always,
            qualify_frequency=section.qualify_frequency,
            qualify_timeout=section.qualify_timeout,
            remove_unavailable=section.remove_unavailable,
            db_path=section.db,
            log=self.log.info,
            warn=self.log.warning,
        )
        self._opened: list[asyncio.BaseTransport | asyncio.Server] = []
        self._sweeper: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Open the listeners (an OSError names the address) and start qualifying."""
        from sipalive.io.limits import Admission
        from sipalive.io.server import Listener, ListenSpec, start_listeners, sweep_idle
        from sipalive.sip.responder import ResponderConfig, StatelessResponder

        responder = StatelessResponder(ResponderConfig(tag_key=os.urandom(16)))
        listener = Listener(responder, Admission(None, None), log=self.log.info)
        self.service.attach(listener)
        for address in self.section.listen:
            spec = ListenSpec(address.transport, address.host, address.port)
            try:
                self._opened += await start_listeners(listener, [spec])
            except OSError as exc:
                reason = f"registrar cannot listen on {spec}: {exc.strerror or exc}"
                raise OSError(exc.errno, reason) from exc
        self.service.listening(self._opened)
        self._sweeper = asyncio.ensure_future(sweep_idle(listener))
        self.log.info(
            "registrar listening on %s (database %s, %d bindings)",
            ", ".join(map(str, self.section.listen)),
            self.section.db,
            len(self.service.registrar),
        )

    async def close(self) -> None:
        """Stop qualifying, write the bindings, close the listeners."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.service.close()
        for item in self._opened:
            item.close()


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
        registrar = config.registrar
        if args.check_config and registrar is not None:
            from sipalive.io.registrar import load_users

            load_users(registrar.users, logging.getLogger("sipalive.monitor").warning)
    except ConfigError as exc:
        sys.stderr.write(f"sipalive monitor: {exc}\n")
        return 1
    if args.check_config:
        where = f", a registrar on {', '.join(map(str, registrar.listen))}" if registrar else ""
        sys.stdout.write(f"{args.config}: OK, {len(config.targets)} targets{where}\n")
        return 0
    from sipalive.cli.aio import run_loop

    try:
        return run_loop(_run(config, args))
    except ConfigError as exc:
        sys.stderr.write(f"sipalive monitor: {exc}\n")
        return 1
    except UsageError as exc:
        parser.error(str(exc))
    return 2
