"""Safety pieces of the dashboard: HTTP basic auth, cross-site-request tokens, headers."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["BasicAuth", "CsrfTokens", "SecurityHeaders", "basic_auth_from_env"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_LIFETIME = 24 * 3600.0
"""Seconds a cross-site-request token stays valid (a page left open longer needs a reload)."""


class CsrfTokens:
    """Stateless tokens for POST forms: ``<issued>.<HMAC(secret, issued:user)>``.

    A page served by this process embeds a fresh token in each form; a POST must carry one
    this process (or one sharing ``CEREAL_WEB_SECRET``) issued for the same basic-auth user
    within :data:`TOKEN_LIFETIME`. A page on another site cannot read one, so it cannot make
    the operator's browser act.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        configured = os.environ.get("CEREAL_WEB_SECRET")
        self._secret = secret or (configured.encode() if configured else secrets.token_bytes(32))

    def _mac(self, issued: str, user: str) -> str:
        msg = f"{issued}:{user}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def issue(self, user: str = "") -> str:
        issued = str(int(time.time()))
        return f"{issued}.{self._mac(issued, user)}"

    def check(self, token: object, user: str = "") -> bool:
        if not isinstance(token, str) or token.count(".") != 1:
            return False
        issued, mac = token.split(".")
        if not issued.isdigit() or not hmac.compare_digest(mac, self._mac(issued, user)):
            return False
        age = time.time() - int(issued)
        return -60 <= age <= TOKEN_LIFETIME


def basic_auth_from_env() -> tuple[str, str] | None:
    """``(user, password)`` from ``CEREAL_WEB_USER``/``CEREAL_WEB_PASSWORD``, or None when
    either is unset or empty (no authentication)."""
    user = os.environ.get("CEREAL_WEB_USER")
    password = os.environ.get("CEREAL_WEB_PASSWORD")
    if user and password:
        return user, password
    return None


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class BasicAuth:
    """Requires HTTP basic auth on every path except ``/healthz`` (so load balancers and
    orchestrators can probe it). The user name is kept in ``scope["cereal.user"]``."""

    def __init__(self, app: ASGIApp, credentials: tuple[str, str] | None) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.credentials is None:
            await self.app(scope, receive, send)
            return
        if _route_path(scope) == "/healthz" or self._allowed(scope):
            scope["cereal.user"] = self.credentials[0]
            await self.app(scope, receive, send)
            return
        body = b"Authentication required.\n"
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="cereal", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        assert self.credentials is not None
        header = next(
            (v for k, v in scope.get("headers", []) if k == b"authorization"), b""
        ).decode("latin-1")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        want_user, want_password = self.credentials
        ok_user = hmac.compare_digest(user.encode(), want_user.encode())
        ok_password = hmac.compare_digest(password.encode(), want_password.encode())
        return bool(sep) and ok_user and ok_password


class SecurityHeaders:
    """Adds headers that keep the pages out of frames and scripts to this origin."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
            b"form-action 'self'; base-uri 'none'",
        ),
    ]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
