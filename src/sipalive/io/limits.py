"""Admission policy for the responder: an allow-list of networks and a per-source token bucket.

Time is an argument; the table of sources is bounded (oldest sources are forgotten first).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from sipalive.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_rate(text: str) -> float:
    """``100/s``, ``6000/m``, ``100`` (per second)."""
    value, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}.get(unit.strip())
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if per is None or not rate > 0:
        raise ConfigError("--rate-limit", f"expected N/s, N/m or N/h with N > 0, got {text!r}")
    return rate / per


def parse_networks(items: list[str]) -> list[Network]:
    nets: list[Network] = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError("--allow", f"not a CIDR network: {item!r} ({exc})") from exc
    return nets


class Admission:
    def __init__(
        self,
        allow: list[Network] | None = None,
        rate: float | None = None,
        burst: float | None = None,
        max_sources: int = 65536,
    ) -> None:
        self.allow = allow or []
        self.rate = rate
        self.burst = burst if burst is not None else (max(1.0, rate) if rate else 0.0)
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._allowed_cache: dict[str, bool] = {}
        self.denied = 0
        self.limited = 0

    def allowed(self, ip: str) -> bool:
        if not self.allow:
            return True
        cached = self._allowed_cache.get(ip)
        if cached is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                cached = False
            else:
                cached = any(addr in net for net in self.allow)
            if len(self._allowed_cache) > self.max_sources:
                self._allowed_cache.clear()
            self._allowed_cache[ip] = cached
        return cached

    def admit(self, ip: str, now: float) -> bool:
        if not self.allowed(ip):
            self.denied += 1
            return False
        if self.rate is None:
            return True
        tokens, last = self._buckets.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            self.limited += 1
            return False
        self._buckets[ip] = (tokens - 1.0, now)
        self._buckets.move_to_end(ip)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return True
