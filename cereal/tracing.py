"""OpenTelemetry spans for enqueues, workflow callbacks and task runs.

Spans are recorded only when the OpenTelemetry API is installed (``pip install cereal[otel]``)
and an SDK tracer provider is configured (``opentelemetry.trace.set_tracer_provider``).
Otherwise every function here returns a shared no-op object after one cheap check (cereal
imports ``opentelemetry`` on the first such check, never at import time, and works without it).

The trace follows a run across processes: :func:`enqueue_span` opens ``cereal.enqueue
<workflow>`` in the caller's current trace and returns its context as text (the propagator's
carrier, normally W3C ``traceparent``/``tracestate``), which is stored with the instance. Each
callback (``cereal.callback <workflow>``) is a child of that context, and each task a callback
enqueues stores the callback span's context, so its run (``cereal.task <task>``) is a child of
the callback, in whichever process runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from types import ModuleType, TracebackType
from typing import Any

__all__ = [
    "ATTR_DECISION",
    "ATTR_EVENT_KIND",
    "ATTR_INSTANCE",
    "ATTR_TASK",
    "ATTR_TASK_STATUS",
    "ATTR_WORKFLOW",
    "Span",
    "bulk_enqueue_span",
    "callback_span",
    "enabled",
    "enqueue_span",
    "task_span",
]

ATTR_WORKFLOW = "cereal.workflow.name"
ATTR_INSTANCE = "cereal.workflow.instance"
ATTR_EVENT_KIND = "cereal.event.kind"
ATTR_DECISION = "cereal.decision"
ATTR_TASK = "cereal.task.name"
ATTR_TASK_STATUS = "cereal.task.status"
_ATTR_COUNT = "cereal.workflow.count"


class Span:
    """What the engine holds while a span is open; this base class records nothing.

    Use as a context manager; :meth:`finish` records the outcome (and an error, which marks
    the span failed); :attr:`context` is the span's trace context as text, for storage.
    """

    __slots__ = ()

    @property
    def context(self) -> str | None:
        """The span's trace context as text (None when nothing is recorded)."""
        return None

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def finish(self, outcome: str, error: str | None = None) -> None:
        """Record the decision or task status (and the error, if it failed)."""

    def name_run(self, workflow_name: str, instance_name: str) -> None:
        """Say which run a :func:`schedule_span` enqueued (only that span keeps it)."""


_NOOP = Span()

_otel: tuple[ModuleType, ModuleType, ModuleType] | None = None
_missing = False
_tracer_of: tuple[object, Any] | None = None


_UNKNOWN = object()
_from_environment = False
"""True when the provider is named by ``OTEL_PYTHON_TRACER_PROVIDER`` (loaded on first use)."""


def _modules() -> tuple[ModuleType, ModuleType, ModuleType] | None:
    global _otel, _missing, _from_environment
    if _otel is None and not _missing:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            _missing = True
            return None
        _from_environment = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        _otel = (trace, context, propagate)
    return _otel


def _tracer() -> Any:
    """The ``cereal`` tracer of the configured SDK, or None (no API, or no SDK set up)."""
    global _tracer_of
    otel = _modules()
    if otel is None:
        return None
    trace = otel[0]
    # Fast path while nothing is configured: the API keeps the provider set by
    # set_tracer_provider in this module global (None until then). Reading it directly
    # saves the environment lookup get_tracer_provider() makes on every call.
    if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _from_environment:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    cached = _tracer_of
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer("cereal")
    _tracer_of = (provider, tracer)
    return tracer


def enabled() -> bool:
    """True when spans are recorded (the API is installed and an SDK is configured)."""
    return _tracer() is not None


class _Recording(Span):
    __slots__ = ("_attributes", "_key", "_kind", "_name", "_parent", "_span", "_token", "_tracer")

    def __init__(
        self,
        tracer: Any,
        name: str,
        kind: str,
        attributes: dict[str, Any],
        outcome_key: str,
        parent: str | None,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._key = outcome_key
        self._parent = parent
        self._span: Any = None
        self._token: object = None

    def __enter__(self) -> Span:
        trace, context, propagate = _otel  # type: ignore[misc]
        parent = None
        if self._parent is not None:
            carrier = _decode(self._parent)
            if carrier:
                parent = propagate.extract(carrier)
        self._span = self._tracer.start_span(
            self._name,
            context=parent,
            kind=getattr(trace.SpanKind, self._kind),
            attributes=self._attributes,
        )
        self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        trace, context, _ = _otel  # type: ignore[misc]
        if exc is not None:
            self._span.record_exception(exc)
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, repr(exc)))
        context.detach(self._token)
        self._span.end()

    def finish(self, outcome: str, error: str | None = None) -> None:
        self._span.set_attribute(self._key, outcome)
        if error is not None:
            trace = _otel[0]  # type: ignore[index]
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, error))

    @property
    def context(self) -> str | None:
        if self._span is None:
            return None
        trace, _, propagate = _otel  # type: ignore[misc]
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(self._span))
        return json.dumps(carrier, separators=(",", ":"), sort_keys=True) if carrier else None


class _Scheduled(_Recording):
    """A scheduler pass's span: recorded only once :meth:`name_run` says it enqueued a run."""

    __slots__ = ("_named",)

    def __init__(self, tracer: Any) -> None:
        super().__init__(tracer, "cereal.schedule", "PRODUCER", {}, "cereal.enqueued", None)
        self._named = False

    def name_run(self, workflow_name: str, instance_name: str) -> None:
        self._named = True
        self._span.update_name(f"cereal.schedule {workflow_name}")
        self._span.set_attributes({ATTR_WORKFLOW: workflow_name, ATTR_INSTANCE: instance_name})

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._named or exc is not None:
            super().__exit__(exc_type, exc, tb)
        else:  # nothing was due: a span never ended is never exported
            _otel[1].detach(self._token)  # type: ignore[index]


def _decode(text: str) -> dict[str, str] | None:
    try:
        carrier = json.loads(text)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return {str(k): str(v) for k, v in carrier.items()}


def enqueue_span(workflow_name: str, instance_name: str) -> Span:
    """The span of one enqueue, a child of the caller's current span. Its
    :attr:`Span.context` is what to store with the instance."""
    tracer = _tracer()
    if tracer is None:
        return _NOOP
    return _Recording(
        tracer,
        f"cereal.enqueue {workflow_name}",
        "PRODUCER",
        {ATTR_WORKFLOW: workflow_name, ATTR_INSTANCE: instance_name},
        "cereal.enqueued",
        None,
    )


def schedule_span() -> Span:
    """The span of one scheduler pass that may enqueue a scheduled run. Its
    :attr:`Span.context` is stored with the run, whose callbacks and tasks then form one
    trace under it; :meth:`Span.name_run` names the run. A pass that enqueues nothing
    records nothing."""
    tracer = _tracer()
    if tracer is None:
        return _NOOP
    return _Scheduled(tracer)


def bulk_enqueue_span(items: Sequence[tuple[str, str, Any]]) -> Span:
    """The span of one bulk enqueue of ``(workflow_name, instance_name, ...)`` items: every
    instance it inserts stores its context, so their runs share one trace."""
    tracer = _tracer()
    if tracer is None:
        return _NOOP
    names = sorted({item[0] for item in items})
    label = names[0] if len(names) == 1 else "*"
    return _Recording(
        tracer,
        f"cereal.enqueue {label}",
        "PRODUCER",
        {ATTR_WORKFLOW: label, _ATTR_COUNT: len(items)},
        "cereal.enqueued",
        None,
    )


def callback_span(workflow_name: str, instance_name: str, kind: str, parent: str | None) -> Span:
    """The span of one workflow callback for an event of ``kind``, a child of the stored
    context ``parent`` (a new trace when None). :meth:`Span.finish` takes the decision
    (``continue``, ``complete``, ``fail``)."""
    tracer = _tracer()
    if tracer is None:
        return _NOOP
    return _Recording(
        tracer,
        f"cereal.callback {workflow_name}",
        "CONSUMER",
        {ATTR_WORKFLOW: workflow_name, ATTR_INSTANCE: instance_name, ATTR_EVENT_KIND: kind},
        ATTR_DECISION,
        parent,
    )


def task_span(task_name: str, workflow_name: str, instance_name: str, parent: str | None) -> Span:
    """The span of one task run, a child of the stored context ``parent`` (the callback that
    enqueued it). :meth:`Span.finish` takes the :class:`~cereal.types.TaskStatus` value."""
    tracer = _tracer()
    if tracer is None:
        return _NOOP
    return _Recording(
        tracer,
        f"cereal.task {task_name}",
        "CONSUMER",
        {ATTR_TASK: task_name, ATTR_WORKFLOW: workflow_name, ATTR_INSTANCE: instance_name},
        ATTR_TASK_STATUS,
        parent,
    )
