"""The monitor as a registrar (``[registrar]``): its config table, the contacts in the HTTP
app over a FakeView, and ``sipalive monitor`` as a process with ``sipalive register`` UAs
registering to it over UDP and TCP. The API is the witness there: a contact qualified
reachable with its RTT, then unreachable and removed once its UA is SIGKILLed; the metrics and
the page show the same; the bindings survive a restart.

Every process runs in its own session and is stopped (SIGTERM, then SIGKILL of its group);
every wait is bounded; ports are 4-digit ones from ``realpeers.free_port``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fakeview import T0, FakeView, make_target
from monitorproc import MonitorProc, monitor
from procs import BIN
from realpeers import free_port
from sipalive.config import ListenAddress, parse_config
from sipalive.errors import ConfigError
from sipalive.http.view import ContactView
from test_http import parse_exposition, run

PASSWORD = "Mon-reg:pw#1"
FREQUENCY = 1.0
TIMEOUT = 1.0
# a contact is unreachable at most one jittered interval plus a timeout after its last answer
DETECT = FREQUENCY + TIMEOUT
EXAMPLE = Path(__file__).parent.parent / "examples" / "monitor.toml"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"alice:{PASSWORD}\nbob:bob-pw-2\n")
    path.chmod(0o600)
    return path


# -- the [registrar] table ---------------------------------------------------------------


def parse(body: str, users: Path) -> Any:
    text = f'[storage]\npath = "var/mon.db"\n[registrar]\nusers = "{users}"\n{body}'
    return parse_config(text, "m.toml").registrar


def test_registrar_table_defaults(users: Path) -> None:
    section = parse('listen = ["udp:127.0.0.1:5070", "TCP:[::1]"]', users)
    assert section.listen == (
        ListenAddress("udp", "127.0.0.1", 5070),
        ListenAddress("tcp", "::1", 5060),
    )
    assert [str(a) for a in section.listen] == ["udp:127.0.0.1:5070", "tcp:[::1]:5060"]
    assert section.users == str(users)
    assert section.db == "var/mon-registrar.db"  # beside [storage] path
    assert section.realm == "sipalive"
    assert section.digest_algorithms == ("SHA-256", "MD5")
    assert (section.qualify_frequency, section.qualify_timeout) == (60.0, 3.0)
    assert section.remove_unavailable is False
    assert (section.min_expires, section.max_expires, section.flow_timer) == (60, 3600, None)
    assert parse_config("", "m.toml").registrar is None


def test_registrar_table_every_setting(users: Path) -> None:
    section = parse(
        'listen = ["udp:127.0.0.1:5070"]\nrealm = "pbx.example"\n'
        'digest_algorithms = "md5"\nqualify_frequency = "30s"\nqualify_timeout = "500ms"\n'
        'remove_unavailable = true\nmin_expires = "2m"\nmax_expires = 600\nflow_timer = 25\n'
        'flow_timer_always = true\ndb = "/var/lib/sipalive/reg.db"\n',
        users,
    )
    assert section.realm == "pbx.example"
    assert section.digest_algorithms == ("MD5",)
    assert (section.qualify_frequency, section.qualify_timeout) == (30.0, 0.5)
    assert section.remove_unavailable is True
    assert (section.min_expires, section.max_expires) == (120, 600)
    assert (section.flow_timer, section.flow_timer_always) == (25, True)
    assert section.db == "/var/lib/sipalive/reg.db"


LISTEN = 'listen = ["udp:127.0.0.1:5070"]\n'


@pytest.mark.parametrize(
    ("body", "where", "reason"),
    [
        ("", "registrar.listen", "missing"),
        ('listen = "udp:127.0.0.1:5070"', "registrar.listen", "non-empty list"),
        ("listen = []", "registrar.listen", "non-empty list"),
        ('listen = ["sctp:127.0.0.1:5070"]', "registrar.listen[0]", "udp:HOST:PORT"),
        ('listen = ["udp:1.2.3.4:5", "tls:1.2.3.4:6"]', "registrar.listen[1]", "not tls"),
        ('listen = ["udp:127.0.0.1:99999"]', "registrar.listen[0]", "out of range"),
        ('listen = ["udp:h:7", "udp:h:7"]', "registrar.listen[1]", "listed twice"),
        (LISTEN + 'users = "/nonexistent/users"', "registrar.users", "users"),
        (LISTEN + 'realm = "a\\"b"', "registrar.realm", "quotes"),
        (LISTEN + 'digest_algorithms = ["MD5", "SHA-512"]', "registrar.digest_algorithms[1]",
         "SHA-256"),
        (LISTEN + 'digest_algorithms = "MD5,md5"', "registrar.digest_algorithms", "twice"),
        (LISTEN + "qualify_frequency = -1", "registrar.qualify_frequency", "duration"),
        (LISTEN + "qualify_timeout = 0", "registrar.qualify_timeout", "more than 0"),
        (LISTEN + 'remove_unavailable = "yes"', "registrar.remove_unavailable", "true or false"),
        (LISTEN + "min_expires = 7200", "registrar.min_expires", "max_expires (3600 s"),
        (LISTEN + "min_expires = 120\nmax_expires = 60", "registrar.max_expires",
         "min_expires (120 s)"),
        (LISTEN + 'min_expires = "1.5s"', "registrar.min_expires", "whole number"),
        (LISTEN + "flow_timer_always = true", "registrar.flow_timer_always", "needs flow_timer"),
        (LISTEN + "qualify_frequncy = 5", "registrar.qualify_frequncy", "qualify_frequency"),
    ],
)  # fmt: skip
def test_registrar_table_errors_name_the_key(
    users: Path, body: str, where: str, reason: str
) -> None:
    if "users =" in body:
        text = f"[registrar]\n{body}\n"
    else:
        text = f'[registrar]\nusers = "{users}"\n{body}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "m.toml")
    assert caught.value.where == f"m.toml: {where}"
    assert reason in caught.value.reason


def test_registrar_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config('registrar = "yes"\n', "m.toml")
    assert caught.value.where == "m.toml: registrar"


def test_example_registrar_block_is_valid(users: Path) -> None:
    """The commented-out [registrar] of examples/monitor.toml works once uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("# [registrar]")
    block = [line[2:] for line in lines[start:] if line.startswith("# ")]
    text = "\n".join(block).replace('"examples/users"', f'"{users}"')
    section = parse_config(text, "example").registrar
    assert section is not None
    assert section.remove_unavailable is True
    assert len(section.listen) == 2


# -- the HTTP app over a FakeView --------------------------------------------------------

ODD = 'sip:we"ird\\@example.com'


def contact(aor: str, state: str = "reachable", **fields: object) -> ContactView:
    values: dict[str, object] = {
        "aor": aor,
        "contact": f"{aor.replace('sip:', 'sip:ua-')};transport=udp",
        "source": "198.51.100.7:40123",
        "transport": "udp",
        "expires_at": T0 + 300,
        "state": state,
        "rtt_s": 0.0123 if state in ("reachable", "lagged") else None,
        "user_agent": "Phone/1.0 <b>",
        "registered_at": T0 - 60,
    }
    values.update(fields)
    return ContactView(**values)  # type: ignore[arg-type]


def registrar_view() -> FakeView:
    view = FakeView([make_target("trunk-1")])
    view.now = T0
    view.contact_list = [
        contact("sip:alice@example.com"),
        contact("sip:bob@example.com", "unreachable", source="[2001:db8::1]:5060"),
        # two outbound flows of one UA: one Contact URI, two bindings
        contact("sip:carol@example.com", rtt_s=0.030),
        contact("sip:carol@example.com", rtt_s=0.020),
        contact("sip:carol@example.com", "unreachable", rtt_s=None),
        contact(ODD, "lagged", contact="sip:x@h;p=<script>"),
    ]
    return view


def test_api_contacts_shape() -> None:
    view = registrar_view()

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/api/contacts")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        body = await r.json()
        assert len(body) == 6
        first = body[0]
        assert first == {
            "aor": "sip:alice@example.com",
            "contact": "sip:ua-alice@example.com;transport=udp",
            "source": "198.51.100.7:40123",
            "transport": "udp",
            "expires_at": "2023-11-14T22:18:20.000Z",
            "state": "reachable",
            "rtt_s": 0.0123,
            "user_agent": "Phone/1.0 <b>",
            "registered_at": "2023-11-14T22:12:20.000Z",
        }
        assert body[1]["source"] == "[2001:db8::1]:5060"
        assert body[1]["rtt_s"] is None
        view.contact_list = None  # no registrar
        assert await (await client.get("/api/contacts")).json() == []
        view.contact_list = []
        assert await (await client.get("/api/contacts")).json() == []

    run(view, test)


def test_contact_metrics() -> None:
    view = registrar_view()

    async def test(client: TestClient[Any, Any]) -> None:
        text = await (await client.get("/metrics")).text()
        types, samples = parse_exposition(text)
        assert types["sip_contact_up"] == types["sip_contact_rtt_seconds"] == "gauge"
        assert types["sip_registrar_contacts"] == "gauge"
        up: dict[tuple[str, str], float] = {}
        rtt: dict[tuple[str, str], float] = {}
        by_state: dict[str, float] = {}
        for name, labels, value in samples:
            if name in ("sip_contact_up", "sip_contact_rtt_seconds"):
                series = up if name == "sip_contact_up" else rtt
                key = (labels["aor"], labels["contact"])
                assert key not in series, f"duplicate {name} {key}"
                series[key] = value
            elif name == "sip_registrar_contacts":
                by_state[labels["state"]] = value
        carol = ("sip:carol@example.com", "sip:ua-carol@example.com;transport=udp")
        assert up == {
            ("sip:alice@example.com", "sip:ua-alice@example.com;transport=udp"): 1,
            ("sip:bob@example.com", "sip:ua-bob@example.com;transport=udp"): 0,
            carol: 1,  # up if either flow is
            (ODD, "sip:x@h;p=<script>"): 1,  # lagged is up; the label round-trips
        }
        assert rtt[carol] == 0.02  # the smaller RTT
        assert ("sip:bob@example.com", "sip:ua-bob@example.com;transport=udp") not in rtt
        assert by_state == {
            "unknown": 0, "reachable": 3, "lagged": 1, "unreachable": 2, "nonqualified": 0,
        }  # fmt: skip
        assert 'aor="sip:we\\"ird\\\\@example.com"' in text

        view.contact_list = None
        text = await (await client.get("/metrics")).text()
        assert "sip_contact" not in text
        assert "sip_registrar" not in text
        view.contact_list = []
        types, samples = parse_exposition(await (await client.get("/metrics")).text())
        assert "sip_contact_up" in types
        assert [v for n, _, v in samples if n == "sip_registrar_contacts"] == [0] * 5

    run(view, test)


def test_page_shows_registered_contacts() -> None:
    view = registrar_view()

    async def test(client: TestClient[Any, Any]) -> None:
        html = await (await client.get("/")).text()
        assert "Registered contacts" in html
        section = html[html.index('id="contacts"') : html.index("</section>")]
        rows = re.findall(r'<tr data-state="(\w+)">', section)
        assert rows == ["unreachable", "unreachable", "lagged", "reachable", "reachable",
                        "reachable"]  # fmt: skip
        assert "sip:alice@example.com" in section
        assert "udp 198.51.100.7:40123" in section
        assert "12.3 ms" in section
        assert "<script>" not in section
        assert "sip:x@h;p=&lt;script&gt;" in section
        assert 'title="Phone/1.0 &lt;b&gt;"' in section
        assert "data-target" not in section  # the live script leaves contacts alone
        view.contact_list = []
        assert "Registered contacts" not in await (await client.get("/")).text()
        view.contact_list = None
        assert "Registered contacts" not in await (await client.get("/")).text()

    run(view, test)


# -- sipalive monitor with [registrar], as a process -------------------------------------


@contextlib.contextmanager
def register(
    tmp_path: Path, port: int, user: str, password: str, transport: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``sipalive register`` as ``user`` with the monitor's registrar at 127.0.0.1:PORT."""
    log = tmp_path / f"register-{user}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "register", "--registrar", f"sip:127.0.0.1:{port}", "--user", user,
             "--password-env", "SIPALIVE_TEST_PW", "-T", transport, "--expires", "300",
             "--duration", "60"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "SIPALIVE_TEST_PW": password}, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: the UA gets no chance to un-register."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def registrar_body(users: Path, port: int, *, remove: bool) -> str:
    return (
        f'[registrar]\nlisten = ["udp:127.0.0.1:{port}", "tcp:127.0.0.1:{port}"]\n'
        f'users = "{users}"\nqualify_frequency = {FREQUENCY}\nqualify_timeout = {TIMEOUT}\n'
        f"remove_unavailable = {'true' if remove else 'false'}\n"
    )


def contacts(mon: MonitorProc) -> dict[str, dict[str, Any]]:
    """``/api/contacts`` by AOR user."""
    return {c["aor"].split("@")[0][4:]: c for c in mon.api("/api/contacts")}


def wait_contacts(mon: MonitorProc, want: dict[str, str], timeout: float) -> Any:
    """Until each named user's contact is in its state ("gone": absent, rtt_s for reachable)."""

    def ok() -> dict[str, dict[str, Any]] | None:
        found = contacts(mon)
        for user, state in want.items():
            c = found.get(user)
            if state == "gone":
                matched = c is None
            else:
                matched = c is not None and c["state"] == state
                matched = matched and (state != "reachable" or bool(c["rtt_s"]))
            if not matched:
                return None
        return found

    return mon.wait_for(f"contacts {want}", ok, timeout)


def test_monitor_registrar_qualifies_and_removes_dead_contacts(tmp_path: Path, users: Path) -> None:
    port = free_port("both")
    body = registrar_body(users, port, remove=True)
    with (
        monitor(tmp_path / "mon", body) as mon,
        register(tmp_path, port, "alice", PASSWORD, "udp") as alice,
        register(tmp_path, port, "bob", "bob-pw-2", "tcp") as bob,
    ):
        found = wait_contacts(mon, {"alice": "reachable", "bob": "reachable"}, 10)
        a, b = found["alice"], found["bob"]
        assert a["transport"] == "udp"
        assert b["transport"] == "tcp"
        assert a["contact"] == f"sip:alice@127.0.0.1:{a['source'].split(':')[1]}"
        assert b["contact"].endswith(";transport=tcp")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["expires_at"])
        assert 0 < a["rtt_s"] < TIMEOUT
        assert a["user_agent"] == "sipalive/0.1"

        types, samples = parse_exposition(mon.metrics())
        up = {s[1]["aor"]: s[2] for s in samples if s[0] == "sip_contact_up"}
        assert up == {"sip:alice@127.0.0.1": 1, "sip:bob@127.0.0.1": 1}
        assert types["sip_contact_rtt_seconds"] == "gauge"
        counts = {s[1]["state"]: s[2] for s in samples if s[0] == "sip_registrar_contacts"}
        assert counts["reachable"] == 2
        page = mon.get("/").decode()
        assert "Registered contacts" in page
        assert "sip:alice@127.0.0.1" in page

        kill(alice)
        killed = time.monotonic()
        wait_contacts(mon, {"alice": "gone", "bob": "reachable"}, DETECT + 2)
        assert time.monotonic() - killed <= DETECT + 0.5
        kill(bob)  # its connection closes: unreachable at once
        killed = time.monotonic()
        wait_contacts(mon, {"bob": "gone"}, 2)
        assert time.monotonic() - killed <= 1
        log = mon.log()
        for user, cause in (("alice", "timeout"), ("bob", "flow-failed")):
            aor = rf"sip:{user}@127\.0\.0\.1 contact=<[^>]+>"
            assert re.search(rf"{aor} reachable -> unreachable \({cause}\)", log), log
            assert re.search(rf"registrar: removed {aor} \(unavailable\)", log), log
        # each contact transition is an event too: a JSON line of type "contact", and in
        # /api/events under the AOR
        contact_events = [e for e in mon.events() if e["type"] == "contact"]
        seen = {(e["target"], e["from"], e["to"], e["cause"]) for e in contact_events}
        for user, cause in (("alice", "timeout"), ("bob", "flow-failed")):
            aor = f"sip:{user}@127.0.0.1"
            assert any(t[0] == aor and t[2] == "reachable" for t in seen), contact_events
            assert (aor, "reachable", "unreachable", cause) in seen, contact_events
        assert all(e["uri"].startswith("sip:") for e in contact_events)
        api = {(e["target"], e["to"]) for e in mon.api("/api/events?limit=1000")}
        assert ("sip:alice@127.0.0.1", "unreachable") in api
        counts = {
            s[1]["state"]: s[2]
            for s in parse_exposition(mon.metrics())[1]
            if s[0] == "sip_registrar_contacts"
        }
        assert sum(counts.values()) == 0
        assert "Registered contacts" not in mon.get("/").decode()
        assert mon.stop() == 0
    assert PASSWORD not in mon.log()
    assert (tmp_path / "mon" / "monitor-registrar.db").exists()


def test_monitor_registrar_keeps_unreachable_contacts_across_a_restart(
    tmp_path: Path, users: Path
) -> None:
    port = free_port("both")
    with (
        monitor(tmp_path / "mon", registrar_body(users, port, remove=False)) as mon,
        register(tmp_path, port, "bob", "bob-pw-2", "tcp") as bob,
    ):
        wait_contacts(mon, {"bob": "reachable"}, 10)
        kill(bob)
        wait_contacts(mon, {"bob": "unreachable"}, 2)
        samples = parse_exposition(mon.metrics())[1]
        assert [s[2] for s in samples if s[0] == "sip_contact_up"] == [0]
        assert 'data-state="unreachable"' in mon.get("/").decode()
        assert mon.stop() == 0
        mon.start()
        # restored from the database; its connection is gone, so it fails its next probe
        wait_contacts(mon, {"bob": "unreachable"}, DETECT + 2)
        assert "restored 1 bindings" in mon.log()


def test_monitor_registrar_refuses_to_start(tmp_path: Path, users: Path) -> None:
    """A users file the registrar cannot use, or an address in use: exit 1, saying why."""
    port = free_port("both")
    bad = tmp_path / "bad-users"
    bad.write_text("alice:pw\nno-colon-here\n")
    config = tmp_path / "m.toml"
    header = f'[http]\nlisten = "127.0.0.1:{free_port("tcp")}"\n'
    header += f'[storage]\npath = "{tmp_path / "m.db"}"\n'
    config.write_text(header + registrar_body(bad, port, remove=False))
    for extra in (["--check-config"], []):
        done = subprocess.run(
            [str(BIN), "monitor", "-c", str(config), *extra],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done
        assert f"{bad}:2: expected user:password" in done.stderr
    config.write_text(header + registrar_body(users, port, remove=False))
    done = subprocess.run(
        [str(BIN), "monitor", "-c", str(config), "--check-config"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done
    assert "a registrar on udp:127.0.0.1" in done.stdout
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        done = subprocess.run(
            [str(BIN), "monitor", "-c", str(config)],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done
    assert f"registrar cannot listen on tcp:127.0.0.1:{port}" in done.stderr
