"""The dashboard in a real headless Chromium, against a real controller, site and pilot.

One user logs in (after a wrong token and a site token are refused), watches
the task counts change while tasks run -- pushed over the live socket, the
page never reloads --, filters the task list by tag and state and pages
through it, and opens a failed task to read its error and stderr tail (markup
in them is shown as text, never run).
Across a controller restart the page goes offline, then back to its login
(sessions live in the controller's memory).
Every wait is on a DOM condition (Playwright's ``expect``); screenshots of
each step are saved as test artefacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tidewater

from ..integration.procs import cluster, free_port

pytestmark = [pytest.mark.browser, pytest.mark.integration]

MARKUP = "<img src=x onerror=window.pwned=1>"
"""Markup a task prints: the page must show it, not run it."""
WAIT_MS = 20_000
"""How long a DOM condition may take (pushes and pages come in well under a second)."""


async def test_dashboard_live_counts_filters_and_failed_task(
        tmp_path: Path, chromium: str, artifacts: Path) -> None:
    from playwright.async_api import Page, async_playwright, expect

    expect.set_options(timeout=WAIT_MS)

    async def shot(page: Page, name: str) -> None:
        await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)

    def count(page: Page, state: str):  # type: ignore[no-untyped-def]
        return page.locator(f'#counts .count[data-state="{state}"] .n')

    async with cluster(tmp_path) as c:
        port = free_port()
        await c.start_controller("--dashboard-port", str(port), ready="dashboard listening on")
        base = f"http://127.0.0.1:{port}/"
        token = await c.add_user("alice")
        gate = tmp_path / "gate"
        async with tidewater.connect(c.url, token=token) as tw, async_playwright() as pw:
            _s, site_token = await tw.add_site("hpc")
            await tw.add_app("hpc", "sh", "sh -c {cmd}")
            await c.start_pilot(site_token, pilot_id="p1", cores=2)
            browser = await pw.chromium.launch(executable_path=chromium,
                                               args=["--no-sandbox", "--disable-gpu"])
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            try:
                await page.goto(base)

                # A wrong token, then a site token, are refused with a clear message.
                await page.fill("#token", "tw_user_not-a-real-token")
                await page.click("#login-button")
                await expect(page.locator("#login-error")).to_have_text(
                    "Login refused: invalid token")
                await page.fill("#token", site_token)
                await page.click("#login-button")
                await expect(page.locator("#login-error")).to_contain_text(
                    "a site or pilot token cannot log in")
                await expect(page.locator("#main-view")).to_be_hidden()
                assert not [ck for ck in await page.context.cookies()]
                await shot(page, "01-wrong-token-refused")

                # The right one: the live socket is up, the site and its idle pilot show.
                await page.fill("#token", token)
                await page.click("#login-button")
                await expect(page.locator("#live")).to_have_text("live")
                await expect(page.locator("#who")).to_have_text("alice")
                await expect(page.locator("#total")).to_have_text("(0 in all)")
                site_row = page.locator('#sites tbody tr[data-site="hpc"]')
                await expect(site_row.locator(".health")).to_have_text("up")
                pilot_row = page.locator('#pilots tbody tr[data-pilot="p1"]')
                await expect(pilot_row.locator(".free")).to_have_text("2")
                await shot(page, "02-logged-in")
                await page.evaluate("window.sameDocument = true")  # gone if the page reloads

                # Two tasks run until the gate opens: the counts and slots move, pushed.
                held = [await tw.submit("sh", site="hpc", tags={"batch": "held"}, params={
                    "cmd": f"while [ ! -e {gate} ]; do sleep 0.05; done"}) for _ in range(2)]
                await expect(count(page, "RUNNING")).to_have_text("2")
                await expect(pilot_row.locator(".busy")).to_have_text("2")
                await expect(pilot_row.locator(".free")).to_have_text("0")
                await shot(page, "03-two-running")
                gate.touch()
                await expect(count(page, "JOB_FINISHED")).to_have_text("2")
                await expect(count(page, "RUNNING")).to_have_text("0")

                bad = await tw.submit("sh", site="hpc", max_retries=0, tags={"batch": "bad"},
                                      params={"cmd": f"echo boom-on-stderr '{MARKUP}' >&2; "
                                                     "exit 7"})
                quick = [await tw.submit("sh", site="hpc", tags={"batch": "quick"},
                                         params={"cmd": "true"}) for _ in range(5)]
                await expect(count(page, "FAILED")).to_have_text("1")
                await expect(count(page, "JOB_FINISHED")).to_have_text("7")
                await expect(page.locator("#total")).to_have_text("(8 in all)")
                await shot(page, "04-counts-after-runs")
                assert await page.evaluate("window.sameDocument") is True  # pushed, not reloaded
                failed = await bad.result(timeout=30)
                assert failed.state == "FAILED" and failed.error
                assert [(await h.result(timeout=30)).state for h in held] == ["JOB_FINISHED"] * 2

                # Filter by tag and state, two per page: three pages hold the five quick ones.
                await page.fill("#f-tag", "batch=quick")
                await page.select_option("#f-state", "JOB_FINISHED")
                await page.fill("#f-limit", "2")
                await page.click("#apply")
                rows = page.locator("#tasks tbody tr")
                seen: list[int] = []
                for n, size in enumerate((2, 2, 1), start=1):
                    # The page's number changes with its rows (the counts alone may not).
                    await expect(page.locator("#page-info")).to_have_text(
                        f"page {n}, {size} tasks")
                    await expect(rows).to_have_count(size)
                    seen += [int(x) for x in await rows.evaluate_all(
                        "rs => rs.map(r => r.dataset.task)")]
                    if len(seen) < 5:
                        await page.click("#next-page")
                await expect(page.locator("#next-page")).to_be_disabled()
                assert seen == [t.id for t in quick]
                await shot(page, "05-filtered-last-page")

                # The failed task, found by state, opened from the list: its error and stderr.
                await page.fill("#f-tag", "")
                await page.select_option("#f-state", "FAILED")
                await page.click("#apply")
                await expect(page.locator("#page-info")).to_have_text("page 1, 1 tasks")
                await expect(rows).to_have_count(1)
                await expect(rows.first).to_have_attribute("data-task", str(bad.id))
                await rows.first.click()
                await expect(page.locator("#task-view")).to_be_visible()
                await expect(page.locator("#t-id")).to_have_text(str(bad.id))
                await expect(page.locator("#t-state")).to_have_text("FAILED")
                await expect(page.locator("#t-error")).to_have_text(failed.error)
                await expect(page.locator("#t-stderr")).to_contain_text("boom-on-stderr")
                # Markup in a task's output and parameters is shown as text, never run.
                await expect(page.locator("#t-stderr")).to_contain_text(MARKUP)
                await expect(page.locator("#t-params")).to_contain_text(MARKUP)
                assert await page.evaluate("window.pwned") is None
                await expect(page.locator("#t-events tbody tr").last).to_contain_text("FAILED")
                await expect(page.locator("#t-attempts tbody tr")).to_have_count(1)
                await shot(page, "06-failed-task")

                # Back to the dashboard: the charts now plot the site's finished tasks.
                await page.click("text=back to the dashboard")
                await expect(page.locator("#throughput")).to_have_attribute("data-sites", "hpc")
                await expect(page.locator("#utilization")).to_have_attribute("data-sites", "hpc")
                await shot(page, "07-charts")
            except BaseException:
                await shot(page, "failure")
                raise
            finally:
                await browser.close()


async def test_the_page_goes_offline_and_back_to_login_across_a_controller_restart(
        tmp_path: Path, chromium: str, artifacts: Path) -> None:
    """Sessions live in the controller's memory: after a restart the page asks to log in again."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT_MS)
    async with cluster(tmp_path) as c, async_playwright() as pw:
        port = free_port()
        args = ("--dashboard-port", str(port))
        ctl = await c.start_controller(*args, ready="dashboard listening on")
        token = await c.add_user("alice")
        browser = await pw.chromium.launch(executable_path=chromium,
                                           args=["--no-sandbox", "--disable-gpu"])
        page = await browser.new_page()
        try:
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.fill("#token", token)
            await page.click("#login-button")
            await expect(page.locator("#live")).to_have_text("live")
            await ctl.stop()
            await expect(page.locator("#live")).to_have_text("offline")
            await shot_to(page, artifacts / "01-controller-stopped.png")
            await c.start_controller(*args, ready="dashboard listening on")
            await expect(page.locator("#login-view")).to_be_visible()
            await expect(page.locator("#who")).to_have_text("")
            await page.fill("#token", token)
            await page.click("#login-button")
            await expect(page.locator("#live")).to_have_text("live")
            await shot_to(page, artifacts / "02-logged-in-again.png")
        except BaseException:
            await shot_to(page, artifacts / "failure.png")
            raise
        finally:
            await browser.close()


async def shot_to(page: Any, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)
