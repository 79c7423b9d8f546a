"""Tools for testing applications built on cereal.

- :func:`run_callback` runs one workflow callback through the engine's own step code, with
  no database; the event builders (:func:`start_event`, :func:`task_complete_event`,
  :func:`cancel_event`, :func:`signal_event`) make its events. An executor is unit-tested in
  three lines::

      from cereal.testing import run_callback, start_event

      outcome = run_callback(MyWorkflow(), start_event(), parameters={"n": 2})
      assert outcome.decision == "continue" and outcome.task_names == ["work", "work"]

- :class:`MemoryDriver` is an in-memory storage driver for fast tests of a whole service.
- :mod:`cereal.testing.pytest_plugin` gives pytest fixtures with a real PostgreSQL.
"""

from cereal.testing.callbacks import (
    CallbackOutcome,
    Event,
    cancel_event,
    run_callback,
    signal_event,
    start_event,
    task_complete_event,
)
from cereal.testing.memory import MemoryDriver, MemoryStore

__all__ = [
    "CallbackOutcome",
    "Event",
    "MemoryDriver",
    "MemoryStore",
    "cancel_event",
    "run_callback",
    "signal_event",
    "start_event",
    "task_complete_event",
]
