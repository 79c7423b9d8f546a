"""A worker process that records its spans to a file: ``python -m tests.helpers.traced_worker
DSN SCHEMA SPANS``.

It runs workflow ``pair`` (:class:`tests.helpers.doubler.Doubler`) and its task ``double`` on
``SCHEMA``, appends every finished span to the JSON-lines file ``SPANS``, prints ``ready`` once
started and ``stopped`` after stopping when its standard input closes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cereal import Manager
from cereal.backends.postgres import PostgresDriver
from tests.helpers.doubler import Doubler, double
from tests.helpers.spans import export_to_file
from tests.helpers.timings import FAST_MANAGER_OPTIONS


def main(dsn: str, schema: str, spans: str) -> None:
    export_to_file(Path(spans), os.getpid())
    manager = Manager(
        PostgresDriver(dsn, schema=schema),
        scheduler=False,
        close_driver=True,
        **FAST_MANAGER_OPTIONS,
    )
    manager.register_workflow_executor("pair", Doubler())
    manager.register_task_executor("double", double)
    with manager:
        print("ready", flush=True)
        sys.stdin.read()
    print("stopped", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
