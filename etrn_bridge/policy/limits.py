"""Rate limits and flush coalescing settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LimitSettings:
    pass


def parse_limits(section: Mapping[str, Any]) -> LimitSettings:
    return LimitSettings()
