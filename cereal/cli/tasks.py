"""``cereal tasks list``: queued and running tasks, with the age of each heartbeat."""

from __future__ import annotations

import argparse
from typing import Any

from cereal.cli.options import EXIT_OK, Context, add_option, add_output_options, positive_int
from cereal.cli.output import emit_json, print_table

__all__ = ["add_parser"]

_HEADINGS = (
    "ID",
    "TASK",
    "WORKFLOW",
    "INSTANCE",
    "STATE",
    "TRY",
    "ENQUEUED",
    "HEARTBEAT",
    "PARAMETERS",
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("tasks", help="queued and running tasks")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="queued and running tasks, oldest first")
    add_option(lst, "--task", metavar="NAME", help="only tasks with this name")
    add_option(lst, "--limit", metavar="N", type=positive_int, help="at most N rows")
    add_output_options(lst)
    lst.set_defaults(run=_list)


def _list(ctx: Context, args: argparse.Namespace) -> int:
    tasks = ctx.driver().list_tasks(task_name=args.task, limit=args.limit)
    if args.json:
        emit_json(
            [
                {
                    "id": t.id,
                    "task_name": t.task_name,
                    "workflow_name": t.workflow_name,
                    "instance_name": t.instance_name,
                    "state": t.state,
                    "parameters": t.parameters,
                    "enqueued_at": t.enqueued_at,
                    "start_after": t.start_after,
                    "claimed_by": t.claimed_by,
                    "heartbeat_age": t.heartbeat_age,
                    "attempt": t.attempt,
                    "max_attempts": t.max_attempts,
                }
                for t in tasks
            ]
        )
        return EXIT_OK
    print_table(
        _HEADINGS,
        [
            (
                t.id,
                t.task_name,
                t.workflow_name,
                t.instance_name,
                t.state,
                _attempt(t.attempt, t.max_attempts),
                t.enqueued_at,
                None if t.heartbeat_age is None else f"{t.heartbeat_age:.1f}s ago",
                t.parameters,
            )
            for t in tasks
        ],
        wide=args.wide,
        cut_first=(8,),
    )
    return EXIT_OK


def _attempt(attempt: int, max_attempts: int) -> str:
    """``2/5`` for the second of five attempts; a task without retries shows ``1``."""
    return f"{attempt}/{max_attempts}" if max_attempts > 1 else str(attempt)
