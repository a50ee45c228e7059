"""Importers: Asterisk pjsip.conf and Kamailio dispatcher.list to a target file that loads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sipalive.config import Secret, dump_targets_toml, load_config, parse_config
from sipalive.errors import ConfigError
from sipalive.importers import import_asterisk, import_kamailio_dispatcher, main_import

DATA = Path(__file__).parent / "data" / "config"
PJSIP = (DATA / "pjsip.conf").read_text()
DISPATCHER = (DATA / "dispatcher.list").read_text()


def asterisk(text: str) -> tuple[list[dict[str, object]], list[str]]:
    warnings: list[str] = []
    return [dict(t) for t in import_asterisk(text, "pjsip.conf", warnings.append)], warnings


def asterisk_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        import_asterisk(text, "pjsip.conf")
    return info.value


def kamailio(text: str) -> tuple[list[dict[str, object]], list[str]]:
    warnings: list[str] = []
    targets = import_kamailio_dispatcher(text, "dispatcher.list", warnings.append)
    return [dict(t) for t in targets], warnings


def kamailio_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        import_kamailio_dispatcher(text, "dispatcher.list")
    return info.value


# --- Asterisk --------------------------------------------------------------------------------


def test_asterisk_sample() -> None:
    targets, warnings = asterisk(PJSIP)
    assert targets == [
        {
            "name": "carrier-a",
            "uri": "sip:sip.carrier-a.example:5060",
            "qualify_frequency": 30,
            "qualify_timeout": 2.5,
            "qualify_2xx_only": True,
            "transport": "udp",
            "auth_username": "pbx0042",
            "auth_password": "s3cr;et",
        },
        {
            "name": "carrier-b-1",
            "uri": "sips:sbc1.carrier-b.example:5061",
            "qualify_frequency": 20,  # from the later [carrier-b](+type=aor)
            "qualify_timeout": 4.0,
            "transport": "tls",
        },
        {
            "name": "carrier-b-2",
            "uri": "sips:sbc2.carrier-b.example:5061",
            "qualify_frequency": 20,
            "qualify_timeout": 4.0,
            "transport": "tls",
        },
        {
            "name": "1001",
            "uri": "sip:1001@192.0.2.11:5060",
            "qualify_frequency": 60,
            "transport": "udp",
        },
        {  # the contact's ;transport=tcp stands; the endpoint's transport is not repeated
            "name": "1003",
            "uri": "sip:1003@192.0.2.13:5060;transport=tcp",
            "qualify_frequency": 0,
        },
    ]
    assert warnings == [
        "pjsip.conf:4: #include not followed; import that file on its own",
        "pjsip.conf: 1 AOR(s) without a static contact= skipped (registrations)",
    ]


def test_asterisk_round_trip() -> None:
    targets = import_asterisk(PJSIP, "pjsip.conf")
    config = parse_config(dump_targets_toml(targets), "imported.toml")
    assert [t.name for t in config.targets] == [t["name"] for t in targets]
    carrier_a = config.targets[0]
    assert carrier_a.settings.auth_password == Secret("s3cr;et")
    assert carrier_a.settings.qualify_2xx_only
    assert [t.transport for t in config.targets] == ["udp", "tls", "tls", "udp", "tcp"]
    assert config.targets[4].settings.qualify_frequency == 0


def test_asterisk_templates_inherit_in_order() -> None:
    text = """
[base](!)
type=aor
qualify_frequency=10
qualify_timeout=1.0
[slow](!,base)
qualify_timeout=5.0
[peer](slow)
contact=sip:peer.example.net
qualify_frequency=15
"""
    targets, _ = asterisk(text)
    assert targets == [
        {
            "name": "peer",
            "uri": "sip:peer.example.net",
            "qualify_frequency": 15,
            "qualify_timeout": 5.0,
        }
    ]


def test_asterisk_syntax_details() -> None:
    text = """
[a]   ; a comment after the header
type = aor
contact => sip:a.example.net\\;transport=tcp ; escaped ";" is part of the value
;-- a block comment
contact=sip:ignored.example.net
--; contact=sip:b.example.net:5070
qualify_frequency = 3
qualify_frequency += 0
[a](+)
qualify_2xx_only = no
"""
    targets, _ = asterisk(text)
    assert targets == [
        {
            "name": "a-1",
            "uri": "sip:a.example.net;transport=tcp",
            "qualify_frequency": 30,
            "qualify_2xx_only": False,
        },
        {
            "name": "a-2",
            "uri": "sip:b.example.net:5070",
            "qualify_frequency": 30,
            "qualify_2xx_only": False,
        },
    ]


def test_asterisk_names_are_made_safe_and_unique() -> None:
    text = """
[my peer]
type=aor
contact=sip:a.example.net
[my/peer]
type=aor
contact=sip:b.example.net
"""
    targets, warnings = asterisk(text)
    assert [t["name"] for t in targets] == ["my-peer", "my-peer-2"]
    assert warnings == ["pjsip.conf:7: name 'my-peer' is taken; using my-peer-2"]


def test_asterisk_md5_auth_gives_no_credentials() -> None:
    text = """
[t]
type=endpoint
aors=t
outbound_auth=t-auth
[t-auth]
type=auth
auth_type=md5
username=u
md5_cred=0123456789abcdef0123456789abcdef
[t]
type=aor
contact=sip:t.example.net
qualify_frequency=60
"""
    targets, warnings = asterisk(text)
    assert "auth_username" not in targets[0]
    assert warnings == [
        "pjsip.conf:5: outbound_auth 't-auth' is not a userpass auth section; "
        "no credentials imported"
    ]


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("type=aor\n", "pjsip.conf:1", "option outside any [section]: 'type=aor'"),
        ("[a\n", "pjsip.conf:1", "expected a section header like [name](template), got '[a'"),
        ("[a](nope)\n", "pjsip.conf:1", "template 'nope' is not defined above"),
        ("[a](+)\n", "pjsip.conf:1", "[a](+) adds to a section not defined above"),
        ("[a]\njust words\n", "pjsip.conf:2", "expected 'name = value', got 'just words'"),
        (
            "[a]\ntype=aor\ncontact=sip:a.example.net\nqualify_frequency=often\n",
            "pjsip.conf:4",
            "qualify_frequency: expected a number, got 'often'",
        ),
        (
            "[a]\ntype=aor\ncontact=sip:a.example.net\nqualify_2xx_only=maybe\n",
            "pjsip.conf:4",
            "qualify_2xx_only: expected yes or no, got 'maybe'",
        ),
        (
            "[a]\ntype=aor\n\ncontact=tel:+15551234\n",
            "pjsip.conf:4: contact",
            "not a usable sip: or sips: URI (unsupported URI scheme 'tel')",
        ),
        (
            "[a]\ntype=aor\ncontact=sip:a.example.net\nqualify_timeout=0\n",
            "pjsip.conf:4: qualify_timeout",
            "must be more than 0 to 300 seconds, got 0.0",
        ),
        (
            "[e]\ntype=endpoint\naors=a\noutbound_auth=x\n[x]\ntype=auth\npassword=pw\n"
            "[a]\ntype=aor\ncontact=sip:a.example.net\n",
            "pjsip.conf:7: password",
            "needs auth_username as well (for target 'a')",
        ),
    ],
)
def test_asterisk_errors_name_file_and_line(text: str, where: str, reason: str) -> None:
    exc = asterisk_error(text)
    assert (exc.where, exc.reason) == (where, reason)


# --- Kamailio --------------------------------------------------------------------------------


def test_kamailio_sample() -> None:
    targets, warnings = kamailio(DISPATCHER)
    assert targets == [
        {"name": "gw1", "uri": "sip:gw1.example.net:5060", "group": "set1"},
        {
            "name": "gw2",
            "uri": "sip:gw2.example.net:5060;transport=tcp",
            "group": "set1",
            "from_uri": "sip:ping@edge.example.net",
        },
        {"name": "set1-3", "uri": "sip:198.51.100.20", "group": "set1"},
        {"name": "reg-a", "uri": "sip:10.0.1.10:5060", "group": "set2", "qualify_frequency": 0},
        {"name": "set2-2", "uri": "sip:10.0.1.11:5060", "group": "set2"},
        {
            "name": "set2-3",
            "uri": "sips:reg.example.net:5061",
            "group": "set2",
            "qualify_frequency": 0,
        },
    ]
    assert warnings == []


def test_kamailio_round_trip() -> None:
    targets = import_kamailio_dispatcher(DISPATCHER, "dispatcher.list")
    text = dump_targets_toml(targets)
    assert "[groups.set1]" in text
    assert "[groups.set2]" in text
    config = parse_config(text, "imported.toml")
    assert [(t.name, t.group) for t in config.targets] == [(t["name"], t["group"]) for t in targets]
    assert config.targets[1].settings.from_uri == "sip:ping@edge.example.net"
    assert config.targets[1].transport == "tcp"


def test_kamailio_duplicate_duid_is_renamed() -> None:
    targets, warnings = kamailio(
        "1 sip:a.example.net 0 0 duid=edge\n2 sip:a.example.net 0 0 duid=edge\n"
    )
    assert [(t["name"], t["group"]) for t in targets] == [("edge", "set1"), ("edge-2", "set2")]
    assert warnings == ["dispatcher.list:2: name 'edge' is taken; using edge-2"]


def test_kamailio_hex_flags_and_comments() -> None:
    targets, _ = kamailio("  # only a comment\n\n3 sip:a.example.net 0x20 # no ping\n")
    assert targets == [
        {"name": "set3-1", "uri": "sip:a.example.net", "group": "set3", "qualify_frequency": 0}
    ]


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (
            "one sip:a.example.net\n",
            "dispatcher.list:1",
            "expected 'setid destination [flags [priority [attrs]]]', got 'one sip:a.example.net'",
        ),
        (
            "\n1\n",
            "dispatcher.list:2",
            "expected 'setid destination [flags [priority [attrs]]]', got '1'",
        ),
        ("1 sip:a.example.net x\n", "dispatcher.list:1", "flags: expected an integer, got 'x'"),
        (
            "1 sip:a.example.net 0 high\n",
            "dispatcher.list:1",
            "priority: expected an integer, got 'high'",
        ),
        (
            "# gateways\n1 gw1.example.net\n",
            "dispatcher.list:2: destination",
            "not a usable sip: or sips: URI (not a URI: 'gw1.example.net')",
        ),
        (
            "1 sip:a.example.net 0 0 ping_from=mailto:x@y\n",
            "dispatcher.list:1: ping_from",
            "not a usable sip: or sips: URI (unsupported URI scheme 'mailto')",
        ),
    ],
)
def test_kamailio_errors_name_file_and_line(text: str, where: str, reason: str) -> None:
    exc = kamailio_error(text)
    assert (exc.where, exc.reason) == (where, reason)


# --- sipalive import ---------------------------------------------------------------------------


def test_main_import_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_import(["kamailio", str(DATA / "dispatcher.list")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(
        "# Targets imported by `sipalive import kamailio` from dispatcher.list.\n"
    )
    assert len(parse_config(out, "stdout").targets) == 6
    assert err == f"sipalive import: 6 target(s) from {DATA / 'dispatcher.list'}\n"


def test_main_import_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "targets.toml"
    assert main_import(["asterisk", str(DATA / "pjsip.conf"), "-o", str(out)]) == 0
    config = load_config(out)
    assert len(config.targets) == 5
    # carrier-a's password is in there: owner only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    err = capsys.readouterr().err
    assert "warning: " in err
    assert "pjsip.conf:4: #include not followed" in err
    assert [p.name for p in tmp_path.iterdir()] == ["targets.toml"]

    plain = tmp_path / "plain.toml"
    assert main_import(["kamailio", str(DATA / "dispatcher.list"), "-o", str(plain)]) == 0
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_main_import_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "dispatcher.list"
    bad.write_text("# sets\n1 sip:ok.example.net\nx sip:bad.example.net\n")
    assert main_import(["kamailio", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"sipalive import: {bad}:3: expected 'setid destination")

    missing = tmp_path / "nope.conf"
    assert main_import(["asterisk", str(missing)]) == 1
    assert capsys.readouterr().err == (f"sipalive import: {missing}: No such file or directory\n")


@pytest.mark.parametrize(
    "argv", [[], ["openser", "x"], ["asterisk"], ["kamailio", "a", "b"], ["asterisk", "-x", "f"]]
)
def test_main_import_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main_import(argv) == 2
    assert "usage: sipalive import" in capsys.readouterr().err


def test_main_import_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_import(["--help"]) == 0
    assert "asterisk" in capsys.readouterr().out
