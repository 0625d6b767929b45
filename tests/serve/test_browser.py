"""The review page in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium) loads the page of a small predict run, filters it, clicks a correction, and the labels CSV holds it;
a screenshot is written to the test's folder and checked not to be blank. ``make test-browser`` installs the
browser when missing; without it (or without selenium) the test skips and says why."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.browser

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make test-browser "
                                    "installs it: pip install -e '.[browser]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("headless Chromium not found (chromium and chromedriver on PATH); make test-browser installs "
                    "Debian's chromium + chromium-driver with apt, which needs network")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_operator_corrects_a_prediction_in_the_browser(browser, clip_server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait

    items = requests.get(clip_server.url + "/review/items", timeout=30).json()
    browser.get(clip_server.url + "/review")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == len(items["items"]))
    wait.until(lambda d: all(img.get_property("naturalWidth") > 0 for img in d.find_elements(By.CSS_SELECTOR, ".card img")))
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards]
    assert names == [it["name"] for it in items["items"]]  # sorted by score, as the server lists them
    # the filters: flagged only, then passed only
    flagged = [it for it in items["items"] if it["decision"] == "flagged"]
    Select(browser.find_element(By.ID, "filter")).select_by_value("flagged")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card")) == len(flagged)
    Select(browser.find_element(By.ID, "filter")).select_by_value("all")
    # the operator types a new defect type on the last card and clicks "wrong: type"
    last = browser.find_elements(By.CSS_SELECTOR, ".card")[-1]
    key = last.get_attribute("data-key")
    last.find_element(By.CSS_SELECTOR, "input.type").send_keys("bubble")
    last.find_element(By.CSS_SELECTOR, "button.wrong-type").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "saved"))
    card = browser.find_element(By.CSS_SELECTOR, f'.card[data-key="{key}"]')
    assert "bubble" in card.find_element(By.CSS_SELECTOR, ".label").text
    with Path(items["labels_csv"]).open(newline="") as f:
        rows = {row["image"]: row for row in csv.DictReader(f)}
    path = next(it["path"] for it in items["items"] if it["key"] == key)
    assert rows[path]["label"] == "bubble" and rows[path]["verdict"] == "wrong"
    # "bubble" is now a type of the filter
    assert "type:bubble" in [o.get_attribute("value") for o in
                             Select(browser.find_element(By.ID, "filter")).options]
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "review.png"
    assert browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape[0] > 300 and pixels.std() > 10 and len(np.unique(pixels)) > 50  # not blank
    if os.environ.get("REVIEW_SCREENSHOT"):  # the README's picture: REVIEW_SCREENSHOT=docs/review.png
        shutil.copy(shot, os.environ["REVIEW_SCREENSHOT"])
