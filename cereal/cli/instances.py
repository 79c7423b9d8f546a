"""``cereal instances``: list, show, enqueue, cancel, kill and signal workflow instances."""

from __future__ import annotations

import argparse
import inspect
from datetime import UTC, datetime
from typing import Any

from cereal.cli.options import (
    EXIT_ERROR,
    EXIT_OK,
    CommandError,
    Context,
    add_option,
    add_output_options,
    json_argument,
    positive_int,
    seconds,
)
from cereal.cli.output import emit_json, instance_document, print_fields, print_table
from cereal.types import WorkflowInstanceInfo, WorkflowStatus

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("instances", help="list, inspect and act on workflow instances")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    lst = sub.add_parser("list", help="one row per workflow instance (live, else latest run)")
    add_option(lst, "--workflow", metavar="W", help="only instances of this workflow")
    state = lst.add_mutually_exclusive_group()
    add_option(state, "--running", action="store_true", help="only live instances")
    add_option(state, "--finished", action="store_true", help="only finished runs")
    add_option(lst, "--limit", metavar="N", type=positive_int, help="at most N rows, newest first")
    add_output_options(lst)
    lst.set_defaults(run=_list)

    show = sub.add_parser("show", help="one instance: status, parameters, payload or result")
    _pair(show)
    add_output_options(show)
    show.set_defaults(run=_show)

    enqueue = sub.add_parser("enqueue", help="start a workflow instance")
    _pair(enqueue)
    enqueue.add_argument("parameters", nargs="?", metavar="PARAMETERS_JSON")
    add_option(enqueue, "--wait", action="store_true", help="wait until it has finished")
    add_option(
        enqueue,
        "--timeout",
        metavar="S",
        type=seconds,
        help="with --wait, give up after S seconds (exit code 1)",
    )
    add_output_options(enqueue)
    enqueue.set_defaults(run=_enqueue)

    cancel = sub.add_parser("cancel", help="ask a live instance to cancel (its on_cancel decides)")
    _pair(cancel)
    add_output_options(cancel, wide=False)
    cancel.set_defaults(run=_cancel)

    kill = sub.add_parser("kill", help="end a live instance at once as failed ('killed')")
    _pair(kill)
    add_output_options(kill, wide=False)
    kill.set_defaults(run=_kill)

    signal = sub.add_parser("signal", help="send a named signal to a live instance")
    _pair(signal)
    signal.add_argument("name", metavar="NAME")
    signal.add_argument("payload", nargs="?", metavar="PAYLOAD_JSON")
    add_output_options(signal, wide=False)
    signal.set_defaults(run=_signal)


def _pair(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow_name", metavar="W", help="workflow name")
    parser.add_argument("instance_name", metavar="I", help="instance name")


_EPOCH = datetime.fromtimestamp(0, UTC)
_COLUMNS = ("WORKFLOW", "INSTANCE", "STATUS", "STARTED", "ENDED", "DETAIL")


def _detail(info: WorkflowInstanceInfo) -> Any:
    if info.status is WorkflowStatus.FAILED:
        return info.error
    if info.status is WorkflowStatus.COMPLETED:
        return info.result
    return info.payload


def _list(ctx: Context, args: argparse.Namespace) -> int:
    is_running = True if args.running else False if args.finished else None
    options: dict[str, Any] = {"workflow_name": args.workflow, "is_running": is_running}
    manager = ctx.manager()
    if args.limit is None:
        rows = manager.list_workflow_instances(**options)
    elif "limit" in inspect.signature(manager.list_workflow_instances).parameters:
        rows = manager.list_workflow_instances(**options, **{"limit": args.limit})
    else:  # a manager without paged listing: newest first, as paged listing returns them
        rows = sorted(
            manager.list_workflow_instances(**options),
            key=lambda i: i.started_at or _EPOCH,
            reverse=True,
        )[: args.limit]
    if args.json:
        emit_json([instance_document(i) for i in rows])
        return EXIT_OK
    print_table(
        _COLUMNS,
        [
            (i.workflow_name, i.instance_name, i.status, i.started_at, i.ended_at, _detail(i))
            for i in rows
        ],
        wide=args.wide,
        cut_first=(5,),
    )
    return EXIT_OK


def _print_instance(info: WorkflowInstanceInfo, args: argparse.Namespace) -> None:
    if args.json:
        emit_json(instance_document(info))
        return
    fields: dict[str, Any] = {
        "workflow": info.workflow_name,
        "instance": info.instance_name,
        "status": info.status,
        "started": info.started_at,
        "ended": info.ended_at,
        "parameters": info.parameters,
    }
    if info.is_running:
        fields["payload"] = info.payload
    elif info.status is WorkflowStatus.COMPLETED:
        fields["result"] = info.result
    else:
        fields["error"] = info.error
    print_fields(fields, wide=args.wide)


def _show(ctx: Context, args: argparse.Namespace) -> int:
    info = ctx.manager().get_workflow_instance(args.workflow_name, args.instance_name)
    _print_instance(info, args)
    return EXIT_OK


def _enqueue(ctx: Context, args: argparse.Namespace) -> int:
    parameters = json_argument(args.parameters, "PARAMETERS_JSON")
    if args.timeout is not None and not args.wait:
        raise CommandError("--timeout needs --wait", 2)
    manager = ctx.manager()
    manager.enqueue_workflow(args.workflow_name, args.instance_name, parameters)
    if not args.wait:
        info = manager.get_workflow_instance(args.workflow_name, args.instance_name)
        _print_instance(info, args)
        return EXIT_OK
    try:
        info = manager.await_workflow(args.workflow_name, args.instance_name, args.timeout)
    except TimeoutError as exc:
        raise CommandError(str(exc)) from None
    _print_instance(info, args)
    return EXIT_OK if info.status is WorkflowStatus.COMPLETED else EXIT_ERROR


def _done(args: argparse.Namespace, action: str, text: str, **extra: Any) -> int:
    if args.json:
        emit_json(
            {
                "workflow_name": args.workflow_name,
                "instance_name": args.instance_name,
                "action": action,
                **extra,
            }
        )
    else:
        print(text)
    return EXIT_OK


def _cancel(ctx: Context, args: argparse.Namespace) -> int:
    ctx.manager().cancel_workflow(args.workflow_name, args.instance_name)
    return _done(args, "cancel", f"cancel requested for {args.workflow_name}/{args.instance_name}")


def _kill(ctx: Context, args: argparse.Namespace) -> int:
    ctx.manager().kill_workflow(args.workflow_name, args.instance_name)
    return _done(args, "kill", f"killed {args.workflow_name}/{args.instance_name}")


def _signal(ctx: Context, args: argparse.Namespace) -> int:
    payload = json_argument(args.payload, "PAYLOAD_JSON")
    ctx.manager().signal_workflow(args.workflow_name, args.instance_name, args.name, payload)
    return _done(
        args,
        "signal",
        f"signal {args.name!r} sent to {args.workflow_name}/{args.instance_name}",
        signal=args.name,
    )
