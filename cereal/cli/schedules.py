"""``cereal schedules``: list, show, create, update, enable, disable and delete schedules."""

from __future__ import annotations

import argparse
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cereal.cli.options import (
    EXIT_OK,
    Context,
    UsageError,
    add_option,
    add_output_options,
    json_argument,
    positive_int,
)
from cereal.cli.output import (
    emit_json,
    format_value,
    print_fields,
    print_table,
    schedule_document,
)
from cereal.types import Schedule

__all__ = ["add_parser"]

_TZID = re.compile(r"^DTSTART;(?:[^:]*;)?TZID=([^;:]+)", re.MULTILINE | re.IGNORECASE)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("schedules", help="recurring workflow instances")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    lst = sub.add_parser("list", help="every schedule")
    add_output_options(lst)
    lst.set_defaults(run=_list)

    show = sub.add_parser("show", help="one schedule and its next occurrences")
    _pair(show)
    add_option(
        show,
        "--next",
        metavar="N",
        type=positive_int,
        default=5,
        help="how many next occurrences to show (default 5)",
    )
    add_output_options(show)
    show.set_defaults(run=_show)

    create = sub.add_parser("create", help="create a schedule")
    _pair(create)
    add_option(create, "--recurrence", metavar="TEXT", required=False, help="RFC 5545 rule")
    add_option(create, "--parameters", metavar="JSON", help="workflow parameters (JSON)")
    add_option(create, "--disabled", action="store_true", help="create it disabled")
    add_output_options(create)
    create.set_defaults(run=_create)

    update = sub.add_parser("update", help="change a schedule's rule or parameters")
    _pair(update)
    add_option(update, "--recurrence", metavar="TEXT", help="new RFC 5545 rule")
    add_option(update, "--parameters", metavar="JSON", help="new workflow parameters (JSON)")
    add_output_options(update)
    update.set_defaults(run=_update)

    for action, text in (
        ("enable", "enable a schedule (its next run is recomputed)"),
        ("disable", "disable a schedule"),
        ("delete", "delete a schedule"),
    ):
        one = sub.add_parser(action, help=text)
        _pair(one)
        add_output_options(one, wide=False)
        one.set_defaults(run=_simple, schedule_action=action)


def _pair(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow_name", metavar="W", help="workflow name")
    parser.add_argument("instance_name", metavar="I", help="instance name")


def rule_zone(recurrence: str) -> ZoneInfo | None:
    """The time zone of a rule's ``DTSTART;TZID=...``, if it names one."""
    match = _TZID.search(recurrence)
    if match is None:
        return None
    try:
        return ZoneInfo(match.group(1).strip())
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _list(ctx: Context, args: argparse.Namespace) -> int:
    schedules = ctx.manager().list_workflow_schedules()
    if args.json:
        emit_json([schedule_document(s) for s in schedules])
        return EXIT_OK
    print_table(
        ("WORKFLOW", "INSTANCE", "ENABLED", "NEXT DUE (UTC)", "LAST RUN", "RECURRENCE"),
        [
            (
                s.workflow_name,
                s.instance_name,
                s.enabled,
                s.next_due_at,
                s.last_enqueued_at,
                s.recurrence.replace("\n", " "),
            )
            for s in schedules
        ],
        wide=args.wide,
        cut_first=(5,),
    )
    return EXIT_OK


def _print_schedule(schedule: Schedule, args: argparse.Namespace, upcoming: int) -> None:
    zone = rule_zone(schedule.recurrence)
    occurrences = schedule.next_occurrences(upcoming) if upcoming else []
    if args.json:
        document = schedule_document(schedule)
        document["time_zone"] = zone.key if zone is not None else "UTC"
        document["next_occurrences"] = [
            {"utc": t, "local": t.astimezone(zone) if zone is not None else t} for t in occurrences
        ]
        emit_json(document)
        return
    print_fields(
        {
            "workflow": schedule.workflow_name,
            "instance": schedule.instance_name,
            "enabled": schedule.enabled,
            "time zone": zone.key if zone is not None else "UTC",
            "parameters": schedule.parameters,
            "next due": schedule.next_due_at,
            "last enqueued": schedule.last_enqueued_at,
            "last start": schedule.last_start,
            "last end": schedule.last_end,
        },
        wide=args.wide,
    )
    print("recurrence:")
    for line in schedule.recurrence.splitlines():
        print(f"  {line}")
    if occurrences:
        print(f"next {len(occurrences)} occurrence(s):")
        for t in occurrences:
            local = t.astimezone(zone) if zone is not None else None
            text = f"  {format_value(t)} UTC"
            if local is not None:
                text += f"   {local.strftime('%Y-%m-%d %H:%M:%S %Z')} ({zone})"
            print(text)


def _show(ctx: Context, args: argparse.Namespace) -> int:
    schedule = ctx.manager().get_workflow_schedule(args.workflow_name, args.instance_name)
    _print_schedule(schedule, args, args.next)
    return EXIT_OK


def _create(ctx: Context, args: argparse.Namespace) -> int:
    if not args.recurrence:
        raise UsageError("schedules create: --recurrence is required")
    manager = ctx.manager()
    manager.create_workflow_schedule(
        args.workflow_name,
        args.instance_name,
        json_argument(args.parameters, "--parameters"),
        recurrence=args.recurrence,
        enabled=not args.disabled,
    )
    schedule = manager.get_workflow_schedule(args.workflow_name, args.instance_name)
    _print_schedule(schedule, args, 0)
    return EXIT_OK


def _update(ctx: Context, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.recurrence is not None:
        changes["recurrence"] = args.recurrence
    if args.parameters is not None:
        changes["parameters"] = json_argument(args.parameters, "--parameters")
    manager = ctx.manager()
    manager.update_workflow_schedule(args.workflow_name, args.instance_name, **changes)
    schedule = manager.get_workflow_schedule(args.workflow_name, args.instance_name)
    _print_schedule(schedule, args, 0)
    return EXIT_OK


def _simple(ctx: Context, args: argparse.Namespace) -> int:
    manager = ctx.manager()
    action: str = args.schedule_action
    pair = (args.workflow_name, args.instance_name)
    if action == "delete":
        manager.delete_workflow_schedule(*pair)
    else:
        manager.update_workflow_schedule(*pair, enabled=action == "enable")
    if args.json:
        emit_json({"workflow_name": pair[0], "instance_name": pair[1], "action": action})
    else:
        print(f"schedule {pair[0]}/{pair[1]}: {action}d")
    return EXIT_OK
