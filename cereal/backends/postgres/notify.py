"""The NOTIFY payloads of one schema's channel: the only place their format is defined.

Every process of one schema listens on the channel ``cereal_<schema>``. A payload is one
letter saying what changed, followed by what it concerns:

=========================  ==================================================
``e<workflow name>``       :class:`~cereal.driver.EventsPending`
``t<task name>``           :class:`~cereal.driver.TasksQueued`
``f<instance id>``         :class:`~cereal.driver.InstanceFinished`
``s``                      :class:`~cereal.driver.SchedulesChanged`
=========================  ==================================================

Statements whose notification must commit atomically with their writes build these
payloads in SQL (``pg_notify(channel, 'e' || workflow_name)`` and the like in
``queries.sql``: ``enqueue_workflow``, ``cancel_workflow``, ``kill_workflow``,
``fail_instance`` and ``complete_tasks``); everything else goes through :func:`encode`.
"""

from __future__ import annotations

from cereal.driver import (
    EventsPending,
    InstanceFinished,
    SchedulesChanged,
    TasksQueued,
    Wakeup,
)

__all__ = ["channel_name", "decode", "encode"]


def channel_name(schema: str) -> str:
    """The channel the processes of ``schema`` listen on."""
    return f"cereal_{schema}"


def encode(wakeup: Wakeup) -> str:
    """The payload announcing ``wakeup``."""
    if isinstance(wakeup, EventsPending):
        return "e" + wakeup.workflow_name
    if isinstance(wakeup, TasksQueued):
        return "t" + wakeup.task_name
    if isinstance(wakeup, InstanceFinished):
        return f"f{wakeup.instance_id}"
    return "s"


def decode(payload: str) -> Wakeup | None:
    """The wakeup a payload announces; None for a payload this version does not know.

    A wakeup is only a hint to look: any role that can connect may send any payload on
    the channel, so the receiver acts on what the database confirms, never on the payload.
    """
    kind, rest = payload[:1], payload[1:]
    if kind == "e":
        return EventsPending(rest)
    if kind == "t":
        return TasksQueued(rest)
    if kind == "f":
        # Anyone who can connect can send anything: only plain ASCII digits are an id.
        return InstanceFinished(int(rest)) if rest.isascii() and rest.isdigit() else None
    if kind == "s":
        return SchedulesChanged()
    return None
