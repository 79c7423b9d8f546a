"""The short intervals every test manager runs with, defined once.

Tests see polling, heartbeats and lost-task recovery within seconds with these. Managers built
by the ``make_manager`` fixture, managers in child processes and the fault workload's workers
all use them (a test may override one where it measures that interval itself).
"""

from __future__ import annotations

from typing import Any, Final

WORKFLOW_POLL_INTERVAL: Final = 0.5
TASK_POLL_INTERVAL: Final = 0.5
HEARTBEAT_INTERVAL: Final = 0.5
LOST_TASK_TIMEOUT: Final = 3.0

FAST_MANAGER_OPTIONS: Final[dict[str, Any]] = {
    "workflow_poll_interval": WORKFLOW_POLL_INTERVAL,
    "task_poll_interval": TASK_POLL_INTERVAL,
    "heartbeat_interval": HEARTBEAT_INTERVAL,
    "lost_task_timeout": LOST_TASK_TIMEOUT,
}
"""``Manager`` keyword arguments: the fast intervals above."""
