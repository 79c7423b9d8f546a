"""Retry policies for task executors (``register_task_executor(..., retry=...)``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cereal.config import MAX_SECONDS, count, seconds
from cereal.errors import CerealError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how long apart, a failing task is tried.

    An attempt that raises, times out or whose process dies (it would be ``LOST``) is tried
    again after :meth:`delay` seconds while fewer than ``max_attempts`` were made and its
    workflow is live. The retry is a queued task row with its due time, so it survives the
    crash of any process. Only the last attempt's result reaches the workflow; a return value
    that is not JSON fails the task at once (retrying would not change it).
    """

    max_attempts: int = 3
    """Attempts in all, the first included (1: never retry)."""
    initial_delay: float = 1.0
    """Seconds before the second attempt (0: retry at once)."""
    backoff: float = 2.0
    """Each further delay is this many times the previous one (1: constant delays)."""
    max_delay: float = 300.0
    """No delay is longer than this (seconds)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_attempts", count("max_attempts", self.max_attempts))
        initial_delay = seconds("initial_delay", self.initial_delay, zero=True)
        object.__setattr__(self, "initial_delay", initial_delay)
        object.__setattr__(self, "max_delay", seconds("max_delay", self.max_delay, zero=True))
        backoff = self.backoff
        if (
            isinstance(backoff, bool)
            or not isinstance(backoff, int | float)
            or not 1 <= backoff <= MAX_SECONDS  # also rejects NaN and infinities
        ):
            raise CerealError(
                f"backoff must be a number from 1 to {MAX_SECONDS:g}, got {backoff!r}"
            )
        object.__setattr__(self, "backoff", float(backoff))

    def delay(self, attempt: int) -> float:
        """Seconds between attempt number ``attempt`` (1 for the first) failing and the next
        attempt: ``min(initial_delay * backoff ** (attempt - 1), max_delay)``."""
        attempt = count("attempt", attempt)
        if self.initial_delay == 0 or self.max_delay == 0:
            return 0.0
        # Compared in logarithms first, so that a long run of attempts cannot overflow.
        if math.log(self.initial_delay) + (attempt - 1) * math.log(self.backoff) >= math.log(
            self.max_delay
        ):
            return self.max_delay
        return min(self.initial_delay * self.backoff ** (attempt - 1), self.max_delay)
