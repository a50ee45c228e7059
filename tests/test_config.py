"""The monitor config: layout, precedence, durations, and an error naming file + key path
for every kind of mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipalive.config import (
    SETTING_NAMES,
    MonitorConfig,
    Secret,
    TargetSettings,
    check_target,
    dump_targets_toml,
    load_config,
    parse_config,
)
from sipalive.errors import ConfigError, LocalProtocolError

DATA = Path(__file__).parent / "data" / "config"
EXAMPLE = Path(__file__).parent.parent / "examples" / "monitor.toml"
ENV = {"SIPALIVE_TEST_TOKEN": "t0ken-value", "SIPALIVE_TEST_CARRIER_A": "carrier-pw"}
ONE = '[[targets]]\nname = "a"\nuri = "sip:a@192.0.2.1"\n'


def parse(text: str, env: dict[str, str] | None = None) -> MonitorConfig:
    return parse_config(text, "monitor.toml", env=env or {})


def error(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value


# --- valid configs ---------------------------------------------------------------------------


def test_full_sample() -> None:
    config = load_config(DATA / "full.toml", env=ENV)
    assert config.source == str(DATA / "full.toml")
    assert (config.http.host, config.http.port, config.http.listen) == (
        "127.0.0.1",
        8060,
        "127.0.0.1:8060",
    )
    assert config.http.token is not None
    assert config.http.token.reveal() == "t0ken-value"
    assert (config.storage.path, config.storage.retention_days) == ("var/test.db", 7)
    assert [t.name for t in config.targets] == ["carrier-a", "carrier-b", "1001", "legacy-fax"]
    a, b, phone, fax = config.targets

    assert a.group == "carriers"
    assert a.sip_uri.host == "sip.carrier-a.example"
    s = a.settings
    assert (s.qualify_frequency, s.qualify_timeout, s.t1) == (15.0, 2.0, 0.25)
    assert (s.fail_threshold, s.recover_threshold, s.retransmits) == (2, 3, 3)
    assert s.expect_codes == ("2xx", "404")
    assert s.lagged_rtt == pytest.approx(0.3)
    assert s.from_uri == "sip:monitor@pbx.example.net"
    assert s.user_agent == "sipalive-test/1.0"
    assert s.auth_username == "pbx0042"
    assert s.auth_password == Secret("carrier-pw")
    assert (s.tcp_keepalive_enable, s.tcp_keepalive_idle_time) == (True, 60)

    assert b.transport == "tls"
    assert b.settings.expect_codes == ("200", "503")
    assert (b.settings.crlf_ping_interval, b.settings.crlf_pong_timeout) == (30.0, 10.0)
    assert b.settings.tcp_user_timeout == 20000
    assert b.settings.tls_insecure is True

    assert phone.settings.qualify_frequency == 120.0
    assert phone.settings.unreachable_frequency == 5.0
    assert (phone.settings.keep_alive_mode, phone.settings.keep_alive_interval) == ("crlf", 25.0)

    assert fax.group is None
    assert fax.transport == "tcp"  # from the URI
    assert fax.settings.qualify_frequency == 0
    assert fax.settings.qualify_2xx_only

    (hook,) = config.webhooks
    assert hook.url == "https://hooks.example.net/sipalive"
    assert hook.secret == Secret("webhook-signing-key")
    assert config.exec_hooks[0].command == ("/usr/local/bin/page-oncall", "--quiet")


def test_example_config() -> None:
    config = load_config(EXAMPLE)
    assert config.http.listen == "127.0.0.1:8060"
    assert config.storage.path == "var/sipalive.db"
    assert [(t.name, t.uri, t.transport) for t in config.targets] == [
        ("demo-udp", "sip:demo@127.0.0.1:5062", "udp"),
        ("demo-tcp", "sip:demo@127.0.0.1:5062", "tcp"),
    ]


def test_builtin_defaults() -> None:
    config = parse(ONE)
    assert config.http.listen == "127.0.0.1:8060"
    assert config.http.token is None
    assert (config.storage.path, config.storage.retention_days) == ("var/sipalive.db", 30)
    assert config.webhooks == config.exec_hooks == ()
    (target,) = config.targets
    assert target.settings == TargetSettings()
    s = target.settings
    assert (s.qualify_frequency, s.qualify_timeout, s.t1) == (60.0, 3.0, 0.5)
    assert (s.fail_threshold, s.recover_threshold, s.unreachable_frequency) == (1, 1, 10.0)
    assert (s.keep_alive_mode, s.crlf_ping_interval, s.crlf_pong_timeout) == ("none", 0.0, 10.0)
    assert target.transport is None


def test_empty_file_is_a_monitor_with_no_targets() -> None:
    assert parse("").targets == ()


def test_ipv6_listen() -> None:
    config = parse('[http]\nlisten = "[::1]:9000"\n')
    assert (config.http.host, config.http.port, config.http.listen) == ("::1", 9000, "[::1]:9000")


@pytest.mark.parametrize(
    ("layers", "expected"),
    [
        ({}, 3.0),
        ({"defaults": "4"}, 4.0),
        ({"defaults": "4", "group": "5"}, 5.0),
        ({"defaults": "4", "group": "5", "target": "6"}, 6.0),
        ({"defaults": "4", "target": "6"}, 6.0),
        ({"group": "5", "target": "6"}, 6.0),
    ],
)
def test_precedence(layers: dict[str, str], expected: float) -> None:
    def line(layer: str) -> str:
        return f"qualify_timeout = {layers[layer]}\n" if layer in layers else ""

    text = (
        f"[defaults]\n{line('defaults')}"
        f"[groups.g]\n{line('group')}"
        f'[[targets]]\nname = "a"\nuri = "sip:a@192.0.2.1"\ngroup = "g"\n{line("target")}'
    )
    assert parse(text).targets[0].settings.qualify_timeout == expected


def test_a_group_only_affects_its_members() -> None:
    text = (
        "[defaults]\nt1 = 1\n[groups.slow]\nt1 = 2\n"
        '[[targets]]\nname = "in"\nuri = "sip:a@192.0.2.1"\ngroup = "slow"\n'
        '[[targets]]\nname = "out"\nuri = "sip:b@192.0.2.1"\n'
    )
    assert [t.settings.t1 for t in parse(text).targets] == [2.0, 1.0]


def test_a_password_overrides_a_password_env_below() -> None:
    text = (
        '[defaults]\nauth_username = "u"\nauth_password_env = "PW"\n'
        + ONE
        + 'auth_password = "inline"\n'
    )
    settings = parse(text, env={"PW": "from-env"}).targets[0].settings
    assert settings.auth_password == Secret("inline")


def test_unreachable_frequency_follows_a_short_qualify_frequency() -> None:
    assert parse(ONE + "qualify_frequency = 4\n").targets[0].settings.unreachable_frequency == 4
    assert parse(ONE + "qualify_frequency = 0\n").targets[0].settings.unreachable_frequency == 10
    explicit = parse(ONE + "qualify_frequency = 4\nunreachable_frequency = 30\n")
    assert explicit.targets[0].settings.unreachable_frequency == 30


def test_equal_settings_are_shared() -> None:
    text = "".join(f'[[targets]]\nname = "t{i}"\nuri = "sip:t{i}@192.0.2.1"\n' for i in range(50))
    text += '[[targets]]\nname = "other"\nuri = "sip:o@192.0.2.1"\nt1 = 1\n'
    targets = parse(text).targets
    assert len({id(t.settings) for t in targets}) == 2


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0.15", 0.15),
        ("2", 2.0),
        ('"150ms"', 0.15),
        ('"2s"', 2.0),
        ('"2 s"', 2.0),
        ('"1m"', 60.0),
        ('"1.5min"', 90.0),
        ('"1h"', 3600.0),
        ('"500us"', 0.0005),
        ('"  3S "', 3.0),
        ('".5"', 0.5),
    ],
)
def test_durations(value: str, seconds: float) -> None:
    settings = parse(ONE + f"qualify_frequency = {value}\n").targets[0].settings
    assert settings.qualify_frequency == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ['"fast"', '"2 weeks"', '"-1s"', "-1", "true", "nan", "inf", '""']
)
def test_bad_durations(value: str) -> None:
    exc = error(ONE + f"qualify_frequency = {value}\n")
    assert exc.where == "monitor.toml: targets[0].qualify_frequency"
    assert exc.reason.startswith("expected a duration")


def test_milliseconds_hint() -> None:
    exc = error(ONE + "t1 = 500\n")
    assert exc.where == "monitor.toml: targets[0].t1"
    assert exc.reason == (
        'must be more than 0 to 60 seconds, got 500 (a bare number is seconds; for milliseconds write "500ms")'
    )


def test_whole_seconds_and_milliseconds() -> None:
    settings = parse(ONE + 'tcp_keepalive_idle_time = "2m"\ntcp_user_timeout = 1500\n')
    assert settings.targets[0].settings.tcp_keepalive_idle_time == 120
    assert settings.targets[0].settings.tcp_user_timeout == 1500
    exc = error(ONE + 'tcp_keepalive_idle_time = "1500ms"\n')
    assert exc.where == "monitor.toml: targets[0].tcp_keepalive_idle_time"
    assert exc.reason == "must be a whole number of seconds, got '1500ms'"


def test_expect_codes() -> None:
    settings = parse(ONE + 'expect_codes = ["2XX", 404, "404", "6xx"]\n').targets[0].settings
    assert settings.expect_codes == ("2xx", "404", "6xx")
    assert settings.expect_code_ranges == ((200, 299), (404, 404), (600, 699))
    assert TargetSettings().expect_code_ranges is None


def test_tcp_keepalive_options() -> None:
    settings = parse(ONE + "tcp_keepalive_enable = true\ntcp_user_timeout = 0\n")
    options = settings.targets[0].settings.tcp_keepalive
    assert (options.enable, options.idle_time, options.interval_time, options.probe_count) == (
        True,
        30,
        10,
        5,
    )
    assert options.user_timeout_ms == 0
    assert options.detection_bound() == 80.0


def test_tls_files_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = ONE + f'transport = "tls"\ntls_ca = "{tmp_path}"\ntls_cert = "{ca}"\n'
    settings = parse(text).targets[0].settings
    assert (settings.tls_ca, settings.tls_cert) == (str(tmp_path), str(ca))
    exc = error(ONE + f'tls_cert = "{tmp_path}"\n')
    assert exc.where == "monitor.toml: targets[0].tls_cert"
    assert exc.reason == f"no such file: {str(tmp_path)!r}"


# --- errors: each names the file and the key path --------------------------------------------

T0 = "monitor.toml: targets[0]"


# fmt: off
ERRORS = [
    # unknown keys, with a suggestion
    (ONE + "qualfy_timeout = 2\n", f"{T0}.qualfy_timeout",
     "unknown key in a [[targets]] table; did you mean 'qualify_timeout'?"),
    ("[defaults]\nretransmit = 2\n", "monitor.toml: defaults.retransmit",
     "unknown key in [defaults]; did you mean 'retransmits'?"),
    ("[groups.core]\nlaged_rtt = 1\n", "monitor.toml: groups.core.laged_rtt",
     "unknown key in [groups.core]; did you mean 'lagged_rtt'?"),
    ('[http]\nlisen = "127.0.0.1:1"\n', "monitor.toml: http.lisen",
     "unknown key in [http]; did you mean 'listen'?"),
    ("[storage]\nretention = 3\n", "monitor.toml: storage.retention",
     "unknown key in [storage]; did you mean 'retention_days'?"),
    ("[[target]]\nname = 'a'\n", "monitor.toml: target",
     "unknown key in the top level; did you mean 'targets'?"),
    ('[defaults]\nname = "x"\n', "monitor.toml: defaults.name",
     "only a [[targets]] table has a name, not [defaults]"),
    ('[[exec]]\ncommand = ["x"]\nargs = 1\n', "monitor.toml: exec[0].args",
     "unknown key in [[exec]]; expected one of: command"),
    # wrong types
    (ONE + 'retransmits = "3"\n', f"{T0}.retransmits", "expected an integer, got '3'"),
    (ONE + 'qualify_2xx_only = "yes"\n', f"{T0}.qualify_2xx_only",
     "expected true or false, got 'yes'"),
    (ONE + "user_agent = 7\n", f"{T0}.user_agent", "expected a string, got 7"),
    ("targets = 3\n", "monitor.toml: targets",
     "must be an array of tables ([[targets]]), got an integer"),
    ("defaults = 3\n", "monitor.toml: defaults", "must be a table ([defaults]), got an integer"),
    ("targets = [1]\n", "monitor.toml: targets[0]",
     "must be a table ([[targets]]), got an integer"),
    # out of range
    (ONE + "fail_threshold = 0\n", f"{T0}.fail_threshold", "must be from 1 to 1000, got 0"),
    (ONE + "qualify_timeout = 0\n", f"{T0}.qualify_timeout",
     "must be more than 0 to 300 seconds, got 0"),
    (ONE + "qualify_frequency = 1000000000\n", f"{T0}.qualify_frequency",
     "must be from 0 to 86400 seconds, got 1000000000"),
    (ONE + "tcp_keepalive_probe_count = 500\n", f"{T0}.tcp_keepalive_probe_count",
     "must be between 1 and 127, got 500 (for target 'a')"),
    ("[storage]\nretention_days = 0\n", "monitor.toml: storage.retention_days",
     "must be from 1 to 36500, got 0"),
    # choices
    (ONE + 'transport = "sctp"\n', f"{T0}.transport",
     "expected one of udp, tcp, tls, ws, wss, got 'sctp'"),
    (ONE + 'keep_alive_mode = "ping"\n', f"{T0}.keep_alive_mode",
     "expected one of crlf, stun, none, got 'ping'"),
    # targets: names, uris, groups
    ('[[targets]]\nuri = "sip:a@192.0.2.1"\n', f"{T0}.name",
     "missing: every target needs a name"),
    ('[[targets]]\nname = "a"\n', f"{T0}.uri", "missing: every target needs a uri"),
    ('[[targets]]\nname = "a b"\nuri = "sip:a@192.0.2.1"\n', f"{T0}.name",
     "expected 1 to 128 of the characters A-Z a-z 0-9 . _ @ + : ~ -, got 'a b'"),
    (ONE + '[[targets]]\nname = "a"\nuri = "sip:b@192.0.2.1"\n', "monitor.toml: targets[1].name",
     "duplicate target name 'a' (first at targets[0].name)"),
    ('[[targets]]\nname = "a"\nuri = "http://example.com"\n', f"{T0}.uri",
     "not a usable sip: or sips: URI (unsupported URI scheme 'http')"),
    ('[[targets]]\nname = "a"\nuri = "sip:"\n', f"{T0}.uri",
     "not a usable sip: or sips: URI (empty URI host)"),
    ('[[targets]]\nname = "a"\nuri = "sip:a:pw@192.0.2.1"\n', f"{T0}.uri",
     "a password in the URI would be shown everywhere; use auth_password"),
    ('[[targets]]\nname = "a"\nuri = "sip:a@192.0.2.1;transport=sctp"\n', f"{T0}.uri",
     "unknown ;transport=sctp (expected udp, tcp, tls, ws, wss)"),
    (ONE + 'from_uri = "tel:+123"\n', f"{T0}.from_uri",
     "not a usable sip: or sips: URI (unsupported URI scheme 'tel')"),
    (ONE + 'group = "core"\n[groups.cores]\n', f"{T0}.group",
     "no group 'core' is defined; did you mean 'cores'?"),
    (ONE + 'group = "x"\n', f"{T0}.group", "no group 'x' is defined (add a [groups.NAME] table)"),
    ('[groups."a b"]\n', 'monitor.toml: groups."a b"',
     "a group name is 1 to 128 of the characters A-Z a-z 0-9 . _ @ + : ~ -"),
    # transports
    (ONE.replace("sip:a@192.0.2.1", "sip:a@192.0.2.1;transport=udp") + 'transport = "tcp"\n',
     f"{T0}.transport", "'tcp' contradicts ;transport=udp in sip:a@192.0.2.1;transport=udp"),
    ('[defaults]\ntransport = "udp"\n' + ONE.replace("sip:", "sips:"), "monitor.toml: defaults.transport",
     "a sips: URI needs tls or wss, not udp (sips:a@192.0.2.1)"),
    ('[[targets]]\nname = "a"\nuri = "sips:a@192.0.2.1;transport=tcp"\n', f"{T0}.uri",
     "a sips: URI needs tls or wss, not tcp (sips:a@192.0.2.1;transport=tcp)"),
    # settings that contradict each other
    ('[defaults]\nauth_username = "u"\n' + ONE, "monitor.toml: defaults.auth_username",
     "needs auth_password or auth_password_env as well (for target 'a')"),
    (ONE + 'auth_password = "pw"\n', f"{T0}.auth_password",
     "needs auth_username as well (for target 'a')"),
    (ONE + 'auth_password = "pw"\nauth_password_env = "PW"\n', f"{T0}.auth_password_env",
     "set auth_password or auth_password_env, not both"),
    ("[defaults]\nqualify_2xx_only = true\n" + ONE + 'expect_codes = "200,404"\n',
     f"{T0}.expect_codes",
     "expect_codes ['200', '404'] contradicts qualify_2xx_only = true (defaults.qualify_2xx_only) (for target 'a')"),
    ("[defaults]\nlagged_rtt = 2\n" + ONE + "qualify_timeout = 1\n", f"{T0}.qualify_timeout",
     "lagged_rtt (2 s) must be less than qualify_timeout (1 s, targets[0].qualify_timeout) (for target 'a')"),
    (ONE + "crlf_ping_interval = 5\n", f"{T0}.crlf_ping_interval",
     "crlf_pong_timeout (10 s) must be less than crlf_ping_interval (5 s), or pings would overlap (for target 'a')"),
    (ONE + f'tls_key = "{__file__}"\n', f"{T0}.tls_key", "tls_key needs tls_cert (for target 'a')"),
    ("[defaults]\ntcp_keepalive_interval_time = 0\n" + ONE,
     "monitor.toml: defaults.tcp_keepalive_interval_time",
     "must be between 1 and 32767, got 0 (for target 'a')"),
    # expect_codes items
    (ONE + 'expect_codes = ["2xx", "1xx"]\n', f"{T0}.expect_codes[1]",
     "expected a final status code like \"404\" or a class like \"2xx\", got '1xx'"),
    (ONE + 'expect_codes = "200,,404"\n', f"{T0}.expect_codes",
     "expected a final status code like \"404\" or a class like \"2xx\", got ''"),
    (ONE + "expect_codes = 200\n", f"{T0}.expect_codes",
     'expected a list like ["2xx", "404"] or a string like "200,404", got 200'),
    # http, webhooks, exec
    ('[http]\nlisten = "127.0.0.1"\n', "monitor.toml: http.listen",
     "missing port: expected \"host:port\", got '127.0.0.1'"),
    ('[http]\nlisten = "127.0.0.1:99999"\n', "monitor.toml: http.listen",
     "expected \"host:port\": port out of range in listen address: 99999"),
    ('[[webhooks]]\nurl = "ftp://x"\n', "monitor.toml: webhooks[0].url",
     "expected an http:// or https:// URL, got 'ftp://x'"),
    ("[[webhooks]]\nsecret = 'k'\n", "monitor.toml: webhooks[0].url",
     "missing: every webhook needs a url"),
    ("[[exec]]\ncommand = []\n", "monitor.toml: exec[0].command",
     'expected a non-empty list like ["/path/to/handler", "arg"], got an array'),
    ('[[exec]]\ncommand = ["x", 1]\n', "monitor.toml: exec[0].command[1]",
     "expected a string, got 1"),
    (ONE + 'user_agent = "evil\\r\\nX-Injected: 1"\n', f"{T0}.user_agent",
     "must not contain control characters, got 'evil\\r\\nX-Injected: 1'"),
]
# fmt: on


@pytest.mark.parametrize(("text", "where", "reason"), ERRORS)
def test_error_names_file_and_key(text: str, where: str, reason: str) -> None:
    exc = error(text)
    assert (exc.where, exc.reason) == (where, reason)
    assert str(exc) == f"{where}: {reason}"


def test_toml_syntax_error_names_line_and_column() -> None:
    exc = error('[http]\nlisten = "127.0.0.1:8060"\n[[targets]]\nname = \n')
    assert exc.where == "monitor.toml: line 4, column 8"
    assert exc.reason == "TOML syntax error: Invalid value"
    exc = error("[http]\n[http]\n")
    assert exc.where.startswith("monitor.toml: line 2, column ")
    assert exc.reason.startswith("TOML syntax error: ")


def test_load_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert (info.value.where, info.value.reason) == (
        str(missing),
        "cannot read: No such file or directory",
    )
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(latin1)
    assert (info.value.where, info.value.reason) == (str(latin1), "not UTF-8 (byte 5)")


def test_missing_environment_variable() -> None:
    exc = error(ONE + 'auth_username = "u"\nauth_password_env = "NOT_SET_ANYWHERE"\n')
    assert exc.where == f"{T0}.auth_password_env"
    assert exc.reason == "environment variable NOT_SET_ANYWHERE is not set"
    exc = error('[http]\ntoken_env = "1BAD"\n')
    assert (exc.where, exc.reason) == (
        "monitor.toml: http.token_env",
        "expected an environment variable name, got '1BAD'",
    )


def test_every_setting_is_documented() -> None:
    import sipalive.config

    doc = sipalive.config.__doc__ or ""
    missing = [name for name in SETTING_NAMES if name.removesuffix("_env") not in doc]
    assert not missing


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_print() -> None:
    config = load_config(DATA / "full.toml", env=ENV)
    text = repr(config) + str(config)
    for secret in ("t0ken-value", "carrier-pw", "webhook-signing-key"):
        assert secret not in text
    assert "Secret('********')" in text
    assert str(Secret("x")) == repr(Secret("x")) == "Secret('********')"
    assert Secret("x") == Secret("x") != Secret("y")
    assert hash(Secret("x")) == hash(Secret("x"))


def test_a_bad_secret_is_not_echoed() -> None:
    exc = error("[http]\ntoken = 123456789\n")
    assert (exc.where, exc.reason) == (
        "monitor.toml: http.token",
        "expected a string, got an integer",
    )
    exc = error(ONE + 'auth_username = "u"\nauth_password = ["hunter2"]\n')
    assert "hunter2" not in str(exc)


# --- check_target and dump_targets_toml --------------------------------------------------------


def test_check_target_uses_the_given_source() -> None:
    check_target({"name": "a", "uri": "sip:a@192.0.2.1", "qualify_timeout": 2.5}, "x.conf:3")
    with pytest.raises(ConfigError) as info:
        check_target({"name": "a", "uri": "sip:a@192.0.2.1", "qualify_timeout": -1}, "x.conf:3")
    assert info.value.where == "x.conf:3: qualify_timeout"


def test_dump_round_trip() -> None:
    targets = [
        {"name": "gw1", "uri": "sip:gw1.example.net", "group": "set1", "qualify_timeout": 2.5},
        {
            "name": "x",
            "uri": "sips:x.example.net",
            "transport": "tls",
            "expect_codes": ["2xx", "404"],
            "qualify_2xx_only": False,
            "auth_username": "u",
            "auth_password": 'p"w\\',
            "retransmits": 2,
        },
    ]
    text = dump_targets_toml(targets, "Imported.\nSecond line.")
    assert text.startswith(
        '# Imported.\n# Second line.\n\n[groups.set1]\n\n[[targets]]\nname = "gw1"\n'
    )
    config = parse(text)
    gw1, x = config.targets
    assert (gw1.name, gw1.uri, gw1.group, gw1.settings.qualify_timeout) == (
        "gw1",
        "sip:gw1.example.net",
        "set1",
        2.5,
    )
    assert x.settings.auth_password == Secret('p"w\\')
    assert x.settings.expect_codes == ("2xx", "404")
    assert x.transport == "tls"


def test_dump_refuses_unknown_keys() -> None:
    with pytest.raises(LocalProtocolError):
        dump_targets_toml([{"name": "a", "uri": "sip:a@192.0.2.1", "colour": "red"}])


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_dump_escapes_any_string(text: str) -> None:
    dumped = dump_targets_toml([{"name": "a", "uri": "sip:a@192.0.2.1", "auth_password": text}])
    assert tomllib.loads(dumped)["targets"][0]["auth_password"] == text
