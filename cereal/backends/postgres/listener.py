"""A LISTEN connection that hands the manager typed wakeups when another process writes."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from cereal.backends.postgres import notify
from cereal.driver import Wakeup
from cereal.logging import get_logger

__all__ = ["PostgresListener"]

log = get_logger("cereal.listener")

IDLE_WAIT = 5.0
"""Seconds the listener sleeps at most with nothing arriving before it looks again anyway."""


class PostgresListener:
    """Listens on one channel in a background thread and reconnects when the link drops.

    ``on_wakeup`` gets the :data:`~cereal.driver.Wakeup` of each notification (payloads
    this version does not know are ignored). ``on_reconnect`` is called after every
    (re)connection, since notifications sent while disconnected are lost: the manager then
    polls everything.

    The thread waits on the connection's socket and on a socket pair of its own, which
    :meth:`stop` writes to, so that stopping never waits for a wait to time out.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        channel: str,
        on_wakeup: Callable[[Wakeup], None],
        on_reconnect: Callable[[], None],
        *,
        retry_interval: float = 1.0,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._on_wakeup = on_wakeup
        self._on_reconnect = on_reconnect
        self._retry = retry_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        self._wake = socket.socketpair()
        self._thread = threading.Thread(
            target=self._run, args=(self._wake[0],), name="cereal-listener", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        wake, self._wake = self._wake, None
        if wake is not None:
            wake[1].send(b"\0")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if wake is not None:
            for sock in wake:
                sock.close()

    def _deliver(self, payload: str) -> None:
        """Hand one payload's wakeups over; nothing a payload holds may end the loop."""
        try:
            for wakeup in notify.decode(payload):
                self._on_wakeup(wakeup)
        except Exception as exc:
            log.error("handling a notification failed", payload=payload[:100], error=repr(exc))

    def _run(self, woken: socket.socket) -> None:
        delay = self._retry
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self.connected.set()
                    delay = self._retry
                    self._on_reconnect()
                    while not self._stop.is_set():
                        # Take what has arrived, then sleep until the server sends more or
                        # stop() writes to the socket pair.
                        for note in conn.notifies(timeout=0.01):
                            self._deliver(note.payload)
                        select.select([conn.fileno(), woken.fileno()], [], [], IDLE_WAIT)
            except Exception as exc:
                self.connected.clear()
                if self._stop.is_set():
                    break
                log.warning("listen connection lost; reconnecting", error=str(exc), delay=delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        self.connected.clear()
