"""Monitoring Plugins conventions: threshold ranges, states, perfdata.

Range syntax (Monitoring Plugins development guidelines, "Threshold and ranges"):
``10`` alerts outside 0..10, ``10:`` below 10, ``~:10`` above 10, ``10:20`` outside 10..20,
``@10:20`` inside 10..20. Here values are durations, so each end may carry a unit (150ms).
"""

from __future__ import annotations

from sipalive.cli.common import UsageError, parse_duration

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


class Range:
    __slots__ = ("end", "inside", "start", "text")

    def __init__(self, text: str, option: str) -> None:
        self.text = text
        spec = text.strip()
        self.inside = spec.startswith("@")
        if self.inside:
            spec = spec[1:]
        start_text, sep, end_text = spec.partition(":")
        if not sep:
            start_text, end_text = "0", start_text
        if not end_text and not sep:
            raise UsageError(f"{option}: empty range")
        self.start: float | None
        if start_text == "~":
            self.start = None
        else:
            self.start = parse_duration(start_text or "0", option)
        self.end: float | None = parse_duration(end_text, option) if end_text else None
        if self.start is not None and self.end is not None and self.start > self.end:
            raise UsageError(f"{option}: range start is above its end in {text!r}")

    def alert(self, value: float) -> bool:
        below = self.start is not None and value < self.start
        above = self.end is not None and value > self.end
        outside = below or above
        return not outside if self.inside else outside

    def perf(self) -> str:
        """The range in seconds for perfdata (plain end value when the range is ``0:end``)."""
        if not self.inside and self.start in (0.0, None) and self.end is not None:
            return f"{self.end:g}" if self.start == 0.0 else f"~:{self.end:g}"
        start = "~" if self.start is None else f"{self.start:g}"
        end = "" if self.end is None else f"{self.end:g}"
        return f"{'@' if self.inside else ''}{start}:{end}"


def parse_expect(text: str) -> list[tuple[int, int]]:
    """``200``, ``2xx``, ``200,404``, ``200-299``, ``any``: accepted final status codes."""
    out: list[tuple[int, int]] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "any":
            out.append((100, 699))
        elif len(item) == 3 and item[0] in "123456" and item[1:] == "xx":
            base = int(item[0]) * 100
            out.append((base, base + 99))
        elif "-" in item:
            lo, _, hi = item.partition("-")
            if not (lo.isdigit() and hi.isdigit()) or not 100 <= int(lo) <= int(hi) <= 699:
                raise UsageError(f"--expect: bad code range {item!r}")
            out.append((int(lo), int(hi)))
        elif item.isdigit() and 100 <= int(item) <= 699:
            out.append((int(item), int(item)))
        else:
            raise UsageError(
                f"--expect: expected codes like 200, 2xx, 200-299 or any, got {item!r}"
            )
    return out


def code_expected(code: int, expect: list[tuple[int, int]]) -> bool:
    return any(lo <= code <= hi for lo, hi in expect)
