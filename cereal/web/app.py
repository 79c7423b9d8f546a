"""The dashboard's pages and actions (Starlette, server-side rendered with Jinja2)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, unquote_to_bytes, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import jinja2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cereal.driver import Driver, Overview, TaskInfo
from cereal.errors import (
    CerealError,
    DatabaseError,
    WorkflowInstanceNotFoundError,
    WorkflowScheduleNotFoundError,
)
from cereal.logging import get_logger
from cereal.manager import Manager
from cereal.types import Schedule, WorkflowInstanceInfo, WorkflowStatus
from cereal.web.metrics import make_registry
from cereal.web.security import BasicAuth, CsrfTokens, SecurityHeaders

__all__ = ["Dashboard"]

log = get_logger("cereal.web")

PAGE_SIZE = 50
TIMELINE_LIMIT = 100
TASKS_LIMIT = 500
RECENT_FAILURES = 10
HEALTH_TIMEOUT = 3.0
_SECTIONS = {
    "overview.html": "overview",
    "instances.html": "instances",
    "instance.html": "instances",
    "schedules.html": "schedules",
    "schedule.html": "schedules",
    "tasks.html": "tasks",
}
_TZID = re.compile(r"^DTSTART;TZID=([^:;]+)[:;]", re.MULTILINE)

MESSAGES = {
    "cancel": ("ok", "Cancel requested: the workflow's on_cancel callback decides what happens."),
    "kill": ("ok", "Killed: the instance failed with error \u201ckilled\u201d."),
    "signal": ("ok", "Signal sent: the workflow's on_signal callback will receive it."),
    "enable": ("ok", "Schedule enabled: its next run was computed from now."),
    "disable": ("ok", "Schedule disabled: it will not run until enabled again."),
    "delete": ("ok", "Schedule deleted. A run it already started goes on."),
    "not_live": ("error", "That instance is no longer live: nothing was changed."),
    "no_schedule": ("error", "That schedule no longer exists."),
    "bad_signal": ("error", "The signal was not sent: check its name and JSON payload."),
    "exhausted": ("error", "The schedule was not enabled: its rule has no occurrence left."),
}


class HTTPProblem(Exception):
    """Render an error page with this status."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail


def _is_database_failure(exc: BaseException) -> bool:
    # Without importing any backend: its own errors, or a driver's raw ones.
    module = type(exc).__module__
    return isinstance(exc, DatabaseError) or module.startswith(("psycopg", "psycopg_pool"))


# -- formatting helpers (Jinja filters) -------------------------------------------------------


def _ts(value: datetime | None) -> str:
    if value is None:
        return "\u2014"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2014"
    s = abs(seconds)
    if s < 1:
        text = f"{s * 1000:.0f} ms"
    elif s < 120:
        text = f"{s:.0f} s"
    elif s < 7200:
        text = f"{s / 60:.0f} min"
    elif s < 172800:
        text = f"{s / 3600:.1f} h"
    else:
        text = f"{s / 86400:.1f} d"
    return text


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _zone_of(recurrence: str) -> str:
    match = _TZID.search(recurrence)
    return match.group(1) if match else "UTC"


@dataclass(frozen=True, slots=True)
class TimelineItem:
    at: datetime
    what: str
    detail: str
    tone: str


# -- the dashboard ----------------------------------------------------------------------------


class Dashboard:
    """Holds the manager and driver a dashboard reads through, and builds its app."""

    def __init__(
        self,
        driver: Driver | None,
        *,
        read_only: bool,
        stale_after: float,
        auth: tuple[str, str] | None,
        csrf: CsrfTokens,
    ) -> None:
        # A manager that is never started: it gives instance and schedule operations.
        self.manager = Manager(driver) if driver is not None else Manager()
        self.driver: Any = cast(Any, self.manager.driver)
        self.read_only = read_only
        self.stale_after = stale_after
        self.auth = auth
        self.csrf = csrf
        self.registry = make_registry(self.driver, stale_after=stale_after)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("cereal.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(ts=_ts, duration=_duration, json=_json, short=_short)
        self.can_signal = callable(getattr(self.manager, "signal_workflow", None))

    # -- plumbing ---------------------------------------------------------------------------

    def app(self, *, close_on_shutdown: bool) -> Any:
        g = self._guarded
        routes = [
            Route("/", g(self.overview), name="overview"),
            Route("/instances", g(self.instances), name="instances"),
            Route("/instances/{rest:path}", g(self.instance), methods=["GET", "POST"]),
            Route("/schedules", g(self.schedules), name="schedules"),
            Route("/schedules/{rest:path}", g(self.schedule), methods=["GET", "POST"]),
            Route("/tasks", g(self.tasks), name="tasks"),
            Route("/healthz", self.healthz, name="healthz"),
            Route("/metrics", g(self.metrics), name="metrics"),
            Mount("/static", StaticFiles(packages=[("cereal.web", "static")]), name="static"),
        ]

        @asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            yield
            if close_on_shutdown:
                await anyio.to_thread.run_sync(self.driver.close)

        starlette = Starlette(routes=routes, lifespan=lifespan)
        starlette.state.dashboard = self
        return SecurityHeaders(BasicAuth(starlette, self.auth))

    def _base(self, request: Request) -> str:
        root: str = request.scope.get("root_path", "")
        return root.rstrip("/")

    def _url(self, request: Request, *segments: str, **query: Any) -> str:
        path = "/".join(quote(s, safe="") for s in segments)
        url = f"{self._base(request)}/{path}"
        params = {k: v for k, v in query.items() if v not in (None, "")}
        return url + ("?" + urlencode(params) if params else "")

    def _segments(self, request: Request) -> list[str]:
        """The route-relative path split at unencoded slashes (names may contain '/')."""
        raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        raw = raw.split(b"?", 1)[0]
        parts = [p for p in raw.split(b"/") if p]
        skip = len([p for p in self._base(request).split("/") if p])
        return [unquote_to_bytes(p).decode("utf-8", "replace") for p in parts[skip:]]

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> Any:
        user = request.scope.get("cereal.user", "")
        flash = MESSAGES.get(request.query_params.get("done", ""))
        base = {
            "request": request,
            "url": lambda *s, **q: self._url(request, *s, **q),
            "static": lambda name: f"{self._base(request)}/static/{name}",
            "read_only": self.read_only,
            "csrf_token": "" if self.read_only else self.csrf.issue(user),
            "can_signal": self.can_signal,
            "flash": flash,
            "statuses": [s.value for s in WorkflowStatus],
            "section": _SECTIONS.get(template, ""),
        }
        html = self.env.get_template(template).render(base | context)
        return Response(html, status_code=status_code, media_type="text/html; charset=utf-8")

    def _guarded(self, page: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Run a page in a worker thread (it blocks on the database) and turn its errors
        into pages: :class:`HTTPProblem` as asked, database failures as 503."""

        async def endpoint(request: Request) -> Any:
            try:
                return await anyio.to_thread.run_sync(page, request)
            except HTTPProblem as exc:
                return self.render(
                    request,
                    "error.html",
                    status_code=exc.status,
                    title=exc.title,
                    detail=exc.detail,
                )
            except Exception as exc:
                return self._failure(request, exc)

        return endpoint

    def _failure(self, request: Request, exc: Exception) -> Any:
        if _is_database_failure(exc):
            log.warning("dashboard: database failure", path=request.url.path, error=str(exc))
            return self.render(
                request,
                "error.html",
                status_code=503,
                title="The database does not answer",
                detail="Check that PostgreSQL is running and reachable with the DSN this "
                "dashboard was started with, then reload. /healthz reports the same.",
            )
        log.error("dashboard: unexpected error", path=request.url.path, exc_info=exc)
        return self.render(
            request,
            "error.html",
            status_code=500,
            title="Something went wrong",
            detail="The error was logged under the 'cereal.web' logger.",
        )

    async def _checked_form(self, request: Request) -> dict[str, str]:
        """The POSTed form, after the read-only, same-site and token checks (403 if any
        fails)."""
        if self.read_only:
            raise HTTPProblem(403, "Read-only dashboard", "This dashboard makes no changes.")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPProblem(403, "Refused", "Actions are accepted from this site only.")
        form = await request.form()
        token = form.get("csrf_token")
        if not self.csrf.check(token, request.scope.get("cereal.user", "")):
            raise HTTPProblem(
                403,
                "Refused: the form's token is missing or expired",
                "Reload the page and try again.",
            )
        return {k: v for k, v in form.items() if isinstance(v, str)}

    # -- pages ------------------------------------------------------------------------------

    def overview(self, request: Request) -> Any:
        view: Overview = self.driver.overview(self.stale_after)
        failures: list[WorkflowInstanceInfo] = self.driver.recent_failures(RECENT_FAILURES)
        overdue: list[Schedule] = []
        if view.overdue_schedules:
            overdue = [
                s
                for s in self.manager.list_workflow_schedules()
                if s.enabled and s.next_due_at is not None and s.next_due_at <= view.now
            ]
        workflows: dict[str, dict[str, int]] = {}
        for (workflow, status), n in [*view.instances.items(), *view.finished.items()]:
            workflows.setdefault(workflow, {})[status] = n
        return self.render(
            request,
            "overview.html",
            view=view,
            workflows=sorted(workflows.items()),
            failures=failures,
            overdue=overdue,
            stale_after=self.stale_after,
            live_total=sum(view.instances.values()),
            queued_total=sum(t.queued for t in view.tasks),
            running_total=sum(t.running for t in view.tasks),
            stale_total=sum(t.stale for t in view.tasks),
        )

    def instances(self, request: Request) -> Any:
        q = request.query_params
        workflow = q.get("workflow") or None
        status_text = q.get("status") or None
        after = q.get("after") or None
        try:
            status = WorkflowStatus(status_text) if status_text else None
        except ValueError:
            raise HTTPProblem(
                400,
                "Unknown status",
                f"status must be one of {', '.join(s.value for s in WorkflowStatus)}",
            ) from None
        rows, next_cursor = _page(self.manager, workflow, status, after, PAGE_SIZE)
        return self.render(
            request,
            "instances.html",
            rows=rows,
            workflow=workflow or "",
            status=status_text or "",
            next_cursor=next_cursor,
            paged=after is not None,
        )

    def instance(self, request: Request) -> Any:
        parts = self._segments(request)[1:]
        if request.method == "POST":
            if len(parts) != 3:
                raise HTTPProblem(404, "No such action", "Use the buttons on an instance page.")
            return self._instance_action(request, *parts)
        if len(parts) != 2:
            raise HTTPProblem(
                404, "No such page", "Instance pages are /instances/<workflow>/<instance>."
            )
        workflow, instance = parts
        timeline = self.driver.instance_timeline(workflow, instance, TIMELINE_LIMIT)
        try:
            info = self.manager.get_workflow_instance(workflow, instance)
        except (WorkflowInstanceNotFoundError, CerealError):
            raise HTTPProblem(
                404,
                "No such workflow instance",
                f"Nothing is live or kept in history for {workflow!r}/{instance!r}. "
                "Finished runs are pruned after the retention period.",
            ) from None
        try:
            schedule: Schedule | None = self.manager.get_workflow_schedule(workflow, instance)
        except WorkflowScheduleNotFoundError:
            schedule = None
        return self.render(
            request,
            "instance.html",
            info=info,
            timeline=timeline,
            items=list(_timeline_items(info, timeline)),
            schedule=schedule,
        )

    def _instance_action(self, request: Request, workflow: str, instance: str, action: str) -> Any:
        if action not in ("cancel", "kill", "signal"):
            raise HTTPProblem(404, "No such action", f"Unknown instance action {action!r}.")
        form = anyio.from_thread.run(self._checked_form, request)
        done = action
        try:
            if action == "cancel":
                self.manager.cancel_workflow(workflow, instance)
            elif action == "kill":
                self.manager.kill_workflow(workflow, instance)
            else:
                done = self._signal(workflow, instance, form)
        except WorkflowInstanceNotFoundError:
            done = "not_live"
        log.info("dashboard action", action=action, workflow=workflow, instance=instance)
        return RedirectResponse(self._url(request, "instances", workflow, instance, done=done), 303)

    def _signal(self, workflow: str, instance: str, form: dict[str, str]) -> str:
        if not self.can_signal:
            raise HTTPProblem(403, "Signals are not supported", "This manager cannot send signals.")
        name = form.get("signal_name", "").strip()
        text = form.get("payload", "").strip()
        try:
            payload = json.loads(text) if text else None
        except ValueError:
            return "bad_signal"
        try:
            self.manager.signal_workflow(workflow, instance, name, payload)
        except WorkflowInstanceNotFoundError:
            raise
        except CerealError:
            return "bad_signal"
        return "signal"

    def schedules(self, request: Request) -> Any:
        rows = self.manager.list_workflow_schedules()
        now = datetime.now(UTC)
        return self.render(
            request,
            "schedules.html",
            rows=[(s, _zone_of(s.recurrence)) for s in rows],
            now=now,
            stale_after=self.stale_after,
        )

    def schedule(self, request: Request) -> Any:
        parts = self._segments(request)[1:]
        if request.method == "POST":
            if len(parts) != 3:
                raise HTTPProblem(404, "No such action", "Use the buttons on a schedule page.")
            return self._schedule_action(request, *parts)
        if len(parts) != 2:
            raise HTTPProblem(
                404, "No such page", "Schedule pages are /schedules/<workflow>/<instance>."
            )
        workflow, instance = parts
        try:
            schedule = self.manager.get_workflow_schedule(workflow, instance)
        except WorkflowScheduleNotFoundError:
            raise HTTPProblem(
                404,
                "No such schedule",
                f"There is no schedule for {workflow!r}/{instance!r}. "
                "Create one with Manager.create_workflow_schedule or "
                "`cereal schedules create`.",
            ) from None
        zone_name = _zone_of(schedule.recurrence)
        try:
            zone: Any = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            zone = UTC
        upcoming = [(t, t.astimezone(zone)) for t in schedule.next_occurrences(10)]
        return self.render(
            request,
            "schedule.html",
            schedule=schedule,
            zone=zone_name,
            upcoming=upcoming,
            next_local=schedule.next_due_at.astimezone(zone) if schedule.next_due_at else None,
        )

    def _schedule_action(self, request: Request, workflow: str, instance: str, action: str) -> Any:
        if action not in ("enable", "disable", "delete"):
            raise HTTPProblem(404, "No such action", f"Unknown schedule action {action!r}.")
        anyio.from_thread.run(self._checked_form, request)
        done = action
        target = self._url(request, "schedules", workflow, instance)
        try:
            if action == "delete":
                self.manager.delete_workflow_schedule(workflow, instance)
                target = self._url(request, "schedules")
            else:
                self.manager.update_workflow_schedule(
                    workflow, instance, enabled=action == "enable"
                )
        except WorkflowScheduleNotFoundError:
            done, target = "no_schedule", self._url(request, "schedules")
        except CerealError:
            done = "exhausted"
        log.info("dashboard action", action=action, workflow=workflow, instance=instance)
        sep = "&" if "?" in target else "?"
        return RedirectResponse(f"{target}{sep}done={done}", 303)

    def tasks(self, request: Request) -> Any:
        task = request.query_params.get("task") or None
        rows: list[TaskInfo] = self.driver.list_tasks(task_name=task, limit=TASKS_LIMIT + 1)
        return self.render(
            request,
            "tasks.html",
            rows=rows[:TASKS_LIMIT],
            more=len(rows) > TASKS_LIMIT,
            task=task or "",
            stale_after=self.stale_after,
        )

    async def healthz(self, request: Request) -> Any:
        ping: Callable[[], Any] = getattr(self.driver, "ping", None) or (
            lambda: self.driver.recent_failures(1)
        )
        error = f"the database did not answer within {HEALTH_TIMEOUT:g} s"
        with anyio.move_on_after(HEALTH_TIMEOUT):
            try:
                await anyio.to_thread.run_sync(ping, abandon_on_cancel=True)
                return JSONResponse({"status": "ok"})
            except Exception as exc:
                log.warning("healthz: database does not answer", error=str(exc))
                error = "the database does not answer"
        return JSONResponse({"status": "unavailable", "error": error}, status_code=503)

    def metrics(self, request: Request) -> Any:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _page(
    manager: Manager,
    workflow: str | None,
    status: WorkflowStatus | None,
    after: str | None,
    size: int,
) -> tuple[list[WorkflowInstanceInfo], str | None]:
    """One page of instances, newest first, and the cursor of the next page (None: last)."""
    lister: Any = manager.list_workflow_instances
    try:
        rows: list[WorkflowInstanceInfo] = lister(
            workflow_name=workflow, status=status, limit=size + 1, after=after
        )
    except TypeError:
        # A manager without keyset paging: page through the full listing by position.
        every = lister(workflow_name=workflow)
        if status is not None:
            every = [r for r in every if r.status is status]
        every.sort(key=lambda r: r.started_at or datetime.min.replace(tzinfo=UTC), reverse=True)
        start = int(after) if after and after.isdigit() else 0
        rows = every[start : start + size + 1]
        more = len(rows) > size
        return rows[:size], str(start + size) if more else None
    if len(rows) > size:
        return rows[:size], rows[size - 1].cursor
    return rows, None


def _timeline_items(info: WorkflowInstanceInfo, timeline: Any) -> Iterator[TimelineItem]:
    """The instance's history as the database keeps it, newest first."""
    items: list[TimelineItem] = []
    if info.started_at is not None:
        items.append(TimelineItem(info.started_at, "enqueued", "the instance was enqueued", ""))
    if info.is_running and timeline.updated_at and timeline.updated_at != info.started_at:
        items.append(
            TimelineItem(
                timeline.updated_at,
                "decision",
                f"last decision committed ({timeline.completed_tasks} of "
                f"{timeline.enqueued_tasks} tasks reported so far)",
                "",
            )
        )
    for task in timeline.tasks:
        items.append(
            TimelineItem(
                task.enqueued_at,
                f"task {task.state}",
                f"{task.task_name}"
                + (f" (due {_ts(task.start_after)})" if task.start_after > task.enqueued_at else "")
                + (f" on {task.claimed_by}" if task.claimed_by else ""),
                "running" if task.state == "running" else "queued",
            )
        )
    for event in timeline.events:
        if event.kind == "task_complete":
            detail = f"{event.task_name}: {event.task_status}"
            if event.task_error:
                detail += f" ({event.task_error})"
        elif event.kind == "signal":
            detail = f"signal {event.signal_name or ''}".strip()
        else:
            detail = event.kind
        tone = "failed" if event.task_status in ("failed", "lost") else "pending"
        items.append(TimelineItem(event.enqueued_at, "event pending", detail, tone))
    if info.ended_at is not None:
        detail = "completed" if info.status is WorkflowStatus.COMPLETED else f"failed: {info.error}"
        items.append(TimelineItem(info.ended_at, info.status.value, detail, info.status.value))
    items.sort(key=lambda i: i.at, reverse=True)
    yield from items
