"""Rate limits: their settings ("10/60s") and a bounded sliding-window limiter."""

from __future__ import annotations

import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

# "N/<window><unit>" or "off"; the schema uses the same pattern for editors.
RATE_PATTERN = r"^(off|[1-9][0-9]*/[0-9]+(\.[0-9]+)?(ms|s|m|h))$"
_RATE = re.compile(r"([1-9][0-9]*)/([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
RATE_OFF = "off"

# One backend run per target per minute: a flood of ETRN makes one flush.
DEFAULT_PER_TARGET = "1/60s"
# Sendmail's MAXETRNCOMMANDS is 8 per session; a client gets 10 per minute over all sessions.
DEFAULT_PER_CLIENT = "10/60s"
DEFAULT_MAX_CONCURRENT_FLUSHES = 4
# Keys (targets, clients) remembered at most; the least recently used is forgotten first.
DEFAULT_STATE_CAPACITY = 65_536


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    window: float  # seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}s"


def parse_rate(text: str) -> Rate | None:
    """``"10/60s"`` -> Rate(10, 60.0); ``"off"`` -> None. Raises ValueError otherwise."""
    if text == RATE_OFF:
        return None
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not 'N/<number><ms|s|m|h>' or 'off'")
    window = float(match[2]) * _UNIT_SECONDS[match[3]]
    if window <= 0:
        raise ValueError(f"{text!r}: the window must be longer than zero")
    return Rate(int(match[1]), window)


@dataclass(frozen=True, slots=True)
class LimitSettings:
    per_target: Rate | None = Rate(1, 60.0)
    per_client: Rate | None = Rate(10, 60.0)
    max_concurrent_flushes: int = DEFAULT_MAX_CONCURRENT_FLUSHES


@dataclass(frozen=True, slots=True)
class EntryLimits:
    """Per-entry overrides; ``None`` keeps the global setting."""

    per_target: Rate | None = None
    per_target_set: bool = False
    per_client: Rate | None = None
    per_client_set: bool = False

    def apply(self, settings: LimitSettings) -> tuple[Rate | None, Rate | None]:
        """(per_target, per_client) in force for a request this entry allowed."""
        return (
            self.per_target if self.per_target_set else settings.per_target,
            self.per_client if self.per_client_set else settings.per_client,
        )


RateProblem = Callable[[tuple[str, ...], str], None]


def parse_limits(section: Mapping[str, Any], problem: RateProblem) -> LimitSettings:
    """The ``limits:`` section; shape errors are the schema's, ``problem`` gets the rest."""
    per_target = _rate_setting(section, "per_target", DEFAULT_PER_TARGET, problem)
    per_client = _rate_setting(section, "per_client", DEFAULT_PER_CLIENT, problem)
    concurrent = section.get("max_concurrent_flushes", DEFAULT_MAX_CONCURRENT_FLUSHES)
    if not isinstance(concurrent, int) or concurrent < 1:
        concurrent = DEFAULT_MAX_CONCURRENT_FLUSHES  # the schema reported it
    return LimitSettings(per_target, per_client, concurrent)


def parse_entry_limits(section: Mapping[str, Any], problem: RateProblem) -> EntryLimits:
    return EntryLimits(
        per_target=_rate_setting(section, "per_target", RATE_OFF, problem),
        per_target_set="per_target" in section,
        per_client=_rate_setting(section, "per_client", RATE_OFF, problem),
        per_client_set="per_client" in section,
    )


def _rate_setting(
    section: Mapping[str, Any], key: str, default: str, problem: RateProblem
) -> Rate | None:
    text = section.get(key, default)
    if not isinstance(text, str) or not re.match(RATE_PATTERN, text):
        return parse_rate(default)  # the schema reported the shape
    try:
        return parse_rate(text)
    except ValueError as exc:
        problem((key,), str(exc))
        return parse_rate(default)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLru(Generic[K, V]):
    """A dict that forgets its least recently used key beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class SlidingWindow:
    """At most ``rate.count`` events per key in any ``rate.window`` seconds.

    Each key keeps the times of its last events only (at most ``count`` of
    them), and at most ``capacity`` keys are kept, so memory is bounded.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_STATE_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._events: BoundedLru[Hashable, deque[float]] = BoundedLru(capacity)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._events)

    def full(self, key: Hashable, rate: Rate) -> bool:
        """Whether ``key`` has used up its rate (without counting a new event)."""
        events = self._events.get(key)
        if events is None:
            return False
        horizon = self._clock() - rate.window
        while events and events[0] <= horizon:
            events.popleft()
        return len(events) >= rate.count

    def record(self, key: Hashable, rate: Rate) -> None:
        events = self._events.get(key)
        if events is None:
            events = deque()
            self._events.put(key, events)
        events.append(self._clock())
        while len(events) > rate.count:
            events.popleft()

    def admit(self, key: Hashable, rate: Rate) -> bool:
        """Count one event for ``key`` if the rate allows it; False when it does not."""
        if self.full(key, rate):
            return False
        self.record(key, rate)
        return True
