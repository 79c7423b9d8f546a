"""cereal's web dashboard and Prometheus metrics (the ``cereal[web]`` extra).

:func:`create_app` returns an ASGI application to run on its own (:func:`serve`, or
``cereal web``) or to mount in an existing Starlette or FastAPI service::

    app.mount("/cereal", create_app(PostgresDriver(dsn), read_only=True))

Safe defaults: :func:`serve` listens on 127.0.0.1 only; every value is HTML-escaped;
actions are POST forms that need a token from a page of this dashboard (403 without it);
``read_only=True`` shows and accepts no action; with ``CEREAL_WEB_USER`` and
``CEREAL_WEB_PASSWORD`` set, every page but ``/healthz`` asks for HTTP basic auth.
"""

from __future__ import annotations

from typing import Any

from cereal.driver import Driver
from cereal.web.metrics import DEFAULT_STALE_AFTER, start_metrics_server

__all__ = ["create_app", "serve", "start_metrics_server"]


def create_app(
    driver: Driver | None = None,
    *,
    read_only: bool = False,
    stale_after: float = DEFAULT_STALE_AFTER,
    auth: tuple[str, str] | None = None,
) -> Any:
    """The dashboard as an ASGI application.

    ``driver=None`` builds the default driver (``CEREAL_DATABASE_URL``, else the embedded
    server) and closes it when the application shuts down; a driver passed in stays open.
    ``stale_after`` (seconds) is when a running task without heartbeat counts as stale.
    ``auth`` is ``(user, password)`` for HTTP basic auth; by default it comes from
    ``CEREAL_WEB_USER``/``CEREAL_WEB_PASSWORD`` (none when unset).
    """
    from cereal.web.app import Dashboard
    from cereal.web.security import CsrfTokens, basic_auth_from_env

    dashboard = Dashboard(
        driver,
        read_only=bool(read_only),
        stale_after=stale_after,
        auth=auth if auth is not None else basic_auth_from_env(),
        csrf=CsrfTokens(),
    )
    return dashboard.app(close_on_shutdown=driver is None)


def serve(
    driver: Driver | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    log_level: str = "info",
) -> None:
    """Run the dashboard with uvicorn until interrupted (blocking)."""
    import uvicorn

    from cereal.logging import get_logger

    app = create_app(driver, read_only=read_only)
    get_logger("cereal.web").info(
        "dashboard listening", url=f"http://{host}:{port}/", read_only=read_only
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
