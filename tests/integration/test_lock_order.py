"""Lock order on PostgreSQL: recording a task's result (or reaping it as lost) while its
instance is being deleted by a kill or a finishing decision waits for that deletion instead of
deadlocking with it. Both sides delete the task row and touch the instance row; the writer
takes the instance's lock first."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cereal.backends.postgres import PostgresDriver
from cereal.driver import TaskOutcome
from tests.contract.test_driver_contract import OWNER, W, with_tasks
from tests.helpers.waiting import wait_for


def lock_waiters(driver: PostgresDriver) -> int:
    """Sessions of this database waiting for a lock."""
    with driver.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE NOT l.granted AND a.datname = current_database()"
        ).fetchone()
    return 0 if row is None else int(row[0])


@pytest.mark.parametrize("recorder", ["complete_tasks", "reap_lost_tasks"])
def test_recording_a_result_during_the_deletion_of_its_instance_waits_for_it(
    driver: PostgresDriver, recorder: str
) -> None:
    with_tasks(driver, "a", "t")
    [task], _ = driver.claim_tasks({"t": 1}, OWNER)
    outcome: list[Any] = []

    def record() -> None:
        try:
            if recorder == "complete_tasks":
                outcome.append(driver.complete_tasks([TaskOutcome(task.id, W, "success")], OWNER))
            else:
                outcome.append(driver.reap_lost_tasks(0.0, "lost"))
        except Exception as exc:
            outcome.append(exc)

    with driver.connection() as conn, conn.transaction():
        # What kill_workflow and finish_instances do: lock the instance, then delete it (the
        # task rows go with it, by cascade).
        conn.execute(
            "SELECT id FROM workflow_instances WHERE id = %s FOR UPDATE", (task.instance_id,)
        )
        writer = threading.Thread(target=record)
        writer.start()
        wait_for(lambda: lock_waiters(driver) > 0, timeout=10, what="the writer to wait")
        conn.execute("DELETE FROM workflow_instances WHERE id = %s", (task.instance_id,))
    writer.join(10)
    assert outcome in ([set()], [0])  # the instance was gone: nothing to record
