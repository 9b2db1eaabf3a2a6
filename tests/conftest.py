from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With TIDEWATER_REQUIRE_SERVICES=1 (set by scripts/test.sh and CI) a skip is a failure.

    Tests that need a service skip with a reason on machines without it; the
    project's own test command sets every service up, so there a skip means
    something is broken, and it must not pass silently.
    """
    report = yield
    if (
        os.environ.get("TIDEWATER_REQUIRE_SERVICES") == "1"
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        report.longrepr = f"skipped while TIDEWATER_REQUIRE_SERVICES=1: {report.longrepr}"
    return report
