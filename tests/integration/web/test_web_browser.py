"""The dashboard in a real browser (Debian's headless chromium through Selenium).

Clicks overview -> instances -> instance -> cancel as an operator would, and takes the
README's screenshots. With ``CEREAL_UPDATE_SCREENSHOTS=1`` they are written to ``docs/``;
otherwise to the test's temporary directory. Skips only where no chromium is installed
(``apt-get install -y chromium chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cereal import Manager, RetryPolicy, WorkflowStatus
from cereal.backends.postgres import PostgresDriver
from tests.helpers.recorders import Flow
from tests.helpers.waiting import wait_for
from tests.integration.web.web_helpers import DAILY_PARIS, Seeded

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "no browser: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium.webdriver.common.by import By  # noqa: E402

DOCS = Path(__file__).resolve().parents[3] / "docs"
DESKTOP = (1280, 800)
PHONE = (390, 844)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(driver: PostgresDriver) -> Iterator[str]:
    """The dashboard served by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    from cereal.web import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(driver), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def _browser(width: int, height: int, *, phone: bool = False) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    if phone:
        options.add_experimental_option(
            "mobileEmulation",
            {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2}},
        )
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture
def browser() -> Iterator[Any]:
    b = _browser(*DESKTOP)
    yield b
    b.quit()


def _shots_dir(tmp_path: Path) -> Path:
    if os.environ.get("CEREAL_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path


def _full_page(b: Any, path: Path, width: int, *, phone: bool = False) -> None:
    """Save a screenshot of the whole page at ``width`` CSS pixels."""
    height = b.execute_script("return document.documentElement.scrollHeight")
    b.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": width,
            "height": min(max(int(height), 400), 3000),
            "deviceScaleFactor": 2 if phone else 1,
            "mobile": phone,
        },
    )
    time.sleep(0.2)
    assert b.save_screenshot(str(path)), path
    b.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_operator_clicks_from_overview_to_an_instance_and_cancels_it(
    seeded: Seeded, server: str, browser: Any
) -> None:
    b = browser
    b.get(server + "/")
    assert "Overview" in b.title
    b.find_element(By.LINK_TEXT, "reports").click()
    wait_for(lambda: "Instances" in b.title, what="the instances page")
    b.find_element(By.LINK_TEXT, "q3").click()
    wait_for(lambda: "reports / q3" in b.title, what="the instance page")
    assert "waiting for render" in _main_text(b)
    b.find_element(By.XPATH, "//button[normalize-space()='Cancel']").click()
    alert = wait_for(lambda: _alert(b), what="the confirmation dialog")
    assert "cancel" in alert.text.lower()
    alert.accept()
    wait_for(lambda: "Cancel requested" in _main_text(b), what="the confirmation message")
    info = seeded.manager.await_workflow("reports", "q3", timeout=15)
    assert info.status is WorkflowStatus.FAILED and info.error == "cancelled"
    b.refresh()
    assert "failed" in b.find_element(By.CSS_SELECTOR, "h1 .status").text


def _main_text(b: Any) -> str:
    """The text of the page's main element ("" while a new page is loading)."""
    try:
        return str(b.find_element(By.TAG_NAME, "main").text)
    except Exception:
        return ""


def _alert(b: Any) -> Any:
    try:
        return b.switch_to.alert
    except Exception:
        return None


@pytest.fixture
def showcase(make_manager: Callable[..., Manager]) -> Iterator[Manager]:
    """Realistic data for the README's screenshots."""
    release = threading.Event()
    manager = make_manager()

    def start(inst: Any, event: Any) -> Any:
        for step in inst.parameters.get("steps", []):
            inst.enqueue_task(step, {"order": inst.instance_name})
        return inst.continue_with({"stage": "processing", "steps": inst.parameters.get("steps")})

    def on_task(inst: Any, event: Any) -> Any:
        if not event.result.ok:
            return inst.fail(event.result.error)
        if inst.total_completed_tasks == inst.total_enqueued_tasks:
            return inst.complete({"ok": True, "last": event.result.value})
        return inst.continue_with(inst.payload)

    def charge(task: Any) -> Any:
        if task.parameters["order"].endswith("7"):
            raise RuntimeError("card declined by issuer")
        return {"charged": True}

    def push(task: Any) -> Any:
        raise ConnectionError("CRM answered 503 Service Unavailable")

    for workflow in ("checkout", "nightly-export", "onboarding", "sync-crm"):
        manager.register_workflow_executor(workflow, Flow(start, on_task))
    manager.register_task_executor("charge-card", charge, workers=4)
    manager.register_task_executor("send-receipt", lambda task: "sent", workers=4)
    manager.register_task_executor("export-table", lambda task: release.wait(60) and 1)
    # The first attempt fails; the second waits ten minutes in the queue.
    retry = RetryPolicy(max_attempts=5, initial_delay=600)
    manager.register_task_executor("push-contacts", push, retry=retry)
    manager.start()
    for i in range(12):
        manager.enqueue_workflow(
            "checkout", f"order-10{i:02d}", {"steps": ["charge-card", "send-receipt"]}
        )
    for table in ("customers", "invoices"):
        manager.enqueue_workflow("nightly-export", table, {"steps": ["export-table"]})
    for user in ("ada", "grace", "linus"):
        manager.enqueue_workflow("onboarding", user, {"steps": ["send-welcome-mail"]})
    manager.enqueue_workflow("sync-crm", "contacts", {"steps": ["push-contacts"]})
    manager.create_workflow_schedule(
        "nightly-export", "customers", {"steps": ["export-table"]}, recurrence=DAILY_PARIS
    )
    manager.create_workflow_schedule(
        "checkout",
        "hourly-retry",
        recurrence="DTSTART:20250101T000000Z\nRRULE:FREQ=HOURLY;BYMINUTE=15",
        enabled=False,
    )
    for i in range(12):
        manager.await_workflow("checkout", f"order-10{i:02d}", timeout=20)
    wait_for(
        lambda: all(
            manager.get_workflow_instance("nightly-export", t).payload for t in ("customers",)
        ),
        what="the exports to start",
    )
    wait_for(
        lambda: [t.attempt for t in manager.driver.list_tasks(task_name="push-contacts")] == [2],
        what="the CRM push to wait for its second attempt",
    )
    yield manager
    release.set()


def test_screenshots_at_desktop_and_phone_widths(
    showcase: Manager, server: str, tmp_path: Path
) -> None:
    folder = _shots_dir(tmp_path)
    pages = {
        "overview": "/",
        "instance": "/instances/nightly-export/customers",
        "schedule": "/schedules/nightly-export/customers",
        "instances": "/instances",
        "tasks": "/tasks",
    }
    for device, (width, height), phone in (("desktop", DESKTOP, False), ("phone", PHONE, True)):
        b = _browser(width, height, phone=phone)
        try:
            for name, path in pages.items():
                b.get(server + path)
                assert "Something went wrong" not in b.page_source
                target = folder / f"dashboard-{name}-{device}.png"
                _full_page(b, target, width, phone=phone)
                assert target.stat().st_size > 10_000
                # Nothing wider than the screen: a phone scrolls only tables sideways.
                overflow = b.execute_script(
                    "return document.documentElement.scrollWidth - window.innerWidth"
                )
                assert overflow <= 1, (name, device, overflow)
        finally:
            b.quit()
