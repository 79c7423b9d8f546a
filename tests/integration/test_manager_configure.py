"""``Manager.configure``: run options changed after construction, before ``start()``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cereal import Manager
from cereal.errors import CerealError, ManagerStateError


class _Complete:
    def on_start(self, instance, event):  # type: ignore[no-untyped-def]
        return instance.complete("done")

    def on_task_complete(self, instance, event):  # type: ignore[no-untyped-def]
        return instance.complete(None)

    def on_cancel(self, instance, event):  # type: ignore[no-untyped-def]
        return instance.fail("cancelled")


def test_configure_rejects_bad_values_naming_them(make_any_manager: Callable[..., Manager]) -> None:
    manager = make_any_manager()
    with pytest.raises(CerealError, match="'yes'"):
        manager.configure(scheduler="yes")  # type: ignore[arg-type]
    with pytest.raises(CerealError, match=r"workflow_workers .* got 0"):
        manager.configure(workflow_workers=0)


def test_configure_after_start_is_a_state_error(make_any_manager: Callable[..., Manager]) -> None:
    manager = make_any_manager()
    manager.register_workflow_executor("w", _Complete())
    manager.configure(workflow_workers=2)
    manager.start()
    with pytest.raises(ManagerStateError, match="configure"):
        manager.configure(scheduler=False)
