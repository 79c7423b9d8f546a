"""The dashboard's signal form: it sends the signal to the live instance, shows it pending in
the timeline until handled, and explains what it refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.testclient import TestClient

from cereal import Manager, SignalEvent, WorkflowInstance, WorkflowStatus
from cereal.workflow import Decision
from tests.integration.web.web_helpers import csrf_token

URL = "/instances/approval/po-7"


class Approval:
    def on_start(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with("waiting")

    def on_task_complete(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.continue_with(inst.payload)

    def on_cancel(self, inst: WorkflowInstance, event: Any) -> Decision:
        return inst.fail("cancelled")

    def on_signal(self, inst: WorkflowInstance, event: SignalEvent) -> Decision:
        return inst.complete({event.name: event.payload})


def send(c: TestClient, name: str, payload: str = "", token: str | None = None) -> Any:
    token = token or csrf_token(c.get(URL).text)
    return c.post(
        URL + "/signal",
        data={"csrf_token": token, "signal_name": name, "payload": payload},
        follow_redirects=False,
    )


def test_the_signal_form_is_enabled_and_reaches_on_signal(
    make_manager: Callable[..., Manager], client: Callable[..., TestClient]
) -> None:
    manager = make_manager()
    manager.register_workflow_executor("approval", Approval())
    manager.start()
    manager.enqueue_workflow("approval", "po-7")
    c = client()
    page = c.get(URL).text
    assert "not supported by this manager" not in page
    assert "<fieldset disabled>" not in page
    reply = send(c, "approve", '{"by": "ops"}')
    assert reply.status_code == 303
    assert reply.headers["location"] == URL + "?done=signal"
    assert "Signal sent" in c.get(reply.headers["location"]).text
    info = manager.await_workflow("approval", "po-7", timeout=15)
    assert (info.status, info.result) == (WorkflowStatus.COMPLETED, {"approve": {"by": "ops"}})


def test_a_signal_waiting_for_its_handler_shows_in_the_timeline(
    make_manager: Callable[..., Manager], client: Callable[..., TestClient]
) -> None:
    make_manager().enqueue_workflow("approval", "po-7")  # no manager runs "approval"
    c = client()
    assert send(c, "approve").status_code == 303
    assert "signal approve" in c.get(URL).text


def test_the_form_explains_a_bad_name_a_bad_payload_and_a_finished_instance(
    make_manager: Callable[..., Manager], client: Callable[..., TestClient]
) -> None:
    manager = make_manager()
    manager.enqueue_workflow("approval", "po-7")
    c = client()
    token = csrf_token(c.get(URL).text)
    for name, payload in [("", ""), ("approve", "{not json"), ("x" * 300, "")]:
        reply = send(c, name, payload)
        assert reply.headers["location"] == URL + "?done=bad_signal", (name, payload)
    assert "The signal was not sent" in c.get(URL + "?done=bad_signal").text
    manager.kill_workflow("approval", "po-7")
    reply = send(c, "approve", token=token)  # a page opened before the kill
    assert reply.headers["location"] == URL + "?done=not_live"
    assert "no longer live" in c.get(reply.headers["location"]).text
