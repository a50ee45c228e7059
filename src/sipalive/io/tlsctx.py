"""TLS contexts: verification on by default (certificate chain and host name)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from sipalive.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TlsOptions:
    ca: str | None = None  # a CA file (PEM) to trust instead of the system store
    insecure: bool = False  # no certificate or host name verification
    cert: str | None = None  # our certificate chain (client auth, or server)
    key: str | None = None


def client_context(opts: TlsOptions) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.ca)
        if opts.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if opts.cert:
            ctx.load_cert_chain(opts.cert, opts.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("--ca/--cert/--key", f"cannot load TLS material: {exc}") from exc
    return ctx


def server_context(opts: TlsOptions) -> ssl.SSLContext:
    if not opts.cert:
        raise ConfigError("--cert", "a TLS listener needs a certificate (--cert, --key)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(opts.cert, opts.key)
        if opts.ca:
            ctx.load_verify_locations(opts.ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("--cert/--key", f"cannot load TLS material: {exc}") from exc
    return ctx
