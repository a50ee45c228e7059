"""``sipalive monitor`` as a process against real peers and real faults (issue 3).

Every test starts the installed console script on a config written to its tmp dir
(:mod:`monitorproc`), with real SIPp and Kamailio peers on 127.0.0.1, and looks at the monitor
only from the outside: ``/api/targets``, ``/api/targets/{name}/history``, ``/api/events``,
``/metrics``, its log and its JSON event lines. Timings are short (probes every 0.5 s, a
0.3 s qualify_timeout, T1 50 ms), and every bound asserted is the configured one:
``fail_threshold`` probes of at most ``qualify_frequency`` + ``qualify_timeout`` (the jitter only
shortens the interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from monitorproc import monitor
from procs import sipalive
from realpeers import (
    Kamailio,
    PeerStartError,
    SippTransport,
    SippUas,
    free_port,
    kamailio_on_free_port,
    require,
    sipp_uas_on_free_port,
)

FREQUENCY = 0.5
TIMEOUT = 0.3
JITTER = 1.0  # the scheduler puts each next probe frequency * [0.9, 1.0] after the last one
# Polling the API, a process's start and exit: on top of a bound the monitor must keep.
SLACK = 0.5

DEFAULTS = f"""
[defaults]
qualify_frequency = {FREQUENCY}
qualify_timeout = {TIMEOUT}
unreachable_frequency = {FREQUENCY}
t1 = 0.05
"""


def detection_bound(probes: int) -> float:
    """The longest ``probes`` consecutive probes may take, from the fault to the verdict."""
    return probes * (FREQUENCY * JITTER + TIMEOUT)


def target(name: str, uri: str, **settings: object) -> str:
    lines = ["[[targets]]", f"name = {json.dumps(name)}", f"uri = {json.dumps(uri)}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def sip_peer_up(metrics: str) -> dict[str, int]:
    return {
        m["name"]: int(m["value"])
        for m in re.finditer(
            r'^sip_peer_up\{target="(?P<name>[^"]+)"\} (?P<value>\S+)$', metrics, re.M
        )
    }


def sip_peer_rtt_last(metrics: str) -> dict[str, float]:
    return {
        m["name"]: float(m["value"])
        for m in re.finditer(
            r'^sip_peer_rtt_seconds\{target="(?P<name>[^"]+)",kind="last"\} (?P<value>\S+)$',
            metrics,
            re.M,
        )
    }


def transitions(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(h["from"], h["to"]) for h in history]


def restart_sipp(
    stack: contextlib.ExitStack, old: SippUas, log_dir: Path, **kwargs: Any
) -> SippUas:
    """SIPp again on the port ``old`` had, as an operator restarts a peer (bounded retries
    while the kernel still holds the port)."""
    attempts = 20
    for attempt in range(1, attempts + 1):
        try:
            return stack.enter_context(
                SippUas(old.port, old.transport, log_dir=log_dir / f"restart-{attempt}", **kwargs)
            )
        except PeerStartError as exc:
            if not exc.port_in_use or attempt == attempts:
                raise
            time.sleep(0.1)
    raise AssertionError("not reached")


# --- 1. states and RTTs of SIPp (UDP, TCP), Kamailio (UDP, TCP, TLS) and a silent SIPp --------


@pytest.mark.realpeer
def test_states_rtts_and_metrics_of_real_peers(kamailio: Kamailio, tmp_path: Path) -> None:
    require("sipp")
    with contextlib.ExitStack() as stack:
        udp = stack.enter_context(sipp_uas_on_free_port("udp", log_dir=tmp_path / "udp"))
        tcp = stack.enter_context(sipp_uas_on_free_port("tcp", log_dir=tmp_path / "tcp"))
        silent = stack.enter_context(
            sipp_uas_on_free_port("udp", mode="silent", log_dir=tmp_path / "silent")
        )
        kam = f"127.0.0.1:{kamailio.port}"
        body = DEFAULTS + "".join(
            [
                target("sipp-udp", udp.uri),
                target("sipp-tcp", tcp.uri),
                target("kam-udp", f"sip:ping@{kam}", transport="udp"),
                target("kam-tcp", f"sip:ping@{kam};transport=tcp"),
                target(
                    "kam-tls",
                    f"sip:ping@127.0.0.1:{kamailio.tls_port};transport=tls",
                    tls_ca=str(kamailio.cert_path),
                ),
                target("silent", silent.uri),
            ]
        )
        live = ["sipp-udp", "sipp-tcp", "kam-udp", "kam-tcp", "kam-tls"]
        transport = dict(zip(live, ["udp", "tcp", "udp", "tcp", "tls"], strict=True))
        with monitor(tmp_path / "mon", body) as mon:
            want = {**dict.fromkeys(live, "reachable"), "silent": "unreachable"}
            mon.wait_states(want, FREQUENCY + detection_bound(1) + SLACK)
            # every live target answered at least twice: RTTs are from a kept flow as well
            got = mon.wait_targets(
                "two probes each",
                lambda t: (
                    all(t[n]["successes"] >= 2 for n in live) and t["silent"]["timeouts"] >= 2
                ),
                2 * detection_bound(1) + SLACK,
            )
            metrics = mon.metrics()
            histories = {name: mon.history(name) for name in want}
            assert silent.received(), "the silent SIPp never saw an OPTIONS"
            assert udp.received()
            assert tcp.received()

    for name in live:
        t = got[name]
        assert t["state"] == "reachable", t
        assert t["transport"] == transport[name], t
        assert t["last_status"] == 200, t
        assert 0 < t["rtt_s"] < TIMEOUT, t
        assert 0 < t["rtt_min_s"] <= t["rtt_s"] <= t["rtt_max_s"], t
        assert t["failures"] == 0, t
        assert histories[name] == [
            {**histories[name][0], "from": "unknown", "to": "reachable", "cause": "code 200"}
        ]
        assert histories[name][0]["rtt_s"] > 0
    s = got["silent"]
    assert (s["state"], s["rtt_s"], s["last_status"], s["successes"]) == (
        "unreachable",
        None,
        408,
        0,
    ), s
    assert [(h["from"], h["to"], h["cause"], h["rtt_s"]) for h in histories["silent"]] == [
        ("unknown", "unreachable", "timeout", None)
    ]
    assert sip_peer_up(metrics) == {**dict.fromkeys(live, 1), "silent": 0}
    rtt = sip_peer_rtt_last(metrics)
    assert set(rtt) == set(live), "no RTT for the silent peer"
    assert all(0 < rtt[name] < TIMEOUT for name in live), rtt


# --- 2. a peer killed, then restarted on its port -------------------------------------------


@pytest.mark.realpeer
def test_killed_peer_goes_unreachable_and_back_within_bounds(tmp_path: Path) -> None:
    require("sipp")
    fail, recover = 2, 2
    hysteresis = {"fail_threshold": fail, "recover_threshold": recover}
    names: tuple[SippTransport, ...] = ("udp", "tcp")
    with contextlib.ExitStack() as peers:
        sipp = {
            name: peers.enter_context(sipp_uas_on_free_port(name, log_dir=tmp_path / name))
            for name in names
        }
        body = DEFAULTS + "".join(target(name, sipp[name].uri, **hysteresis) for name in names)
        with monitor(tmp_path / "mon", body) as mon:
            mon.wait_states(
                dict.fromkeys(names, "reachable"), FREQUENCY + detection_bound(1) + SLACK
            )
            peers.close()  # both SIPp are gone from here on
            dead_at = time.time()
            mon.wait_states(dict.fromkeys(names, "unreachable"), detection_bound(fail) + SLACK)
            for name in names:
                restart_sipp(peers, sipp[name], tmp_path / name)
            alive_at = time.time()
            mon.wait_states(dict.fromkeys(names, "reachable"), detection_bound(recover) + SLACK)
            histories = {name: mon.wait_history(name, 3) for name in names}
            final = mon.targets()

    for name in names:
        h = histories[name]
        assert transitions(h) == [
            ("unknown", "reachable"),
            ("reachable", "unreachable"),
            ("unreachable", "reachable"),
        ], h
        assert h[0]["cause"] == "code 200", h[0]
        assert h[0]["rtt_s"] > 0, h[0]
        # a dead UDP port answers with ICMP, a dead TCP peer refuses the connection; a probe
        # that SIPp received just before it died times out instead
        assert h[1]["cause"] in ("transport-error", "timeout"), h[1]
        assert h[1]["rtt_s"] is None, h[1]
        assert h[2]["cause"] == "recovered", h[2]
        assert h[2]["rtt_s"] > 0, h[2]
        detected = epoch(h[1]["at"]) - dead_at
        recovered = epoch(h[2]["at"]) - alive_at
        assert detected <= detection_bound(fail), (name, detected)
        assert recovered <= detection_bound(recover), (name, recovered)
        assert final[name]["transport"] == name
        assert final[name]["failures"] >= fail


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- 3. a peer answering 503: alive for Asterisk, not with qualify_2xx_only ----------------


@pytest.mark.realpeer
def test_503_is_alive_unless_qualify_2xx_only(tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port(
        "udp", code=503, reason="Service Unavailable", log_dir=tmp_path / "sipp"
    ) as uas:
        body = DEFAULTS + target("strict", uas.uri, qualify_2xx_only=True)
        body += target("any-answer", uas.uri)
        with monitor(tmp_path / "mon", body) as mon:
            want = {"strict": "unreachable", "any-answer": "reachable"}
            mon.wait_states(want, FREQUENCY + detection_bound(1) + SLACK)
            got = mon.wait_targets(
                "three probes each",
                lambda t: min(t[n]["probes"] for n in want) >= 3,
                3 * detection_bound(1) + SLACK,
            )
            histories = {name: mon.history(name) for name in want}
            up = sip_peer_up(mon.metrics())

    strict, lenient = got["strict"], got["any-answer"]
    assert (strict["state"], strict["last_status"], strict["successes"]) == ("unreachable", 503, 0)
    assert strict["failures"] == strict["probes"] >= 3
    assert strict["timeouts"] == strict["transport_errors"] == 0
    assert (lenient["state"], lenient["last_status"], lenient["failures"]) == ("reachable", 503, 0)
    assert lenient["rtt_s"] > 0
    assert [(h["from"], h["to"], h["cause"]) for h in histories["strict"]] == [
        ("unknown", "unreachable", "code 503")
    ]
    assert [(h["from"], h["to"], h["cause"]) for h in histories["any-answer"]] == [
        ("unknown", "reachable", "code 503")
    ]
    assert up == {"strict": 0, "any-answer": 1}


@pytest.mark.realpeer
def test_digest_challenged_options_are_answered_with_credentials(tmp_path: Path) -> None:
    """Kamailio challenges OPTIONS to user "auth" (401, digest): a target with the right
    credentials answers the challenge within its qualify_timeout and is reachable (UDP and
    TCP); wrong or no credentials end on the 401, which qualify_2xx_only counts as down."""
    require("kamailio")
    with kamailio_on_free_port(auth=True, password="s3cret", run_dir=tmp_path / "kam") as kam:
        uri = f"sip:auth@127.0.0.1:{kam.port}"
        strict = {"qualify_2xx_only": True, "qualify_timeout": 1.0}
        body = DEFAULTS + target("good", uri, auth_username="u", auth_password="s3cret", **strict)
        body += target(
            "good-tcp", uri + ";transport=tcp", auth_username="u", auth_password="s3cret", **strict
        )
        body += target("wrong", uri, auth_username="u", auth_password="nope", **strict)
        body += target("none", uri, **strict)
        with monitor(tmp_path / "mon", body) as mon:
            want = {
                "good": "reachable",
                "good-tcp": "reachable",
                "wrong": "unreachable",
                "none": "unreachable",
            }
            mon.wait_states(want, FREQUENCY + 2 * detection_bound(1) + SLACK)
            got = mon.wait_targets(
                "three probes each",
                lambda t: min(t[n]["probes"] for n in want) >= 3,
                3 * (FREQUENCY + 1.0) + SLACK,
            )
            histories = {name: mon.history(name) for name in want}
    for name in ("good", "good-tcp"):
        assert (got[name]["last_status"], got[name]["failures"]) == (200, 0), got[name]
        assert transitions(histories[name]) == [("unknown", "reachable")]
    for name in ("wrong", "none"):
        assert (got[name]["last_status"], got[name]["successes"]) == (401, 0), got[name]
        assert [h["cause"] for h in histories[name]] == ["code 401"]


# --- 4. SIGKILL and restart on the same database --------------------------------------------


@pytest.mark.realpeer
def test_sigkill_and_restart_keeps_state_and_history(tmp_path: Path) -> None:
    require("sipp")
    closed = free_port("udp")  # nothing listens there: ICMP port unreachable
    with contextlib.ExitStack() as peers:
        uas = peers.enter_context(sipp_uas_on_free_port("udp", log_dir=tmp_path / "sipp"))
        body = DEFAULTS + target("alive", uas.uri)
        body += target("dead", f"sip:ping@127.0.0.1:{closed}")
        body += target("off", uas.uri, qualify_frequency=0)
        with monitor(tmp_path / "mon", body) as mon:
            want = {"alive": "reachable", "dead": "unreachable", "off": "nonqualified"}
            mon.wait_states(want, FREQUENCY + detection_bound(1) + SLACK)
            # one more round trip of the live peer: down and back up
            peers.close()
            mon.wait_states({"alive": "unreachable"}, detection_bound(1) + SLACK)
            uas = restart_sipp(peers, uas, tmp_path / "sipp")
            mon.wait_states({"alive": "reachable"}, detection_bound(1) + SLACK)
            mon.wait_history("alive", 3)  # committed: the history is read from the database
            # the target rows are committed in batches every 0.1 s (StoreWriter.flush_interval)
            time.sleep(0.3)
            before = mon.targets()
            history_before = {name: mon.history(name) for name in want}
            events_before = mon.api("/api/events?limit=1000")
            assert mon.kill() == -9

            mon.start()
            first = mon.targets()
            restored = {name: first[name]["state"] for name in want}
            restored_since = {name: first[name]["since"] for name in want}
            # new transitions after the restart: the live peer goes away again
            peers.close()
            mon.wait_states({"alive": "unreachable"}, detection_bound(1) + SLACK)
            mon.wait_history("alive", 4)
            history_after = {name: mon.history(name) for name in want}
            events_after = mon.api("/api/events?limit=1000")
            lines = mon.events()
            assert mon.stop() == 0

    assert restored == want, "state after a SIGKILL and restart, before any new verdict"
    assert restored_since == {name: before[name]["since"] for name in want}
    for name in want:
        assert history_after[name][: len(history_before[name])] == history_before[name], name
    assert history_after["alive"][3:] == [
        {**history_after["alive"][3], "from": "reachable", "to": "unreachable"}
    ]
    assert history_after["dead"] == history_before["dead"]
    assert history_after["off"] == history_before["off"] == []
    assert not any(h["from"] == "unknown" for h in history_after["alive"][1:]), history_after
    ids = [e["id"] for e in events_after]
    assert len(ids) == len(set(ids)) == 5
    assert ids == sorted(ids)
    assert events_after[: len(events_before)] == events_before
    uuids = [line["event_id"] for line in lines]
    assert len(uuids) == len(set(uuids)) == 5, lines


# --- 5. webhook: every event, once by id, through a receiver outage and a SIGKILL -----------


class Receiver:
    """An aiohttp webhook receiver on 127.0.0.1 in a thread: 503 while ``down``, then 200."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.down = True
        self.refused = 0
        self.accepted: list[dict[str, Any]] = []
        self.header_ids: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-receiver", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> Counter[str]:
        with self._lock:
            return Counter(event["event_id"] for event in self.accepted)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            if self.down:
                self.refused += 1
                return web.Response(status=503, text="down for maintenance\n")
            self.accepted.append(json.loads(body))
            self.header_ids.append(request.headers.get("X-Sipalive-Event-Id", ""))
        return web.Response(text="ok\n")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __exit__, never lost in the thread
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> Receiver:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            self.__exit__()
            raise RuntimeError(f"webhook receiver did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("webhook receiver thread did not stop")


@pytest.mark.realpeer
def test_webhook_gets_every_event_once_by_id_across_outage_and_sigkill(
    tmp_path: Path, record_property: Any
) -> None:
    require("sipp")
    with contextlib.ExitStack() as peers, Receiver(free_port("tcp")) as receiver:
        uas = peers.enter_context(sipp_uas_on_free_port("udp", log_dir=tmp_path / "sipp"))
        body = (
            DEFAULTS + target("flip", uas.uri) + f"[[webhooks]]\nurl = {json.dumps(receiver.url)}\n"
        )
        with monitor(tmp_path / "mon", body) as mon:
            mon.wait_states({"flip": "reachable"}, FREQUENCY + detection_bound(1) + SLACK)
            peers.close()
            mon.wait_states({"flip": "unreachable"}, detection_bound(1) + SLACK)
            restart_sipp(peers, uas, tmp_path / "sipp")
            mon.wait_states({"flip": "reachable"}, detection_bound(1) + SLACK)
            mon.wait_for("a refused delivery", lambda: receiver.refused or None, 3.0)
            assert mon.kill() == -9
            assert not receiver.accepted, "the receiver is still down: nothing was delivered"

            refused = receiver.refused
            mon.start()
            # each event keeps its back-off in the outbox (1 s, 2 s, 4 s, -20% jitter), so the
            # restarted monitor tries again within a few seconds, to a receiver still down
            mon.wait_for(
                "a refused delivery after the restart",
                lambda: True if receiver.refused > refused else None,
                10.0,
            )
            receiver.down = False
            expected = [line["event_id"] for line in mon.events()]
            assert len(expected) == 3, mon.events()
            mon.wait_for(
                "every event delivered",
                lambda: True if set(expected) <= set(receiver.ids()) else None,
                15.0,
                step=0.1,
            )
            # a second copy, if any, would come from an unmarked row: give it one more look
            time.sleep(1.0)
            history = mon.history("flip")
            lines = {line["event_id"]: line for line in mon.events()}
            assert mon.stop() == 0

    counts = receiver.ids()
    duplicates = {event_id: n for event_id, n in counts.items() if n > 1}
    record_property("webhook_duplicates", json.dumps(duplicates))
    print(
        f"webhook: {receiver.refused} refused, {len(receiver.accepted)} accepted, "
        f"duplicates by id: {duplicates or 'none'}"
    )
    assert set(counts) == set(expected), "every event id, and nothing else"
    assert sorted(receiver.header_ids) == sorted(e["event_id"] for e in receiver.accepted)
    for event in receiver.accepted:
        assert event == lines[event["event_id"]], "the body is the event's JSON line"
    assert [(lines[i]["from"], lines[i]["to"]) for i in expected] == transitions(history)
    assert not duplicates, f"delivered more than once: {duplicates}"


@pytest.mark.realpeer
def test_webhook_sink_back_off_grows_per_round_not_per_event(tmp_path: Path) -> None:
    require("sipp")
    closed = free_port("udp")
    names = ["c1", "c2", "c3", "c4"]  # four events within the first 0.5 s
    with Receiver(free_port("tcp")) as receiver:
        body = DEFAULTS + "".join(target(n, f"sip:ping@127.0.0.1:{closed}") for n in names)
        body += f"[[webhooks]]\nurl = {json.dumps(receiver.url)}\n"
        with monitor(tmp_path / "mon", body) as mon:
            mon.wait_history(names[-1], 1)
            # the first event alone, then (1 s later, the sink's first back-off) the other three
            mon.wait_for("two refused rounds", lambda: True if receiver.refused >= 4 else None, 4.0)
            time.sleep(0.2)  # the rest of that round's concurrent attempts
            receiver.down = False
            expected = {line["event_id"] for line in mon.events()}
            # a sink down for two rounds is held Backoff.delay(2) <= 2 s, the events' own
            # back-off is at most delay(2) too: the next round delivers them all
            mon.wait_for(
                "every event delivered after the sink's back-off",
                lambda: True if expected <= set(receiver.ids()) else None,
                3.5,
                step=0.1,
            )


# --- 6. SIGHUP reload -----------------------------------------------------------------------


@pytest.mark.realpeer
def test_sighup_adds_and_updates_targets_and_refuses_a_broken_file(tmp_path: Path) -> None:
    require("sipp")
    with contextlib.ExitStack() as peers:
        udp = peers.enter_context(sipp_uas_on_free_port("udp", log_dir=tmp_path / "udp"))
        tcp = peers.enter_context(sipp_uas_on_free_port("tcp", log_dir=tmp_path / "tcp"))
        closed = free_port("udp")
        kept = target("kept", udp.uri) + target("down", f"sip:ping@127.0.0.1:{closed}")
        with monitor(tmp_path / "mon", DEFAULTS + kept + target("tuned", tcp.uri)) as mon:
            want = {"kept": "reachable", "down": "unreachable", "tuned": "reachable"}
            mon.wait_states(want, FREQUENCY + detection_bound(1) + SLACK)
            before = mon.targets()
            histories = {name: mon.history(name) for name in want}

            tuned = target("tuned", tcp.uri, qualify_frequency=0.25, qualify_2xx_only=True)
            mon.write_config(DEFAULTS + kept + tuned + target("added", udp.uri))
            mon.reload()
            want["added"] = "reachable"
            after = mon.wait_targets(
                "the added target probed",
                lambda t: "added" in t and t["added"]["state"] == "reachable",
                FREQUENCY + detection_bound(1) + SLACK,
            )
            assert "configuration reloaded: 4 targets" in mon.log()
            assert after["tuned"]["qualify_frequency"] == 0.25
            probes = {name: t["probes"] for name, t in after.items()}
            # the tuned target now probes about twice as often as the kept one
            time.sleep(2.0)
            later = mon.targets()
            rate = {name: later[name]["probes"] - probes[name] for name in want}
            assert rate["tuned"] >= 6, rate
            assert rate["kept"] <= 5, rate

            broken = DEFAULTS + kept + target("tuned", tcp.uri, qualify_timeout="soon")
            mon.write_config(broken)
            mon.reload()
            refused = f"reload refused: {mon.config_path}: targets[2].qualify_timeout: "
            line = mon.wait_for(
                "the reload refused in the log",
                lambda: next((ln for ln in mon.log().splitlines() if refused in ln), None),
                3.0,
            )
            still = mon.targets()
            time.sleep(2 * FREQUENCY * JITTER)
            last = mon.targets()
            final_histories = {name: mon.history(name) for name in want}
            assert mon.running

    assert "expected a duration" in line, line
    assert set(still) == set(want), "the old config keeps running"
    assert still["tuned"]["qualify_frequency"] == 0.25
    for name, state in want.items():
        assert last[name]["probes"] > still[name]["probes"], f"{name} is still probed"
        assert last[name]["state"] == state, last[name]
    for name in ("kept", "down", "tuned"):
        # kept state and history: the reload made no transition and did not restart them
        assert before[name]["since"] == last[name]["since"], name
        assert final_histories[name] == histories[name], name
        assert last[name]["probes"] > before[name]["probes"]
    assert transitions(final_histories["added"]) == [("unknown", "reachable")]


# --- 7. a bad config file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            '[[targets]]\nname = "a"\nuri = "sip:a@127.0.0.1"\nqualify_timeout = "soon"\n',
            "targets[0].qualify_timeout",
            "expected a duration",
        ),
        (
            "[defaults]\nqualify_freqency = 5\n",
            "defaults.qualify_freqency",
            "did you mean 'qualify_frequency'",
        ),
        (
            '[[targets]]\nname = "a"\nuri = "sip:a@127.0.0.1"\n'
            '[[targets]]\nname = "b"\nuri = "http://example.com/"\n',
            "targets[1].uri",
            "unsupported URI scheme 'http'",
        ),
        ('[http]\nlisten = "127.0.0.1"\n', "http.listen", "missing port"),
        ("[[targets]\n", "line 3, column 10", "TOML syntax error"),
    ],
    ids=["bad-duration", "misspelt-key", "not-a-sip-uri", "no-port", "toml-syntax"],
)
def test_bad_config_exits_non_zero_naming_file_key_and_reason(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[storage]\npath = {json.dumps(str(tmp_path / 'm.db'))}\n" + text)
    done = sipalive("monitor", "-c", str(bad), timeout=15)
    assert done.returncode != 0, done
    assert f"{bad}: {where}" in done.stderr, done.stderr
    assert reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "m.db").exists(), "a refused config opens no database"


# --- 6b. SIGHUP: bugs found in the engine's reload ------------------------------------------


@pytest.mark.realpeer
def test_sighup_qualifies_a_nonqualified_target(tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port("udp", log_dir=tmp_path / "sipp") as uas:
        body = DEFAULTS + target("a", uas.uri) + target("off", uas.uri, qualify_frequency=0)
        with monitor(tmp_path / "mon", body) as mon:
            mon.wait_states({"a": "reachable", "off": "nonqualified"}, 2.0)
            mon.write_config(
                DEFAULTS + target("a", uas.uri) + target("off", uas.uri) + target("b", uas.uri)
            )
            mon.reload()
            try:
                mon.wait_states(
                    {"a": "reachable", "off": "reachable", "b": "reachable"},
                    FREQUENCY + detection_bound(1) + SLACK,
                )
            finally:
                log = mon.log()
    assert "Traceback" not in log, log
    assert "configuration reloaded: 3 targets" in log


@pytest.mark.realpeer
def test_sighup_removes_a_nonqualified_target(tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port("udp", log_dir=tmp_path / "sipp") as uas:
        body = DEFAULTS + target("off", uas.uri, qualify_frequency=0) + target("a", uas.uri)
        with monitor(tmp_path / "mon", body) as mon:
            mon.wait_states({"a": "reachable", "off": "nonqualified"}, 2.0)
            mon.write_config(DEFAULTS + target("a", uas.uri) + target("b", uas.uri))
            mon.reload()
            try:
                mon.wait_states(
                    {"a": "reachable", "b": "reachable"}, FREQUENCY + detection_bound(1) + SLACK
                )
            finally:
                log = mon.log()
    assert "Traceback" not in log, log
    assert "configuration reloaded: 2 targets" in log


@pytest.mark.realpeer
def test_sighup_while_a_probe_is_in_flight_keeps_the_target_probed(tmp_path: Path) -> None:
    require("sipp")
    with sipp_uas_on_free_port("udp", mode="silent", log_dir=tmp_path / "sipp") as silent:
        # a probe is in flight 1.0 s out of every 1.1 s
        slow = {"qualify_frequency": 0.1, "unreachable_frequency": 0.1, "qualify_timeout": 1.0}
        with monitor(tmp_path / "mon", DEFAULTS + target("slow", silent.uri, **slow)) as mon:
            first = mon.wait_targets("a first probe", lambda t: t["slow"]["probes"] >= 1, 3.0)
            # 0.3 s after a probe ended the next one (0.09-0.11 s after it) is in flight
            time.sleep(0.3)
            mon.write_config(DEFAULTS + target("slow", silent.uri, **{**slow, "t1": 0.1}))
            mon.reload()
            mon.wait_targets(
                "two more probes after the reload",
                lambda t: t["slow"]["probes"] >= first["slow"]["probes"] + 3,
                4.0,
            )


@pytest.mark.realpeer
def test_sighup_new_user_agent_is_used_by_the_next_probes(tmp_path: Path) -> None:
    require("sipp")
    with (
        sipp_uas_on_free_port("udp", log_dir=tmp_path / "sipp") as uas,
        monitor(tmp_path / "mon", DEFAULTS + target("a", uas.uri, user_agent="ua-one")) as mon,
    ):
        mon.wait_states({"a": "reachable"}, 2.0)
        mon.write_config(DEFAULTS + target("a", uas.uri, user_agent="ua-two"))
        mon.reload()
        mon.wait_for(
            "an OPTIONS with the reloaded User-Agent",
            lambda: True if any("User-Agent: ua-two" in m for m in uas.received()) else None,
            FREQUENCY * JITTER * 3 + SLACK,
        )
