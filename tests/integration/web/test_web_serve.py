"""``cereal.web.serve``: the blocking server the ``cereal web`` command runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from tests.helpers.waiting import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_on_loopback_until_stopped(pg_dsn: str, schema: str) -> None:
    port = _free_port()
    code = (
        "from cereal.backends.postgres import PostgresDriver\n"
        "from cereal.web import serve\n"
        f"serve(PostgresDriver({pg_dsn!r}, schema={schema!r}), port={port}, read_only=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:

        def health() -> dict[str, str] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return dict(json.loads(r.read()))
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return None

        assert wait_for(health, timeout=30, what="the dashboard to answer") == {"status": "ok"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
            page = reply.read().decode()
        assert "read-only" in page and "csrf_token" not in page
    finally:
        proc.terminate()
        proc.wait(15)
