"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium), served by uvicorn over a real database with a real worker.

Screenshots of each step are saved under ``QUEUERT_TEST_ARTIFACTS`` (default
``.artifacts/dashboard`` in the repository). The browser's console is read
after every test: a Content Security Policy violation (an inline script or
style the policy blocks) or a script error fails it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from sqlalchemy.orm import Session

import queuert_sa as q
from queuert_sa.dashboard import Dashboard

from .conftest import service_unavailable
from .test_dashboard_api import Site, fetch, flow, report, types

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("QUEUERT_TEST_ARTIFACTS", ROOT / ".artifacts" / "dashboard"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


class LiveServer:
    """uvicorn serving a dashboard on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start within 15 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        service_unavailable(
            "chromium", "install Debian's chromium and chromium-driver (apt-get install ...)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        service_unavailable("chromium", f"it did not start: {exc.msg}")
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def sqlite_site(tmp_path: Path) -> Iterator[Site]:
    from .conftest import make_db

    database = make_db("sqlite", tmp_path)
    yield Site(database, "sync", q.Queuert(database.engine, types))
    database.engine.dispose()


@pytest.fixture
def served(sqlite_site: Site, browser: WebDriver) -> Iterator[LiveServer]:
    browser.delete_all_cookies()
    with LiveServer(Dashboard(sqlite_site.client, read_only=False)) as server:
        yield server
    problems = [
        entry["message"]
        for entry in browser.get_log("browser")  # type: ignore[no-untyped-call]
        if entry["level"] == "SEVERE"
        and "favicon.ico" not in entry["message"]
        and "the server responded with a status of" not in entry["message"]  # 4xx pages
    ]
    assert problems == [], "the browser console reported errors"


def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = predicate()
        except WebDriverException:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def shot(browser: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def css(browser: WebDriver, selector: str) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, selector)


def test_overview_shows_counts_and_charts(
    sqlite_site: Site, served: LiveServer, browser: WebDriver
) -> None:
    blocker = sqlite_site.start(fetch, {"source": "crm"})
    sqlite_site.start(report, {"title": "Q3"}, blockers=[blocker])
    for i in range(4):
        done = sqlite_site.start(flow, {"n": i})
        sqlite_site.set_job(done.id, status="completed", completed_at=dt.datetime.now(dt.UTC))
    browser.get(served.url + "/")
    until(lambda: css(browser, "#counts"), "the counts table")
    rows = {r.find_element(By.CSS_SELECTOR, "td").text for r in css(browser, "#counts tbody tr")}
    assert rows == {"fetch", "flow", "report"}
    assert len(css(browser, "svg.chart rect.bar-completed")) >= 1
    shot(browser, "overview")
    css(browser, "#theme-toggle")[0].click()
    dark = browser.find_element(By.TAG_NAME, "html").get_attribute("data-theme")
    assert dark in ("dark", "light")
    if dark == "light":  # the machine prefers dark: the toggle went to light
        css(browser, "#theme-toggle")[0].click()
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-theme") == "dark"
    background = browser.execute_script(  # type: ignore[no-untyped-call]
        "return getComputedStyle(document.body).backgroundColor"
    )
    assert background == "rgb(17, 18, 20)"
    shot(browser, "overview-dark")
    browser.refresh()  # the choice is kept
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("data-theme") == "dark"
    browser.execute_script("localStorage.clear()")  # type: ignore[no-untyped-call]


def test_filter_the_chain_list_open_a_chain_and_load_more(
    sqlite_site: Site, served: LiveServer, browser: WebDriver
) -> None:
    blocker = sqlite_site.start(fetch, {"source": "crm"})
    wanted = sqlite_site.start(report, {"title": "Q3"}, blockers=[blocker])
    for i in range(30):
        sqlite_site.start(flow, {"n": i})
    browser.get(served.url + "/chains")
    assert len(css(browser, "#rows tr")) == 25
    css(browser, "#load-more")[0].click()
    until(lambda: len(css(browser, "#rows tr")) == 31, "the second page appended")
    assert not css(browser, "#load-more")
    box = css(browser, "#filter-type")[0]
    box.send_keys("report")
    box.submit()
    until(lambda: "type=report" in browser.current_url, "the filter in the URL")
    rows = css(browser, "#rows tr")
    assert [r.get_attribute("data-id") for r in rows] == [str(wanted.id)]
    shot(browser, "chains-filtered")
    rows[0].find_element(By.CSS_SELECTOR, "a.open").click()
    until(lambda: css(browser, "#steps"), "the chain page")
    assert browser.find_element(By.ID, "chain-id").text == str(wanted.id)
    steps = css(browser, "#steps > li")
    assert len(steps) == 1
    assert "waits for" in steps[0].text
    assert "fetch" in steps[0].text
    shot(browser, "chain")


def test_trigger_a_scheduled_job_and_see_a_worker_complete_it(
    sqlite_site: Site, served: LiveServer, browser: WebDriver
) -> None:
    later = sqlite_site.start(fetch, {"source": "nightly"}, run_in=dt.timedelta(hours=6))
    worker = sqlite_site.client.worker(poll_interval=0.05, concurrency=1)
    worker.handler(fetch)(lambda attempt: attempt.complete({"rows": 3}))
    worker.start()
    try:
        browser.get(f"{served.url}/jobs/{later.id}")
        assert "pending" in browser.find_element(By.ID, "job-status").text
        shot(browser, "job-scheduled")
        browser.find_element(By.ID, "trigger-now").click()
        until(lambda: "triggered" in browser.find_element(By.CSS_SELECTOR, ".notice").text, "")

        def completed() -> bool:
            browser.refresh()
            return "completed" in browser.find_element(By.ID, "job-status").text

        until(completed, "the worker to complete the triggered job", timeout=15)
        assert not css(browser, "#trigger-now")
        assert '"rows": 3' in browser.page_source
        shot(browser, "job-completed")
    finally:
        assert worker.stop(timeout=10)


def test_delete_a_chain_through_the_confirmation_dialog(
    sqlite_site: Site, served: LiveServer, browser: WebDriver
) -> None:
    chain = sqlite_site.start(fetch, {"source": "old"})
    browser.get(f"{served.url}/chains/{chain.id}")
    browser.find_element(By.ID, "delete-open").click()
    dialog = browser.find_element(By.ID, "delete-dialog")
    until(dialog.is_displayed, "the dialog")
    submit = browser.find_element(By.ID, "delete-submit")
    assert not submit.is_enabled()
    typed = browser.find_element(By.ID, "delete-confirm")
    typed.send_keys(str(chain.id)[:-1])
    assert not submit.is_enabled()
    typed.send_keys(str(chain.id)[-1])
    assert submit.is_enabled()
    shot(browser, "delete-dialog")
    submit.click()
    until(lambda: browser.current_url.startswith(served.url + "/chains?"), "the chain list")
    assert "1 chain(s) deleted" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    assert sqlite_site.status(chain.id) == "None"


def test_bulk_trigger_selected_jobs(
    sqlite_site: Site, served: LiveServer, browser: WebDriver
) -> None:
    later = [sqlite_site.start(fetch, {"n": i}, run_in=dt.timedelta(hours=1)) for i in range(3)]
    browser.get(f"{served.url}/jobs?status=pending")
    css(browser, ".select-all")[0].click()
    assert all(box.is_selected() for box in css(browser, "input[name='ids']"))
    browser.find_element(By.CSS_SELECTOR, "button[value='trigger']").click()
    until(lambda: css(browser, ".notice"), "the notice")
    assert "3 job(s) triggered" in browser.find_element(By.CSS_SELECTOR, ".notice").text
    with Session(sqlite_site.db.engine) as s:
        for chain in later:
            due = sqlite_site.client.get_job(chain.id, session=s).scheduled_at
            assert due <= dt.datetime.now(dt.UTC)


def test_a_blocker_conflict_is_shown_not_hidden(
    sqlite_site: Site, served: LiveServer, browser: WebDriver
) -> None:
    blocker = sqlite_site.start(fetch, {"source": "crm"})
    sqlite_site.start(report, {"title": "Q3"}, blockers=[blocker])
    browser.get(f"{served.url}/chains/{blocker.id}")
    browser.find_element(By.ID, "delete-open").click()
    browser.find_element(By.ID, "delete-confirm").send_keys(str(blocker.id))
    browser.find_element(By.ID, "delete-submit").click()
    until(lambda: "409" in browser.find_element(By.TAG_NAME, "h1").text, "the 409 page")
    assert "Cannot delete" in browser.find_element(By.CSS_SELECTOR, ".error-message").text
    assert sqlite_site.status(blocker.id) == "pending"
