"""Helpers shared by the dashboard tests (the fixtures are in this folder's conftest.py)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from cereal import Manager

EVIL = "<script>alert(1)</script>"
DAILY_PARIS = "DTSTART;TZID=Europe/Paris:20250101T090000\nRRULE:FREQ=DAILY"


def csrf_token(html: str) -> str:
    """The cross-site-request token embedded in a page's forms."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no form with a csrf_token"
    return match.group(1)


def form_actions(html: str) -> list[str]:
    """The ``action`` URLs of the page's POST forms."""
    return re.findall(r'<form method="post" action="([^"]+)"', html)


@dataclass
class Seeded:
    manager: Manager
    release: threading.Event
    """Set it to let the blocked task finish."""
