"""The dashboard's pages, read through a real PostgreSQL database."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from cereal.backends.postgres import PostgresDriver
from cereal.web import create_app
from tests.integration.web.web_helpers import EVIL, Seeded

PAGES = ["/", "/instances", "/schedules", "/tasks"]


def instance_url(workflow: str, instance: str) -> str:
    return f"/instances/{quote(workflow, safe='')}/{quote(instance, safe='')}"


def text_of(page: str) -> str:
    """The page's visible text, whitespace collapsed (to assert on what a person reads)."""
    body = re.sub(r"<[^>]+>", " ", page.split("<main>", 1)[-1])
    return " ".join(html.unescape(body).split())


def test_overview_shows_instances_tasks_and_recent_failures(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    page = client().get("/")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "billing 0 0 1 0" in text  # workflow, starting, running, completed, failed
    assert "sync 0 0 0 1" in text
    assert "reports 0 1 0 0" in text
    assert "render 0 1" in text  # task name, queued, running
    assert "never-run 1 0" in text
    assert "Recent failures" in text
    failures = text.split("Recent failures", 1)[1]
    assert "sync / nightly" in failures and "upstream said no" in failures


def test_every_page_escapes_user_data(seeded: Seeded, client: Callable[..., TestClient]) -> None:
    c = client()
    urls = [*PAGES, instance_url(EVIL, "<b>x</b>"), "/tasks?task=" + quote(EVIL)]
    for url in urls:
        page = c.get(url)
        assert page.status_code == 200, url
        assert "<script>alert" not in page.text, url
        assert "<b>x</b>" not in page.text, url
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in c.get(instance_url(EVIL, "<b>x</b>")).text


def test_instance_page_shows_parameters_payload_tasks_and_timeline(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    page = client().get(instance_url("reports", "q3"))
    assert page.status_code == 200
    text = text_of(page.text)
    assert '"task": "render"' in text  # parameters
    assert '"step": "waiting for render"' in text  # payload
    tasks = text.split("Queued and running tasks", 1)[1].split("Timeline", 1)[0]
    assert "render running" in tasks
    assert "Timeline" in text and "task running render" in text and "enqueued" in text


def test_finished_instance_page_shows_its_result_or_error(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    done = text_of(c.get(instance_url("billing", "inv-1")).text)
    assert "Result" in done and '"paid": 42' in done
    failed = text_of(c.get(instance_url("sync", "nightly")).text)
    assert "Error upstream said no" in failed
    assert "Actions" not in failed  # nothing to cancel or kill once finished


def test_unknown_instance_or_schedule_is_404_with_a_hint(
    driver: PostgresDriver, client: Callable[..., TestClient]
) -> None:
    c = client()
    missing = c.get(instance_url("nope", "none"))
    assert missing.status_code == 404
    assert "No such workflow instance" in missing.text
    assert c.get("/schedules/nope/none").status_code == 404
    assert c.get("/instances/only-one-part").status_code == 404


def test_instances_filter_by_workflow_and_status(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    failed = text_of(c.get("/instances?status=failed").text)
    assert "nightly" in failed and "inv-1" not in failed and "q3" not in failed
    billing = text_of(c.get("/instances?workflow=billing").text)
    assert "inv-1" in billing and "nightly" not in billing
    none = c.get("/instances?workflow=billing&status=failed")
    assert "No instance matches these filters" in none.text
    assert c.get("/instances?status=bogus").status_code == 400


def test_instances_are_paginated(
    driver: PostgresDriver, make_manager: Callable[..., Any], client: Callable[..., TestClient]
) -> None:
    manager = make_manager()
    for i in range(55):
        manager.enqueue_workflow("bulk", f"i-{i:02d}")
    c = client()
    first = c.get("/instances?workflow=bulk").text
    shown = set(re.findall(r">(i-\d\d)</a>", first))
    assert len(shown) == 50
    next_link = re.search(r'href="([^"]+)">Next page', first)
    assert next_link, "the first page links to the next one"
    second = c.get(html.unescape(next_link.group(1))).text
    rest = set(re.findall(r">(i-\d\d)</a>", second))
    assert len(rest) == 5 and not rest & shown
    assert "Next page" not in second


def test_schedule_pages_show_rule_zone_and_next_ten_occurrences(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    listing = text_of(c.get("/schedules").text)
    assert "reports daily enabled" in listing and "Europe/Paris" in listing
    page = c.get("/schedules/reports/daily")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "RRULE:FREQ=DAILY" in text and "Time zone Europe/Paris" in text
    assert "Next 10 occurrences" in text
    utc_times = re.findall(r"\d{4}-\d\d-\d\d (\d\d:\d\d):00 UTC", text)
    local_times = re.findall(r"\d{4}-\d\d-\d\d (\d\d:\d\d):00 CES?T", text)
    assert len(local_times) >= 10 and set(local_times) == {"09:00"}
    assert set(utc_times) & {"08:00", "07:00"}  # 09:00 in Paris, winter or summer


def test_tasks_page_lists_queued_and_running_tasks(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    text = text_of(c.get("/tasks").text)
    assert "render running 1 reports / q3" in text
    assert "never-run queued" in text
    only = text_of(c.get("/tasks?task=render").text)
    assert "render" in only and "never-run" not in only


def test_empty_dashboard_says_what_to_do_next(
    driver: PostgresDriver, client: Callable[..., TestClient]
) -> None:
    c = client()
    assert "No workflow has run yet" in c.get("/").text
    assert "enqueue" in c.get("/instances").text.lower()
    assert "Create one with" in c.get("/schedules").text
    assert "No task is queued or running" in c.get("/tasks").text


def test_healthz_answers_200_when_the_database_answers(
    driver: PostgresDriver, client: Callable[..., TestClient]
) -> None:
    reply = client().get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


def test_healthz_answers_503_and_pages_explain_when_the_database_is_down() -> None:
    dead = PostgresDriver("postgresql://postgres@127.0.0.1:1/postgres", connect_timeout=1)
    with TestClient(create_app(dead)) as c:
        reply = c.get("/healthz")
        assert reply.status_code == 503
        assert reply.json()["status"] == "unavailable"
        page = c.get("/")
        assert page.status_code == 503
        assert "The database does not answer" in page.text
        metrics = c.get("/metrics")
        assert metrics.status_code == 200 and "cereal_database_up 0.0" in metrics.text
    dead.close()


def test_app_mounted_under_a_prefix_links_inside_the_prefix(
    seeded: Seeded, driver: PostgresDriver
) -> None:
    host = Starlette(routes=[Mount("/ops/cereal", app=create_app(driver))])
    with TestClient(host) as c:
        page = c.get("/ops/cereal/")
        assert page.status_code == 200
        links = re.findall(r'(?:href|src|action)="(/[^"]*)"', page.text)
        assert links and all(link.startswith("/ops/cereal/") for link in links)
        assert c.get("/ops/cereal/static/cereal.css").status_code == 200
        assert c.get("/ops/cereal" + instance_url("reports", "q3")).status_code == 200


def test_pages_forbid_framing_and_foreign_scripts(
    driver: PostgresDriver, client: Callable[..., TestClient]
) -> None:
    reply = client().get("/")
    assert reply.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in reply.headers["content-security-policy"]
