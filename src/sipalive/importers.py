"""Targets from other systems' configuration: Asterisk ``pjsip.conf`` and Kamailio
``dispatcher.list``, written out as a sipalive config (``sipalive import ...``).

Asterisk (res_pjsip): every ``type=aor`` section with static ``contact=`` URIs becomes one
target per contact, named after the AOR (``NAME-1``, ``NAME-2``, ... when it has several),
keeping ``qualify_frequency`` (0 or absent: Asterisk does not qualify it, and sipalive shows
it as nonqualified), ``qualify_timeout`` and ``qualify_2xx_only``. The endpoint that lists
the AOR in ``aors=`` adds the protocol of its ``transport=`` and the username and password
of its ``outbound_auth=`` (a userpass auth section): Asterisk answers a 401/407 to its
qualify OPTIONS with those whatever ``authenticate_qualify`` says, which it documents as
doing nothing, so sipalive does the same. The config syntax is Asterisk's: ``;`` comments
(``\\;`` for a literal one), ``;-- block --;`` comments, ``=>`` for ``=``, ``+=``,
templates ``[name](!)``, inheritance ``[name](tpl1,tpl2)`` and additions ``[name](+)``.
``#include`` and ``#exec`` are not followed (a warning says so): import each file.

Kamailio (dispatcher module): every ``setid destination [flags [priority [attrs]]]`` line
becomes a target in group ``set<setid>``, named after its ``duid`` attribute or
``set<setid>-<n>`` (the n-th line of the set); ``ping_from`` becomes ``from_uri``, and a
destination Kamailio never pings (flags 4, admin disabled, or 32, no ping) gets
``qualify_frequency = 0``. The module-wide ping settings live in kamailio.cfg, not here.

Errors name the input file and line (``pjsip.conf:12: qualify_timeout``); each target is
checked with :func:`sipalive.config.check_target`, so the output always loads.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sipalive.config import TargetTable, check_target, dump_targets_toml
from sipalive.errors import ConfigError
from sipalive.sip.uri import TRANSPORTS

Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    """The default ``warn``: importers are quiet unless the caller listens."""


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._@+:~-]")


def _target_name(text: str) -> str:
    """A name config.py accepts: other characters become "-", at most 128 of them."""
    return _UNSAFE_NAME_CHARS.sub("-", text)[:128] or "-"


def _unique(name: str, taken: set[str], where: str, warn: Warn) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    warn(f"{where}: name {name!r} is taken; using {name}-{n}")
    return f"{name}-{n}"


def _checked(
    table: TargetTable, source: str, lines: Mapping[str, int], labels: Mapping[str, str]
) -> None:
    """Validate a target, reporting a mistake at the input line that holds the value."""
    try:
        check_target(table, source)
    except ConfigError as exc:
        path = exc.where.removeprefix(f"{source}: ")
        key = re.match(r"[a-z0-9_]*", path)
        name = key.group() if key else ""
        line = lines.get(name, lines["name"])
        raise ConfigError(f"{source}:{line}: {labels.get(name, path)}", exc.reason) from None


# ---------------------------------------------------------------------------------------------
# Asterisk


@dataclass
class _Section:
    name: str
    line: int
    template: bool = False
    options: list[tuple[str, str, int]] = field(default_factory=list)
    """(key, value, line) in file order, inherited ones first, as Asterisk keeps them."""

    def get(self, key: str) -> tuple[str, int] | None:
        """The last value set for ``key`` (a later line overrides an earlier or inherited one)."""
        for k, value, line in reversed(self.options):
            if k == key:
                return value, line
        return None

    def value(self, key: str, default: str = "") -> str:
        found = self.get(key)
        return found[0] if found else default

    def all(self, key: str) -> list[tuple[str, int]]:
        return [(value, line) for k, value, line in self.options if k == key]


_HEADER = re.compile(r"\[([^\]]+)\]\s*(?:\(([^)]*)\))?")


def _strip_comment(line: str, in_block: bool) -> tuple[str, bool]:
    """Drop ``;`` comments and ``;-- --;`` block comments; ``\\;`` is a literal ``;``."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("--;", i)
            if end < 0:
                break
            i, in_block = end + 3, False
        elif line.startswith("\\;", i):
            out.append(";")
            i += 2
        elif line.startswith(";--", i):
            i, in_block = i + 3, True
        elif line[i] == ";":
            break
        else:
            out.append(line[i])
            i += 1
    return "".join(out), in_block


def _find(sections: Sequence[_Section], name: str, filters: Sequence[str] = ()) -> _Section | None:
    """The first section of that name whose options match every ``key=value`` filter."""
    for section in sections:
        if section.name == name and all(
            section.value(k.strip().lower()) == v.strip()
            for k, _, v in (f.partition("=") for f in filters)
        ):
            return section
    return None


def _parse_asterisk(text: str, source: str, warn: Warn) -> list[_Section]:
    sections: list[_Section] = []
    current: _Section | None = None
    in_block = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line, in_block = _strip_comment(raw, in_block)
        line = line.strip()
        if not line:
            continue
        where = f"{source}:{lineno}"
        if line.startswith("#"):
            directive = line.split(None, 1)[0]
            warn(f"{where}: {directive} not followed; import that file on its own")
            continue
        if line.startswith("["):
            match = _HEADER.fullmatch(line)
            if match is None:
                raise ConfigError(
                    where, f"expected a section header like [name](template), got {line!r}"
                )
            current = _Section(match.group(1).strip(), lineno)
            appended = False
            for option in (o.strip() for o in (match.group(2) or "").split(",")):
                if option == "!":
                    current.template = True
                elif option.startswith("+"):
                    base = _find(
                        sections, current.name, option[1:].split("&") if option[1:] else ()
                    )
                    if base is None:
                        raise ConfigError(
                            where, f"[{current.name}](+) adds to a section not defined above"
                        )
                    base.template |= current.template
                    base.options += current.options
                    current, appended = base, True
                elif option:
                    template = _find(sections, option)
                    if template is None:
                        raise ConfigError(where, f"template {option!r} is not defined above")
                    current.options += template.options
            if not appended:
                sections.append(current)
            continue
        if current is None:
            raise ConfigError(where, f"option outside any [section]: {line!r}")
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(where, f"expected 'name = value', got {line!r}")
        value = value.removeprefix(">").strip()
        if key.endswith("+"):
            key = key[:-1].strip().lower()
            previous = current.get(key)
            if previous is not None:
                value = previous[0] + value
        current.options.append((key.strip().lower(), value, lineno))
    return sections


_TRUE = frozenset({"yes", "true", "y", "t", "1", "on"})
_FALSE = frozenset({"no", "false", "n", "f", "0", "off"})


def _ast_bool(value: str, where: str, key: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(where, f"{key}: expected yes or no, got {value!r}")


def _ast_number(value: str, where: str, key: str, convert: Callable[[str], float]) -> float:
    try:
        return convert(value)
    except ValueError:
        raise ConfigError(where, f"{key}: expected a number, got {value!r}") from None


def import_asterisk(pjsip_conf_text: str, source: str, warn: Warn = _ignore) -> list[TargetTable]:
    """Targets from the AORs with static contacts of a pjsip.conf (see the module docstring)."""
    sections = [s for s in _parse_asterisk(pjsip_conf_text, source, warn) if not s.template]

    def of_type(kind: str) -> list[_Section]:
        return [s for s in sections if s.value("type").lower() == kind]

    endpoints = of_type("endpoint")
    transports = of_type("transport")
    auths = of_type("auth")
    targets: list[TargetTable] = []
    taken: set[str] = set()
    no_contact = 0
    for aor in of_type("aor"):
        contacts = [
            (uri.strip().strip("<>"), line)
            for value, line in aor.all("contact")
            for uri in value.split(",")
            if uri.strip()
        ]
        if not contacts:
            no_contact += 1
            continue
        common: TargetTable = {}
        lines = {"name": aor.line}
        for key, convert in (("qualify_frequency", int), ("qualify_timeout", float)):
            found = aor.get(key)
            if found is not None:
                common[key] = _ast_number(found[0], f"{source}:{found[1]}", key, convert)
                lines[key] = found[1]
        if "qualify_frequency" not in common:
            common["qualify_frequency"] = 0  # Asterisk's default: not qualified
        found = aor.get("qualify_2xx_only")
        if found is not None:
            common["qualify_2xx_only"] = _ast_bool(
                found[0], f"{source}:{found[1]}", "qualify_2xx_only"
            )
            lines["qualify_2xx_only"] = found[1]
        endpoint = next(
            (e for e in endpoints if aor.name in (a.strip() for a in e.value("aors").split(","))),
            None,
        )
        if endpoint is not None:
            _from_endpoint(endpoint, transports, auths, common, lines, source, warn)
        for n, (uri, line) in enumerate(contacts, 1):
            name = aor.name if len(contacts) == 1 else f"{aor.name}-{n}"
            name = _unique(_target_name(name), taken, f"{source}:{line}", warn)
            taken.add(name)
            table: TargetTable = {"name": name, "uri": uri, **common}
            if "transport" in table and re.search(r";\s*transport=", uri, re.IGNORECASE):
                del table["transport"]  # the contact's own ;transport= says it already
            _checked(
                table,
                source,
                {**lines, "uri": line},
                {"uri": "contact", "auth_username": "username", "auth_password": "password"},
            )
            targets.append(table)
    if no_contact:
        warn(f"{source}: {no_contact} AOR(s) without a static contact= skipped (registrations)")
    return targets


def _from_endpoint(
    endpoint: _Section,
    transports: Sequence[_Section],
    auths: Sequence[_Section],
    table: TargetTable,
    lines: dict[str, int],
    source: str,
    warn: Warn,
) -> None:
    """The transport protocol and outbound credentials an endpoint lends its AORs."""
    found = endpoint.get("transport")
    if found is not None:
        transport = _find(transports, found[0])
        protocol = transport.value("protocol", "udp").lower() if transport else None
        if protocol in TRANSPORTS:
            table["transport"] = protocol
            lines["transport"] = found[1]
        else:
            warn(f"{source}:{found[1]}: transport {found[0]!r} not found or not usable; ignored")
    found = endpoint.get("outbound_auth")
    if found is None:
        return
    auth_name = found[0].split(",")[0].strip()
    auth = _find(auths, auth_name)
    if auth is None or auth.value("auth_type", "userpass").lower() != "userpass":
        warn(
            f"{source}:{found[1]}: outbound_auth {auth_name!r} is not a userpass auth section; "
            "no credentials imported"
        )
        return
    for ours, theirs in (("auth_username", "username"), ("auth_password", "password")):
        option = auth.get(theirs)
        if option is not None:
            table[ours] = option[0]
            lines[ours] = option[1]


# ---------------------------------------------------------------------------------------------
# Kamailio

_NOT_PINGED = 4 | 32  # DS_DISABLED_DST, DS_NOPING_DST: ds_ping_set() skips these


def _kamailio_int(text: str, where: str, what: str) -> int:
    try:
        return int(text[2:], 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise ConfigError(where, f"{what}: expected an integer, got {text!r}") from None


def import_kamailio_dispatcher(text: str, source: str, warn: Warn = _ignore) -> list[TargetTable]:
    """Targets from a dispatcher.list (see the module docstring)."""
    targets: list[TargetTable] = []
    taken: set[str] = set()
    per_set: dict[int, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        # Like ds_load_list(): "#" starts a comment where a field would start.
        cut = next((i for i, t in enumerate(tokens) if t.startswith("#")), len(tokens))
        tokens = tokens[:cut]
        if not tokens:
            continue
        where = f"{source}:{lineno}"
        if len(tokens) < 2 or not tokens[0].isdigit():
            raise ConfigError(
                where,
                f"expected 'setid destination [flags [priority [attrs]]]', got {raw.strip()!r}",
            )
        setid = int(tokens[0])
        flags = _kamailio_int(tokens[2], where, "flags") if len(tokens) > 2 else 0
        if len(tokens) > 3:
            _kamailio_int(tokens[3], where, "priority")
        attrs: dict[str, str] = {}
        for pair in tokens[4].split(";") if len(tokens) > 4 else ():
            key, _, value = pair.partition("=")
            if key.strip():
                attrs[key.strip().lower()] = value.strip().strip('"')
        per_set[setid] = per_set.get(setid, 0) + 1
        name = attrs.get("duid") or f"set{setid}-{per_set[setid]}"
        name = _unique(_target_name(name), taken, where, warn)
        taken.add(name)
        table: TargetTable = {"name": name, "uri": tokens[1], "group": f"set{setid}"}
        if flags & _NOT_PINGED:
            table["qualify_frequency"] = 0
        if attrs.get("ping_from"):
            table["from_uri"] = attrs["ping_from"]
        _checked(table, source, {"name": lineno}, {"uri": "destination", "from_uri": "ping_from"})
        targets.append(table)
    return targets


# ---------------------------------------------------------------------------------------------
# sipalive import FORMAT FILE [-o OUTPUT]

_IMPORTERS: dict[str, Callable[[str, str, Warn], list[TargetTable]]] = {
    "asterisk": import_asterisk,
    "kamailio": import_kamailio_dispatcher,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipalive import",
        description="Write a sipalive target file from another system's configuration.",
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    for name, help_text, file_help in (
        ("asterisk", "AORs with static contacts from pjsip.conf", "pjsip.conf ('-' for stdin)"),
        ("kamailio", "destinations from a dispatcher.list", "dispatcher.list ('-' for stdin)"),
    ):
        sub = formats.add_parser(name, help=help_text, description=f"Import {help_text}.")
        sub.add_argument("file", metavar="FILE", help=file_help)
        sub.add_argument("-o", "--output", metavar="OUTPUT", help="write here (default: stdout)")
    return parser


def _write(path: str, text: str, secret: bool) -> None:
    """Replace ``path`` atomically; a file holding passwords is readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sipalive-import-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600 if secret else 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main_import(argv: list[str]) -> int:
    """``sipalive import {asterisk,kamailio} FILE [-o OUTPUT]``: 0 done, 1 bad input, 2 usage."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else 2
    fmt, path, output = args.format, args.file, args.output

    def warn(message: str) -> None:
        sys.stderr.write(f"sipalive import: warning: {message}\n")

    try:
        if path == "-":
            source, text = "<stdin>", sys.stdin.read()
        else:
            source = path
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        targets = _IMPORTERS[fmt](text, source, warn)
        header = f"Targets imported by `sipalive import {fmt}` from {os.path.basename(source)}."
        toml = dump_targets_toml(targets, header)
        if output is None:
            sys.stdout.write(toml)
        else:
            _write(output, toml, any("auth_password" in t for t in targets))
    except ConfigError as exc:
        sys.stderr.write(f"sipalive import: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"sipalive import: {exc.filename or path}: {exc.strerror or exc}\n")
        return 1
    sys.stderr.write(f"sipalive import: {len(targets)} target(s) from {source}\n")
    return 0
