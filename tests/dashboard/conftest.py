"""Fixtures of the dashboard tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_page import CHROMIUM
from support import need


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    """Debian's Chromium: skips on a developer machine without it, fails under CI=true."""
    need(CHROMIUM.is_file(), f"Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM
