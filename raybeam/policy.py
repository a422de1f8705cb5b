"""`Retries`: how often and how patiently a failed task is tried again."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from raybeam.errors import InvalidConfiguration


@dataclasses.dataclass(frozen=True)
class Retries:
    """A retry policy with exponential backoff, for `retries=` in the decorator or `.options()`.

    Attempt n+1 starts no earlier than `min(initial_delay * backoff_coefficient**(n-1),
    max_delay)` seconds after attempt n failed; meanwhile the task is RETRY and its record has
    `next_attempt_at`. A plain int `retries=3` keeps the short default backoff.

    >>> @task_queue(retries=Retries(max_retries=5, initial_delay=2.0, max_delay=120.0))
    ... def fetch(url: str) -> bytes: ...
    """

    max_retries: int = 3
    initial_delay: float = 1.0
    backoff_coefficient: float = 2.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise InvalidConfiguration(f"max_retries must be an integer, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise InvalidConfiguration(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("initial_delay", "backoff_coefficient", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidConfiguration(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InvalidConfiguration(f"{name} must be a finite number >= 0, got {value}")
        if self.backoff_coefficient < 1:
            raise InvalidConfiguration(
                f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}"
            )

    def backoff(self) -> list[float]:
        """The backoff as the task's spec stores it."""
        return [float(self.initial_delay), float(self.backoff_coefficient), float(self.max_delay)]


def retry_settings(retries: Any) -> dict[str, Any]:
    """The spec fields for `retries=`: an int, or a `Retries` (InvalidConfiguration else)."""
    if isinstance(retries, Retries):
        return {"retries": retries.max_retries, "backoff": retries.backoff()}
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidConfiguration(
            f"retries must be an integer >= 0 or raybeam.Retries(...), got {retries!r}"
        )
    return {"retries": retries, "backoff": None}


def delay_seconds(backoff: list[float] | None, attempts: int, default: float) -> float:
    """Seconds before the attempt after attempt number `attempts` (1-based) failed."""
    if backoff is None:
        return default
    initial, coefficient, most = backoff
    return float(min(initial * coefficient ** (attempts - 1), most))
