"""``Record``: a frozen, slotted value class, for the types on ``sipalive check``'s start-up path.

It gives what ``@dataclass(frozen=True, slots=True)`` gives (equality, hashing, repr,
immutability) without importing ``dataclasses``, which drags in ``inspect`` and costs more
start-up time than the whole check otherwise takes. Subclasses list their fields in
``__slots__`` and assign them in ``__init__`` through ``_set``.
"""

from __future__ import annotations


class Record:
    __slots__ = ()

    def _fields(self) -> tuple[str, ...]:
        names: list[str] = []
        for klass in reversed(type(self).__mro__):
            names.extend(klass.__dict__.get("__slots__", ()))
        return tuple(names)

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields())

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields())
        return f"{type(self).__name__}({args})"
