"""A background thread that runs one duty periodically and can be woken early."""

from __future__ import annotations

import random
import threading

from cereal.errors import DatabaseError
from cereal.logging import get_logger

__all__ = ["PeriodicService"]

_jitter = random.Random()
"""The services' own generator: the application's global random state is left alone."""


class PeriodicService:
    """Runs :meth:`run_once` in its own thread until stopped.

    ``run_once`` returns the seconds to sleep before the next run (None: the default
    ``interval``). :meth:`wake` cuts the current sleep short. Exceptions are logged and
    retried with backoff, so a database outage never kills the service.
    """

    name = "service"

    def __init__(self, interval: float, *, jitter: float = 0.0) -> None:
        self.interval = interval
        self.jitter = jitter
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log = get_logger(f"cereal.{self.name}")

    def run_once(self) -> float | None:
        raise NotImplementedError

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed runs in a row (exponential backoff)."""
        return min(0.5 * 2.0**failures, 10.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"cereal-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                delay = self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = self.retry_delay(failures)
                transient = isinstance(exc, DatabaseError) and exc.transient
                level = self.log.warning if transient else self.log.error
                level(f"{self.name} failed; retrying", error=repr(exc), retry_in=delay)
            if delay is None:
                delay = self.interval
            if self.jitter:
                delay = max(0.0, delay - _jitter.uniform(0, self.jitter))
            self._wake.wait(delay)
