"""Fixtures for the browser tests: Debian's chromium, driven by Playwright for Python.

Playwright drives the system's ``chromium`` (``executable_path``); its own
browser download (``playwright install``) is never needed. Where chromium or
Playwright is missing the tests skip with a reason saying how to get them;
under TIDEWATER_REQUIRE_SERVICES=1 (CI) tests/conftest.py turns that skip into
a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HOW_TO = ("install Debian's chromium with `sudo scripts/services.sh install` (apt-get install "
          "chromium) and Playwright with `pip install -e '.[test]'`")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of the system's chromium; skips (with a how-to) when it or Playwright is missing."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip(f"Playwright for Python is not installed: {HOW_TO}")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip(f"chromium is not on PATH: {HOW_TO}")
    return path


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """Where this test saves its screenshots: ``$TIDEWATER_ARTIFACTS`` (default
    ``test-artifacts/`` at the repository's root), one directory per test."""
    base = Path(os.environ.get("TIDEWATER_ARTIFACTS") or ROOT / "test-artifacts")
    out = base / "browser" / request.node.name
    out.mkdir(parents=True, exist_ok=True)
    return out
