"""Dashboard actions: cancel, kill, signal and schedule changes, and what guards them."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from cereal import WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from tests.helpers.waiting import wait_for
from tests.integration.web.web_helpers import Seeded, csrf_token, form_actions

Q3 = "/instances/reports/q3"


def test_cancel_delivers_a_cancel_event_to_the_workflow(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    page = c.get(Q3).text
    reply = c.post(Q3 + "/cancel", data={"csrf_token": csrf_token(page)}, follow_redirects=False)
    assert reply.status_code == 303
    assert reply.headers["location"] == Q3 + "?done=cancel"
    # The seeded workflows answer a cancel with fail("cancelled").
    info = seeded.manager.await_workflow("reports", "q3", timeout=15)
    assert info.status is WorkflowStatus.FAILED and info.error == "cancelled"
    assert "Cancel requested" in c.get(reply.headers["location"]).text


def test_kill_ends_the_instance_at_once(seeded: Seeded, client: Callable[..., TestClient]) -> None:
    c = client()
    token = csrf_token(c.get(Q3).text)
    reply = c.post(Q3 + "/kill", data={"csrf_token": token})
    assert reply.status_code == 200 and "Killed" in reply.text
    info = seeded.manager.get_workflow_instance("reports", "q3")
    assert info.status is WorkflowStatus.FAILED and info.error == "killed"


def test_acting_on_a_finished_instance_changes_nothing(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    token = csrf_token(c.get(Q3).text)
    c.post(Q3 + "/kill", data={"csrf_token": token})
    again = c.post(Q3 + "/cancel", data={"csrf_token": token})
    assert again.status_code == 200 and "no longer live" in again.text


@pytest.mark.parametrize("token", [None, "", "1700000000.deadbeef", "garbage"])
def test_post_without_the_right_token_is_refused(
    seeded: Seeded, client: Callable[..., TestClient], token: str | None
) -> None:
    c = client()
    data = {} if token is None else {"csrf_token": token}
    for action in ("cancel", "kill"):
        assert c.post(f"{Q3}/{action}", data=data).status_code == 403
    assert c.post("/schedules/reports/daily/delete", data=data).status_code == 403
    assert seeded.manager.get_workflow_instance("reports", "q3").is_running
    assert seeded.manager.get_workflow_schedule("reports", "daily").enabled


def test_a_token_from_another_dashboard_is_refused(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    foreign = csrf_token(client().get(Q3).text)
    assert client().post(Q3 + "/kill", data={"csrf_token": foreign}).status_code == 403


def test_cross_site_form_posts_are_refused_even_with_a_token(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    token = csrf_token(c.get(Q3).text)
    reply = c.post(
        Q3 + "/kill", data={"csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert reply.status_code == 403
    assert seeded.manager.get_workflow_instance("reports", "q3").is_running


def test_read_only_shows_no_actions_and_refuses_them(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    writable = client()
    token = csrf_token(writable.get(Q3).text)
    c = client(read_only=True)
    for url in (Q3, "/schedules/reports/daily", "/"):
        page = c.get(url)
        assert page.status_code == 200
        assert form_actions(page.text) == [], url
        assert "csrf_token" not in page.text
    assert "read-only" in c.get(Q3).text
    assert c.post(Q3 + "/kill", data={"csrf_token": token}).status_code == 403
    assert c.post("/schedules/reports/daily/disable", data={}).status_code == 403
    assert seeded.manager.get_workflow_instance("reports", "q3").is_running


def test_signal_is_offered_only_when_the_manager_supports_it(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    page = c.get(Q3).text
    supported = callable(getattr(seeded.manager, "signal_workflow", None))
    reply = c.post(
        Q3 + "/signal",
        data={"csrf_token": csrf_token(page), "signal_name": "approve", "payload": '{"by": 1}'},
    )
    if supported:
        assert reply.status_code == 200 and "Signal sent" in reply.text
    else:
        assert "not supported by this manager" in page
        assert "<fieldset disabled>" in page
        assert reply.status_code == 403


def test_schedule_disable_enable_and_delete(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    url = "/schedules/reports/daily"
    token = csrf_token(c.get(url).text)
    manager = seeded.manager
    assert "Schedule disabled" in c.post(url + "/disable", data={"csrf_token": token}).text
    assert not manager.get_workflow_schedule("reports", "daily").enabled
    assert "Schedule enabled" in c.post(url + "/enable", data={"csrf_token": token}).text
    assert manager.get_workflow_schedule("reports", "daily").enabled
    deleted = c.post(url + "/delete", data={"csrf_token": token})
    assert deleted.status_code == 200 and "Schedule deleted" in deleted.text
    assert manager.list_workflow_schedules() == []
    gone = c.post(url + "/disable", data={"csrf_token": token})
    assert "no longer exists" in gone.text


def test_unknown_actions_are_404(seeded: Seeded, client: Callable[..., TestClient]) -> None:
    c = client()
    token = csrf_token(c.get(Q3).text)
    assert c.post(Q3 + "/explode", data={"csrf_token": token}).status_code == 404
    assert c.post("/schedules/reports/daily/run", data={"csrf_token": token}).status_code == 404


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_basic_auth_from_the_environment_guards_every_page_but_healthz(
    driver: PostgresDriver, client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CEREAL_WEB_USER", "ops")
    monkeypatch.setenv("CEREAL_WEB_PASSWORD", "s3cret")
    c = client()
    for url in ("/", "/instances", "/schedules", "/tasks", "/metrics", "/static/cereal.css"):
        denied = c.get(url)
        assert denied.status_code == 401, url
        assert denied.headers["www-authenticate"].startswith("Basic")
    assert c.get("/", headers=_basic("ops", "wrong")).status_code == 401
    assert c.get("/", headers=_basic("other", "s3cret")).status_code == 401
    assert c.get("/", headers=_basic("ops", "s3cret")).status_code == 200
    assert c.get("/healthz").status_code == 200
    assert c.post("/instances/a/b/kill").status_code == 401


def test_a_cancel_request_reaches_on_cancel_through_the_page_forms(
    seeded: Seeded, client: Callable[..., TestClient]
) -> None:
    c = client()
    page = c.get(Q3).text
    cancel = next(a for a in form_actions(page) if a.endswith("/cancel"))
    c.post(cancel, data={"csrf_token": csrf_token(page)})
    wait_for(
        lambda: not seeded.manager.get_workflow_instance("reports", "q3").is_running,
        what="the cancelled instance to finish",
    )
