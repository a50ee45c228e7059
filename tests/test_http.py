"""The HTTP layer over a fake MonitorView: Contract shapes, metrics, probe, auth, pages, speed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fakeview import FakeView, make_target
from sipalive.http import metrics
from sipalive.http.app import make_app, probe_timeout
from sipalive.http.page import PAGE_SIZE
from sipalive.http.view import STATES, ProbeReport, TargetView

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ODD = 'we"ird\\name'  # a quote and a backslash, for escaping


@contextlib.asynccontextmanager
async def serve(view: FakeView, token: str | None = None) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(view, token=token))) as client:
        yield client


def run(view: FakeView, test: Callable[[TestClient[Any, Any]], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serve(view, **kw) as client:
            await test(client)

    asyncio.run(main())


def small_view() -> FakeView:
    view = FakeView.many(40)
    view.add(make_target(ODD, "unreachable", group="odd/group"))
    view.add(make_target("edge/proxy 1", "lagged", group="edge"))
    view.transition("peer-000003", "lagged", "rtt", 0.4)
    view.transition("peer-000003", "unreachable", "timeout")
    view.transition("peer-000005", "unreachable", "transport error")
    return view


# A tiny parser for the text exposition format 0.0.4.

Sample = tuple[str, dict[str, str], float]
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _labels(line: str, i: int) -> tuple[dict[str, str], int]:
    labels: dict[str, str] = {}
    assert line[i] == "{"
    i += 1
    while line[i] != "}":
        m = _NAME.match(line, i)
        assert m, line
        assert line[m.end() : m.end() + 2] == '="', line
        i, value = m.end() + 2, []
        while line[i] != '"':
            if line[i] == "\\":
                value.append({"\\": "\\", '"': '"', "n": "\n"}[line[i + 1]])
                i += 2
            else:
                value.append(line[i])
                i += 1
        labels[m.group()] = "".join(value)
        i += 1
        if line[i] == ",":
            i += 1
    return labels, i + 1


def parse_exposition(text: str) -> tuple[dict[str, str], list[Sample]]:
    """(TYPE of each family, samples); asserts that a family's lines are one group.

    Every family here has a TYPE line, and a second TYPE for a name fails: so a sample whose
    name is not the latest TYPE's is outside its family's group.
    """
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: list[Sample] = []
    current = ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"second TYPE for {name}"
            assert kind in ("gauge", "counter"), line
            types[name] = kind
            current = name
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = _NAME.match(line)
        assert m, line
        name, i = m.group(), m.end()
        labels: dict[str, str] = {}
        if line[i] == "{":
            labels, i = _labels(line, i)
        assert line[i] == " ", line
        value = float(line[i + 1 :].replace("+Inf", "inf").replace("-Inf", "-inf"))
        assert name == current, f"{name} outside its group"
        samples.append((name, labels, value))
    return types, samples


def by_target(samples: list[Sample], family: str, key: str | None = None) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for name, labels, value in samples:
        if name == family:
            k = (labels["target"], labels[key]) if key else labels["target"]
            assert k not in out, f"duplicate {family} {k}"
            out[k] = value
    return out


# /metrics


def test_metrics_parse_and_escape_labels() -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert r.headers["Transfer-Encoding"] == "chunked"  # its length is known at its end
        text = await r.text()
        types, samples = parse_exposition(text)
        targets = {t.name: t for t in view.targets()}
        assert types["sip_peer_up"] == "gauge"
        assert types["sip_probes_total"] == "counter"

        up = by_target(samples, "sip_peer_up")
        assert up.keys() == targets.keys()
        assert ODD in up, "label value escaping does not round-trip"
        assert '{target="we\\"ird\\\\name"}' in text
        for name, t in targets.items():
            assert up[name] == (1 if t.state in ("reachable", "lagged") else 0)

        state = by_target(samples, "sip_peer_state", "state")
        assert len(state) == 5 * len(targets)
        for name, t in targets.items():
            assert [state[name, s] for s in STATES] == [float(s == t.state) for s in STATES]

        rtt = by_target(samples, "sip_peer_rtt_seconds", "kind")
        for name, t in targets.items():
            assert rtt.get((name, "last")) == (None if t.rtt_s is None else round(t.rtt_s, 6))
            assert rtt.get((name, "srtt")) == (None if t.srtt_s is None else round(t.srtt_s, 6))

        probes = by_target(samples, "sip_probes_total", "result")
        for name, t in targets.items():
            results = {r: probes[name, r] for r in ("success", "rejected", "timeout")}
            results["transport_error"] = probes[name, "transport_error"]
            assert results["success"] == t.successes
            assert results["timeout"] == t.timeouts
            assert sum(results.values()) == t.successes + t.failures

        values = {(n, tuple(sorted(lb.items()))): v for n, lb, v in samples}
        assert values["sipalive_targets", ()] == len(targets)
        assert values["sipalive_probes_in_flight", ()] == 3
        assert values["sipalive_scheduler_lag_p99_seconds", ()] == 0.0042
        assert values["sipalive_probes_total", (("result", "timeout"),)] == 1
        assert values["sipalive_targets_by_state", (("state", "unreachable"),)] == sum(
            t.state == "unreachable" for t in targets.values()
        )
        for name in ("process_cpu_seconds_total", "process_open_fds", "process_max_fds"):
            assert values[name, ()] >= 0
        assert values["process_resident_memory_bytes", ()] > 1_000_000
        assert abs(values["process_start_time_seconds", ()] - time.time()) < 24 * 3600
        assert ("sipalive_metrics_render_seconds", ()) not in values

        second = await (await client.get("/metrics")).text()
        assert 0 < parse_exposition_value(second, "sipalive_metrics_render_seconds") < 1

        head = await client.head("/metrics")
        assert head.status == 200
        assert await head.read() == b""

    run(view, test)


def parse_exposition_value(text: str, family: str) -> float:
    return next(v for n, _, v in parse_exposition(text)[1] if n == family)


def test_escape_label_and_values() -> None:
    assert metrics.escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert metrics.escape_label("plain") == "plain"
    assert metrics.format_value(float("nan")) == "NaN"
    assert metrics.format_value(float("inf")) == "+Inf"
    assert metrics.format_value(-float("inf")) == "-Inf"
    assert metrics.format_value(3.0) == "3"
    assert metrics.format_value(0.25) == "0.25"
    assert metrics.header("x", "gauge", "a\\b\nc") == "# HELP x a\\\\b\\nc\n# TYPE x gauge\n"


@pytest.fixture(scope="module")
def view_100k() -> FakeView:
    return FakeView.many(100_000)


class StallMeter:
    """The longest gap between the 1 ms ticks of a task that runs beside the code measured,
    and how many times it got to run (a render that never yields lets it run about once)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while not self._done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.ticks += 1
            self.longest, last = max(self.longest, now - last), now

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.005)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        assert self._task is not None
        await self._task


async def _render_with_ticker(view: FakeView) -> tuple[float, StallMeter, list[bytes]]:
    """(render time, the meter that ran beside it, pieces)."""
    async with StallMeter() as meter:
        start = time.perf_counter()
        pieces = [piece async for piece in metrics.render_metrics(view)]
        elapsed = time.perf_counter() - start
    return elapsed, meter, pieces


def test_metrics_100k_targets_render_in_chunks(view_100k: FakeView) -> None:
    """100k targets are rendered in chunks that give the loop back between them.

    Not a timed test (bench/metrics_render.py measures the time and the longest stall): it
    checks the structure, which a machine's speed does not change. A render that held the
    loop would let the ticker run once or twice; chunks of 1000 targets let it run every time.
    """
    elapsed, meter, pieces = asyncio.run(_render_with_ticker(view_100k))
    print(
        f"100k targets: render {elapsed * 1000:.0f} ms, longest stall {meter.longest * 1000:.1f} ms"
    )
    assert meter.ticks >= 10
    body = b"".join(pieces)
    assert body.count(b"\nsip_peer_up{") == 100_000
    assert body.count(b"\nsip_peer_state{") == 500_000


def test_metrics_100k_over_http(view_100k: FakeView) -> None:
    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/metrics")
        body = await r.read()
        assert r.status == 200
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert len(body) > 50_000_000
        assert body.count(b"\nsip_probes_total{") == 400_000

    run(view_100k, test)


def test_pages_and_api_at_100k_targets_do_not_stall_the_loop(view_100k: FakeView) -> None:
    """The status page, the summary and a filtered target list, each walked in chunks."""

    async def test(client: TestClient[Any, Any]) -> None:
        for path in ("/", "/?page=30", "/?q=peer-0999", "/api/summary", "/api/targets?q=-0999"):
            async with StallMeter() as meter:
                r = await client.get(path)
                await r.read()
            assert r.status == 200
            # structural, not timed: a handler walking 100k targets in one go would let the
            # ticker run only a few times; chunked walking lets it run throughout
            assert meter.ticks >= 5, (path, meter.ticks, meter.longest)

    run(view_100k, test)


# /probe


def test_probe_passes_target_module_and_scrape_timeout() -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "5"}
        r = await client.get(
            "/probe", params={"target": "sip:edge@192.0.2.9:5062", "module": "TCP"}, headers=headers
        )
        assert r.status == 200
        types, samples = parse_exposition(await r.text())
        values = {(n, lb.get("phase")): v for n, lb, v in samples}
        assert values["probe_success", None] == 1
        assert values["probe_duration_seconds", None] == 0.0123
        assert values["probe_sip_status_code", None] == 200
        assert values["probe_phase_duration_seconds", "resolve"] == 0.001
        assert values["probe_phase_duration_seconds", "response"] == 0.0093
        assert types["probe_success"] == "gauge"

        await client.get("/probe", params={"target": "sips:example.com"})
        short = {"X-Prometheus-Scrape-Timeout-Seconds": "0.6"}
        await client.get("/probe", params={"target": "sip:a@b", "module": "udp"}, headers=short)
        assert view.probe_calls == [
            ("sip:edge@192.0.2.9:5062", "tcp", 4.5),
            ("sips:example.com", None, 10.0),
            ("sip:a@b", "udp", 0.3),
        ]

        view.probe_report = ProbeReport(False, 2.0, None, "timeout", error="no answer")
        _, samples = parse_exposition(await (await client.get("/probe?target=sip:x")).text())
        values = {(n, lb.get("phase")): v for n, lb, v in samples}
        assert values["probe_success", None] == 0
        assert values["probe_sip_status_code", None] == 0
        assert ("probe_phase_duration_seconds", "resolve") not in values

    run(view, test)


@pytest.mark.parametrize(
    ("query", "headers", "reason"),
    [
        ("", {}, "missing target"),
        ("?target=", {}, "missing target"),
        ("?target=http://example.com/", {}, "bad target"),
        ("?target=sip:", {}, "bad target"),
        ("?target=sip:a@b&module=smtp", {}, "unknown module"),
        ("?target=sip:a@b", {"X-Prometheus-Scrape-Timeout-Seconds": "soon"}, "not a number"),
        ("?target=sip:a@b", {"X-Prometheus-Scrape-Timeout-Seconds": "-1"}, "positive"),
        ("?target=sip:a@b", {"X-Prometheus-Scrape-Timeout-Seconds": "nan"}, "positive"),
    ],
)
def test_probe_rejects_bad_requests(query: str, headers: dict[str, str], reason: str) -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/probe" + query, headers=headers)
        assert r.status == 400
        assert r.content_type == "text/plain"
        assert reason in await r.text()
        assert view.probe_calls == []

    run(view, test)


def test_probe_timeout_arithmetic() -> None:
    assert probe_timeout(None) == 10.0
    assert probe_timeout("15") == 14.5
    assert probe_timeout("1") == 0.5
    assert probe_timeout("0.2") == 0.1


# JSON API


def test_targets_contract_shape() -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/api/targets")
        assert r.status == 200
        assert r.content_type == "application/json"
        items = await r.json()
        assert [i["name"] for i in items] == [t.name for t in view.targets()]
        fields = {f.name for f in dataclasses.fields(TargetView)}
        for item, t in zip(items, view.targets(), strict=True):
            assert set(item) == fields
            assert item["uri"] == t.uri
            assert item["state"] in STATES
            assert item["state"] == t.state
            assert item["rtt_s"] == t.rtt_s
            assert ISO.match(item["since"]), item["since"]
            assert ISO.match(item["last_probe_at"])
            assert item["recent_rtts"] == list(t.recent_rtts)
        odd = next(i for i in items if i["name"] == ODD)
        assert odd["rtt_s"] is None
        assert odd["since"] == "2023-11-14T22:13:13.000Z"

    run(view, test)


def test_targets_filters() -> None:
    view = small_view()

    async def names(client: TestClient[Any, Any], query: str) -> list[str]:
        r = await client.get("/api/targets" + query)
        assert r.status == 200, await r.text()
        return [i["name"] for i in await r.json()]

    async def test(client: TestClient[Any, Any]) -> None:
        everything = [t.name for t in view.targets()]
        unreachable = [t.name for t in view.targets() if t.state == "unreachable"]
        assert await names(client, "?state=unreachable") == unreachable
        assert set(await names(client, "?state=lagged,UNREACHABLE")) == {
            t.name for t in view.targets() if t.state in ("lagged", "unreachable")
        }
        assert await names(client, "?q=PEER-00001") == [f"peer-0000{i}" for i in range(10, 20)]
        assert await names(client, "?q=%22ird%5C") == [ODD]
        assert await names(client, "?q=@192.0.2.40:") == ["peer-000039"]
        assert await names(client, "?group=edge") == ["edge/proxy 1"]
        assert await names(client, "?group=pop-1&state=unreachable") == [
            t.name for t in view.targets() if t.group == "pop-1" and t.state == "unreachable"
        ]
        assert await names(client, "?offset=5&limit=3") == everything[5:8]
        assert await names(client, "?limit=0") == []
        for bad in ("?state=dead", "?limit=-1", "?offset=x", "?limit=1.5"):
            r = await client.get("/api/targets" + bad)
            assert r.status == 400
            assert "error" in await r.json()

    run(view, test)


def test_one_target_and_404() -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/api/targets/edge%2Fproxy%201")
        assert r.status == 200
        assert (await r.json())["name"] == "edge/proxy 1"
        r = await client.get("/api/targets/we%22ird%5Cname")
        assert (await r.json())["name"] == ODD
        for path in ("nobody", "nobody/history", "nobody/rtt"):
            r = await client.get("/api/targets/" + path)
            assert r.status == 404
            assert r.content_type == "application/json"
            assert (await r.json()) == {"error": "no target named 'nobody'"}

    run(view, test)


def test_history_exact_shape_oldest_first() -> None:
    view = small_view()

    class NewestFirst(FakeView):
        def history(self, name: str, limit: int = 1000) -> list[Any]:
            return list(reversed(super().history(name, limit)))

    reversed_view = NewestFirst(view.targets())
    reversed_view.transitions = view.transitions

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/api/targets/peer-000003/history")
        assert r.status == 200
        items = await r.json()
        assert items == [
            {
                "at": "2023-11-14T22:13:21.000Z",
                "from": "reachable",
                "to": "lagged",
                "cause": "rtt",
                "rtt_s": 0.4,
            },
            {
                "at": "2023-11-14T22:13:22.000Z",
                "from": "lagged",
                "to": "unreachable",
                "cause": "timeout",
                "rtt_s": None,
            },
        ]
        assert await (await client.get("/api/targets/peer-000007/history")).json() == []
        assert (await client.get("/api/targets/peer-000003/history?limit=0")).status == 400

    run(view, test)
    run(reversed_view, test)


def test_events_for_polling() -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        events = await (await client.get("/api/events")).json()
        assert [e["id"] for e in events] == [1, 2, 3]
        assert events[2] == {
            "id": 3,
            "target": "peer-000005",
            "at": "2023-11-14T22:13:23.000Z",
            "from": "reachable",
            "to": "unreachable",
            "cause": "transport error",
            "rtt_s": None,
        }
        assert [e["id"] for e in await (await client.get("/api/events?after=1")).json()] == [2, 3]
        assert await (await client.get("/api/events?after=3")).json() == []
        assert len(await (await client.get("/api/events?limit=2")).json()) == 2
        view.transition("peer-000005", "reachable", "recovered", 0.02)
        assert [e["id"] for e in await (await client.get("/api/events?after=3")).json()] == [4]
        for bad in ("?after=-1", "?limit=0", "?limit=1001", "?after=abc"):
            r = await client.get("/api/events" + bad)
            assert r.status == 400
            assert "error" in await r.json()

    run(view, test)


def test_rtt_series() -> None:
    view = small_view()
    now = time.time()
    view.fill_series("peer-000001", now, hours=30)

    async def test(client: TestClient[Any, Any]) -> None:
        items = await (await client.get("/api/targets/peer-000001/rtt")).json()
        assert 1300 < len(items) <= 24 * 60
        assert set(items[0]) == {"at", "count", "min_s", "max_s", "mean_s"}
        assert ISO.match(items[0]["at"])
        assert items == sorted(items, key=lambda i: i["at"])
        assert items[0]["min_s"] <= items[0]["mean_s"] <= items[0]["max_s"]
        two = await (await client.get("/api/targets/peer-000001/rtt?hours=2")).json()
        assert 110 <= len(two) <= 120
        assert await (await client.get("/api/targets/peer-000002/rtt")).json() == []
        for bad in ("?hours=0", "?hours=-3", "?hours=x", "?hours=100000"):
            assert (await client.get("/api/targets/peer-000001/rtt" + bad)).status == 400

    run(view, test)


def test_summary() -> None:
    view = small_view()

    async def test(client: TestClient[Any, Any]) -> None:
        summary = await (await client.get("/api/summary")).json()
        assert summary["targets"] == len(view.targets())
        assert summary["counts"] == {s: sum(t.state == s for t in view.targets()) for s in STATES}
        assert summary["last_event_id"] == 3
        assert ISO.match(summary["started_at"])

    run(view, test)


# Authentication


def test_bearer_token_on_every_endpoint() -> None:
    view = small_view()
    paths = [
        "/metrics",
        "/probe?target=sip:a@b",
        "/api/targets",
        "/api/targets/peer-000001",
        "/api/targets/peer-000001/history",
        "/api/targets/peer-000001/rtt",
        "/api/events",
        "/api/summary",
        "/",
        "/targets/peer-000001",
    ]

    async def test(client: TestClient[Any, Any]) -> None:
        for path in paths:
            r = await client.get(path)
            assert r.status == 401, path
            challenges = r.headers.getall("WWW-Authenticate")
            assert 'Bearer realm="sipalive"' in challenges
            assert 'Basic realm="sipalive"' in challenges
            for wrong in ("Bearer s3cret", "Bearer s3cret-token-x", "Basic Zm9v", "Token s3"):
                r = await client.get(path, headers={"Authorization": wrong})
                assert r.status == 401, (path, wrong)
            r = await client.get(path, headers={"Authorization": "Bearer s3cret-token"})
            assert r.status == 200, path
        r = await client.get("/", headers={"Authorization": "Bearer nope"})
        assert 'Bearer realm="sipalive", error="invalid_token"' in r.headers.getall(
            "WWW-Authenticate"
        )
        basic = base64.b64encode(b"anyone:s3cret-token").decode()
        r = await client.get("/", headers={"Authorization": f"Basic {basic}"})
        assert r.status == 200
        assert len(view.probe_calls) == 1

    run(view, test, token="s3cret-token")


def test_no_token_means_open_and_empty_token_is_refused() -> None:
    async def test(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/api/summary")).status == 200

    run(small_view(), test)
    with pytest.raises(ValueError, match="empty"):
        make_app(small_view(), token="")


# Pages


def test_status_page_escapes_and_carries_its_nonce() -> None:
    view = small_view()
    view.add(make_target("<script>alert(1)</script>", "unreachable", uri="sip:x@y;a=\"'<b>"))

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/")
        assert r.status == 200
        assert r.content_type == "text/html"
        text = await r.text()
        assert "<script>alert(1)" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert "<b>" not in text
        assert 'href="/targets/we%22ird%5Cname"' in text
        assert 'href="/targets/edge%2Fproxy%201"' in text
        nonce = re.search(r"script-src 'nonce-([^']+)'", r.headers["Content-Security-Policy"])
        assert nonce
        assert f'<script nonce="{nonce.group(1)}">' in text
        assert text.count("<script") == 1
        assert 'data-last-event="3"' in text
        counts = dict(re.findall(r'data-count="(\w+)">(\d+)<', text))
        assert counts == {s: str(sum(t.state == s for t in view.targets())) for s in STATES}
        assert text.count('<svg class="spark"') == sum(1 for t in view.targets() if t.recent_rtts)

    run(view, test)


def test_status_page_paginates_worst_first() -> None:
    view = FakeView.many(1200)

    def rows(text: str) -> list[tuple[str, str]]:
        return re.findall(r'<tr data-target="([^"]+)" data-state="(\w+)"', text)

    async def test(client: TestClient[Any, Any]) -> None:
        first = rows(await (await client.get("/")).text())
        assert len(first) == PAGE_SIZE
        states = [s for _, s in first]
        unreachable = sum(t.state == "unreachable" for t in view.targets())
        assert states[:unreachable] == ["unreachable"] * unreachable
        assert states[unreachable] == "lagged"
        last = await (await client.get("/?page=3")).text()
        assert len(rows(last)) == 1200 - 2 * PAGE_SIZE
        assert "page 3 of 3" in last
        assert rows(last)[-1][1] == "nonqualified"
        found = rows(await (await client.get("/?q=peer-00011")).text())
        assert sorted(n for n, _ in found) == [f"peer-00011{i}" for i in range(10)]
        lagged = await (await client.get("/?state=lagged")).text()
        assert {s for _, s in rows(lagged)} == {"lagged"}
        assert 'class="card selected" data-state="lagged"' in lagged
        assert len(rows(await (await client.get("/?page=junk")).text())) == PAGE_SIZE
        assert "page 3 of 3" in await (await client.get("/?page=99")).text()

    run(view, test)


def test_target_page_plot_and_transitions() -> None:
    view = small_view()
    view.fill_series("peer-000003", time.time())

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/targets/peer-000003")
        assert r.status == 200
        text = await r.text()
        plot = text[text.index('<svg class="plot"') :]
        plot = plot[: plot.index("</svg>")]
        assert plot.count('class="band"') == 3  # two runs around the gap, and the legend
        assert plot.count('<polyline points="') == 2
        assert re.search(r'class="ylabel">\d+(\.\d+)? ms</text>', plot)
        assert re.search(r'class="xlabel">\d\d:00</text>', plot)
        assert ">UTC<" in plot
        transitions = re.findall(
            r'<td><span class="badge" data-state="(\w+)">\w+</span></td>'
            r'<td><span class="badge" data-state="(\w+)">\w+</span></td><td>(\w+)</td>',
            text,
        )
        assert transitions == [("lagged", "unreachable", "timeout"), ("reachable", "lagged", "rtt")]
        r = await client.get("/targets/nobody%3Cx%3E")
        assert r.status == 404
        assert "nobody&lt;x&gt;" in await r.text()
        empty = await (await client.get("/targets/peer-000007")).text()
        assert "no RTT measured" in empty
        assert "No transition recorded" in empty

    run(view, test)
