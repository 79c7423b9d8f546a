"""The NOTIFY payloads of one schema's channel: the only place their format is defined.

Every process of one schema listens on the channel ``cereal_<schema>``. A payload is one
letter saying what changed, followed by what it concerns:

=========================  ==================================================
``e<workflow name>``       :class:`~cereal.driver.EventsPending`
``t<task name>``           :class:`~cereal.driver.TasksQueued`
``f<id>[,<id>...]``        :class:`~cereal.driver.InstanceFinished`, one per id
``s``                      :class:`~cereal.driver.SchedulesChanged`
=========================  ==================================================

A commit that finishes many instances announces them in a few payloads of many ids each
(:func:`encode_finished`), not one notification per instance: every listening session of the
schema receives every notification, and the server's queue of them is shared and bounded.

Statements whose notification must commit atomically with their writes build these
payloads in SQL (``pg_notify(channel, 'e' || workflow_name)`` and the like in
``queries.sql``: ``enqueue_workflow``, ``cancel_workflow``, ``kill_workflow``,
``fail_instance`` and ``complete_tasks``); everything else goes through :func:`encode`.
"""

from __future__ import annotations

from collections.abc import Iterable

from cereal.driver import (
    EventsPending,
    InstanceFinished,
    SchedulesChanged,
    TasksQueued,
    Wakeup,
)

__all__ = ["channel_name", "decode", "encode", "encode_finished"]

FINISHED_PAYLOAD_CHARS = 7000
"""Longest payload :func:`encode_finished` writes (PostgreSQL refuses 8000 bytes or more)."""


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


def encode_finished(instance_ids: Iterable[int]) -> list[str]:
    """Payloads announcing that these instances finished: as few as fit the ids, in order."""
    payloads: list[str] = []
    current = ""
    for instance_id in instance_ids:
        if current and len(current) + 1 + len(str(instance_id)) > FINISHED_PAYLOAD_CHARS:
            payloads.append(current)
            current = ""
        current = f"{current},{instance_id}" if current else f"f{instance_id}"
    if current:
        payloads.append(current)
    return payloads


def decode(payload: str) -> list[Wakeup]:
    """The wakeups a payload announces; none for a payload this version does not know.

    A wakeup is only a hint to look: any role that can connect may send any payload on
    the channel, so the receiver acts on what the database confirms, never on the payload.
    """
    kind, rest = payload[:1], payload[1:]
    if kind == "e":
        return [EventsPending(rest)]
    if kind == "t":
        return [TasksQueued(rest)]
    if kind == "f":
        # Anyone who can connect can send anything: only plain ASCII digits are ids.
        ids = rest.split(",")
        if all(i.isascii() and i.isdigit() for i in ids):
            return [InstanceFinished(int(i)) for i in ids]
        return []
    if kind == "s":
        return [SchedulesChanged()]
    return []
