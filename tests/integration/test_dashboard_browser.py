"""The dashboard in a real browser: Debian's chromium, driven by Playwright.

Against the real stack, with a producer running: the page loads and goes live, the
numbers move, lag rises while the consumer is stopped and falls when consumers come
back, two consumers show as two owners, the audit button says CONSISTENT, and with
PostgreSQL stopped the page names it and greys its last values until it is back. The page
must not ask any other origin for anything (it works offline) and must log no error.

Playwright's own browser download is never used: ``scripts/bootstrap.sh`` installs
Debian's ``chromium`` (and ``chromium-driver``, for Selenium users), and the test
launches that binary. ``FOODPIPE_DASHBOARD_SCREENSHOT=path.png`` saves the page under
load (how docs/dashboard.png was made).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.conftest import Pipeline, Stack
from tests.dashboard_support import dashboard
from tests.support import spawn_foodpipe, stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RATE = 100  # orders/s: lag grows visibly within a second or two of the consumer stopping
WAIT_MS = 30_000


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing; scripts/bootstrap.sh installs Debian's chromium")
    with sync_playwright() as playwright:
        # A fresh profile per test: no cache, no state from another run.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def number(page: Page, element_id: str) -> int:
    text = page.locator(f"#{element_id}").inner_text().replace(",", "")
    return int(text) if text.lstrip("-").isdigit() else -1


def wait_number(page: Page, element_id: str, condition: str) -> None:
    """Wait until the number shown in ``#element_id`` satisfies ``n => condition``."""
    page.wait_for_function(
        f"""() => {{
            const n = Number(document.getElementById({element_id!r}).textContent.replace(/,/g, ""));
            return !Number.isNaN(n) && ({condition});
        }}""",
        timeout=WAIT_MS,
    )


def test_the_dashboard_in_a_browser_follows_the_pipeline(
    stack: Stack, pipeline: Pipeline, log_dir: Path, browser_page: Page
) -> None:
    started = time.monotonic()
    page = browser_page
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: message.type == "error" and problems.append(f"console: {message.text}"),
    )
    first = spawn_foodpipe(["consume"], pipeline.env, log_dir / "consumer-1.log")
    consumers: list[subprocess.Popen[bytes]] = [first]
    producer = spawn_foodpipe(
        ["produce", "--rate", str(RATE), "--no-progress"], pipeline.env, log_dir / "producer.log"
    )
    try:
        with dashboard(pipeline.env, log_dir) as board:
            foreign: list[str] = []
            page.on(
                "request",
                lambda request: request.url.startswith(board.url) or foreign.append(request.url),
            )
            page.goto(board.url)
            page.wait_for_function(
                "() => document.getElementById('connection').textContent.startsWith('live')",
                timeout=WAIT_MS,
            )
            assert page.locator("#topic-name").inner_text() == pipeline.topic
            assert page.title() == "foodpipe dashboard"

            # The numbers move while the producer runs.
            wait_number(page, "log-end-total", "n > 0")
            before = number(page, "log-end-total")
            wait_number(page, "log-end-total", f"n > {before}")
            wait_number(page, "rows-total", "n > 0")
            wait_number(page, "owners-count", "n === 1")

            # Consumer stopped: lag rises.
            assert stop_process(first) == 0
            wait_number(page, "members-count", "n === 0")
            wait_number(page, "lag-total", f"n >= {RATE}")
            peak = number(page, "lag-total")

            # Two consumers: two owners, and lag falls.
            consumers = [
                spawn_foodpipe(["consume"], pipeline.env, log_dir / f"consumer-{n}.log")
                for n in (2, 3)
            ]
            wait_number(page, "owners-count", "n === 2")
            wait_number(page, "lag-total", f"n < {peak}")
            assert len(page.locator("#partitions tbody tr").all()) == 3
            if path := os.environ.get("FOODPIPE_DASHBOARD_SCREENSHOT"):
                wait_number(page, "business-orders", "n > 0")
                page.screenshot(path=path, full_page=True)

            # Producer stopped: the consumers drain it, and the audit agrees.
            assert stop_process(producer) == 0
            wait_number(page, "lag-total", "n === 0")
            page.get_by_role("button", name="Run the audit").click()
            page.wait_for_function(
                "() => document.getElementById('audit-verdict').textContent === 'CONSISTENT'",
                timeout=WAIT_MS,
            )
            assert page.locator("#problems li").count() == 0

            # PostgreSQL stopped: the page says so, greys its numbers and keeps them;
            # started again, it recovers by itself.
            rows = page.locator("#rows-total").inner_text()
            stack.pg_stop()
            try:
                page.locator("#problems li", has_text="PostgreSQL").wait_for(timeout=WAIT_MS)
                assert page.locator(".card.stale #rows-total").count() == 1
                assert page.locator("#rows-total").inner_text() == rows
                assert page.locator(".stale #lag-total").count() == 0, "Kafka still answers"
            finally:
                stack.pg_start()
            page.locator("#problems li").first.wait_for(state="detached", timeout=WAIT_MS)
            assert page.locator(".stale").count() == 0
            assert not foreign, f"the page asked other origins: {foreign}"
            assert not problems, problems
    finally:
        for proc in [producer, *consumers]:
            stop_process(proc)
    # The suite's time budget: report what the browser test costs.
    print(f"browser test: {time.monotonic() - started:.1f}s")


def test_chromium_driver_is_installed_for_selenium_users() -> None:
    """bootstrap.sh installs both Debian packages; Selenium would drive chromedriver."""
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert Path(driver).exists(), "scripts/bootstrap.sh installs chromium-driver"
    version = subprocess.run([driver, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ChromeDriver")
