"""The search page as a person uses it: the real service (``aepipe serve-search`` in a subprocess on a
loopback port) driven in headless Chromium (Debian's chromium + chromium-driver, through Selenium):
upload an image, check the grid shows the expected ids, click a result, check again; screenshot.
Skipped, with the reason, when no browser or driver is installed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from aepipe.index.search import Searcher

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(trained_run):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aepipe.cli",
            "serve-search",
            "--run-dir",
            str(trained_run.run_dir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # a loaded 2-core machine can take a while to import torch
    while True:
        try:
            urllib.request.urlopen(url + "/api/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"service did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.3)
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_ctrl_c_stops_the_service_cleanly(service):
    _, proc = service
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (apt-get install)")
def test_page_upload_then_click_a_result_in_headless_chromium(service, trained_run, digits_x, write_png, tmp_path):
    pytest.importorskip("selenium", reason="needs selenium (pip install 'aepipe[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = service
    query = write_png(tmp_path / "seven.png", (digits_x[7, 0] * 255).round().astype(np.uint8))
    searcher = Searcher(trained_run.run_dir)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert trained_run.model_id in driver.find_element(By.ID, "answered").text

        def grid_ids() -> list[str]:
            wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done")
            return [e.get_attribute("data-id") for e in driver.find_elements(By.CSS_SELECTOR, "#results .hit")]

        driver.find_element(By.ID, "file").send_keys(str(query))
        driver.find_element(By.ID, "search-image").click()
        expected = [h.id for h in searcher.search_images([query], 12)[0]]
        assert grid_ids() == expected
        # every thumbnail loaded (the browser decoded a PNG from /api/items/ID/thumbnail.png)
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        assert f"answered by model {trained_run.model_id}" in driver.find_element(By.ID, "answered").text

        clicked = expected[2]
        driver.execute_script("document.getElementById('results').dataset.state = 'clicked'")
        driver.find_element(By.CSS_SELECTOR, f'#results .hit[data-id="{clicked}"]').click()
        assert grid_ids() == [h.id for h in searcher.search_ids([clicked], 12)[0]]
        assert f"neighbours of {clicked}" in driver.find_element(By.ID, "query").text
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        shot = Path(os.environ.get("AEPIPE_SCREENSHOT_DIR", tmp_path)) / "search-page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 0
    finally:
        driver.quit()
