"""The live status page in real headless Chromium: numbers change after traffic, without a reload."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.daemon_support import Daemon, admin_config, byte_counts, http_get, start_backend
from tests.support import free_port, stop_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1500")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are not installed",
)


def wait_for(condition: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_updates_in_place_after_traffic(tmp_path: Path) -> None:
    selenium = pytest.importorskip("selenium")
    import trustme
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    ca = trustme.CA()
    ca.issue_cert("site.test").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "site.pem"))
    backend, backend_port = start_backend()
    dead = free_port()
    daemon = Daemon(tmp_path, admin_config(tmp_path, backend_port, dead, 0.3))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{daemon.port}/admin")
        polls = lambda: int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0)
        wait_for(lambda: polls() >= 2, "the page to poll status.json")
        driver.execute_script("window.sameDocument = 'yes'")
        cell = lambda key, column: driver.find_element(
            By.CSS_SELECTOR, f'tr[data-key="{key}"]').find_elements(By.TAG_NAME, "td")[column].text
        assert cell("route:web", 3) == "0"
        assert cell("route:https/site", 0) == "https/site"  # nested under its termination route
        accepted_before = int(driver.find_element(By.ID, "accepted").text.replace(",", ""))
        wait_for(lambda: "DOWN" in cell(f"backend:web:tcp:127.0.0.1:{dead}", 2), "the dead backend to show DOWN")
        assert cell(f"backend:web:tcp:127.0.0.1:{backend_port}", 2) == "UP"
        assert "site.test" in cell("cert:https:" + str(tmp_path / "site.pem"), 0)

        for _ in range(6):
            assert http_get(daemon.port, "/x").startswith(b"HTTP/1.0 200")
        subprocess.run(["nc", "-N", "127.0.0.1", str(daemon.port)], input=b"nosuch\r\n",
                       check=False, capture_output=True, timeout=10)

        wait_for(lambda: cell("route:web", 3) == "6", "the web route's count to reach 6")
        wait_for(lambda: int(driver.find_element(By.ID, "accepted").text.replace(",", "")) >= accepted_before + 7,
                 "the accepted total to grow")
        wait_for(lambda: cell("reason:unknown_service", 1) == "1", "the refusal reason to appear")
        assert (cell("route:web", 7) != "0 B") == byte_counts()  # bytes in
        points = driver.find_element(By.CSS_SELECTOR, 'tr[data-key="route:web"] svg polyline').get_attribute("points")
        assert points and len(points.split()) >= 2  # the chart has samples
        assert driver.execute_script("return window.sameDocument") == "yes"  # never reloaded
        driver.save_screenshot(str(tmp_path / "status-page.png"))
    finally:
        driver.quit()
        daemon.stop()
        stop_process(backend)
    assert (tmp_path / "status-page.png").stat().st_size > 10000
    del selenium
