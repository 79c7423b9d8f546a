"""Hooks through which the engine reports what it does, for metrics and the like.

The engine calls the module-level functions below (:func:`event_handled`,
:func:`callback_finished`, :func:`task_finished`, :func:`scheduler_lag`) at the points they
name. Nothing is recorded unless an :class:`Observer` was added with :func:`add_observer`;
until then each call costs one truth test of an empty tuple. Observers must be quick and must
not raise (an observer that raises is logged and otherwise ignored, so it can never break a
worker). This module imports no metrics library: :mod:`cereal.web.metrics` is one observer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from cereal.logging import get_logger

__all__ = [
    "Observer",
    "add_observer",
    "callback_finished",
    "event_handled",
    "remove_observer",
    "scheduler_lag",
    "task_finished",
]

log = get_logger("cereal.instrumentation")


class Observer:
    """Base class of observers: override the methods you care about (each is a no-op here)."""

    def event_handled(self, workflow_name: str, kind: str) -> None:
        """A workflow event was handled and its outcome committed.

        ``kind``: ``start``, ``task_complete``, ``cancel`` or ``signal``."""

    def callback_finished(
        self, workflow_name: str, kind: str, decision: str, seconds: float
    ) -> None:
        """A workflow callback returned after ``seconds`` of wall time.

        ``kind`` is the event kind as in :meth:`event_handled`; ``decision`` is
        ``continue``, ``complete`` or ``fail`` (a callback that raised counts as ``fail``)."""

    def task_finished(self, task_name: str, status: str, seconds: float) -> None:
        """A task run in this process ended after ``seconds`` of wall time.

        ``status`` is a :class:`~cereal.types.TaskStatus` value (``success``, ``failed``)."""

    def scheduler_lag(self, seconds: float) -> None:
        """The scheduler enqueued an occurrence ``seconds`` after it was due."""


_observers: tuple[Observer, ...] = ()
_lock = threading.Lock()


def add_observer(observer: Observer) -> Callable[[], None]:
    """Start reporting to ``observer``; return a function that stops it."""
    global _observers
    with _lock:
        _observers = (*_observers, observer)

    def remove() -> None:
        remove_observer(observer)

    return remove


def remove_observer(observer: Observer) -> None:
    """Stop reporting to ``observer`` (nothing happens if it was not added)."""
    global _observers
    with _lock:
        _observers = tuple(o for o in _observers if o is not observer)


def _failed(observer: Observer, hook: str, exc: Exception) -> None:
    log.warning("instrumentation observer raised", observer=repr(observer), hook=hook, error=exc)


def event_handled(workflow_name: str, kind: str) -> None:
    """Report one handled workflow event (see :meth:`Observer.event_handled`)."""
    for observer in _observers:
        try:
            observer.event_handled(workflow_name, kind)
        except Exception as exc:
            _failed(observer, "event_handled", exc)


def callback_finished(workflow_name: str, kind: str, decision: str, seconds: float) -> None:
    """Report one finished callback (see :meth:`Observer.callback_finished`)."""
    for observer in _observers:
        try:
            observer.callback_finished(workflow_name, kind, decision, seconds)
        except Exception as exc:
            _failed(observer, "callback_finished", exc)


def task_finished(task_name: str, status: str, seconds: float) -> None:
    """Report one finished task run (see :meth:`Observer.task_finished`)."""
    for observer in _observers:
        try:
            observer.task_finished(task_name, status, seconds)
        except Exception as exc:
            _failed(observer, "task_finished", exc)


def scheduler_lag(seconds: float) -> None:
    """Report how late the scheduler enqueued an occurrence (see
    :meth:`Observer.scheduler_lag`)."""
    for observer in _observers:
        try:
            observer.scheduler_lag(seconds)
        except Exception as exc:
            _failed(observer, "scheduler_lag", exc)
