"""The demo storefront in a real browser (Debian's headless Chromium driven by Selenium) against
the real gateway, Triton and Milvus Lite. Screenshots go to artifacts/storefront/."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.support import ROOT, photo
from visrec.local.storefront.server import Storefront, StorefrontServer

SHOTS = ROOT / "artifacts" / "storefront"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--window-size=1280,1100"]


@pytest.fixture
def storefront(gateway, catalog) -> Iterator[StorefrontServer]:
    server = StorefrontServer(Storefront(f"127.0.0.1:{gateway.port}", catalog.parent),
                              port=0).start()
    yield server
    server.stop()


def interactions_counted(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^visrec_interactions_total\{[^}]*type="click"[^}]*\} (\S+)$', text, re.M))


def tiles(driver: webdriver.Chrome, grid: str) -> list[str]:
    """The item ids a grid shows, read in one go (grids are re-rendered as answers arrive)."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(t => t.dataset.id)",
        f"#{grid} .tile"))


def chromium() -> tuple[webdriver.Chrome, WebDriverWait]:
    """Debian's headless Chromium, and a 60 s wait on it."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    return driver, WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])


def browse(url: str, user: str, upload: Path, not_an_image: Path) -> dict[str, Any]:
    """What a shopper does, step by step; returns what the page showed."""
    driver, wait = chromium()
    seen: dict[str, Any] = {}
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"{url}/?user={user}")
        wait.until(lambda d: tiles(d, "recs")
                   and "model version" in d.find_element(By.ID, "recs-meta").text)
        assert driver.find_element(By.ID, "user").get_attribute("value") == user
        seen["cold"] = tiles(driver, "recs")
        seen["cold_meta"] = driver.find_element(By.ID, "recs-meta").text
        seen["images_loaded"] = driver.execute_script(
            "return [...document.querySelectorAll('#recs img')]"
            ".every(i => i.complete && i.naturalWidth > 0)")
        driver.save_screenshot(str(SHOTS / "1-cold-user.png"))

        first = driver.find_elements(By.CSS_SELECTOR, "#recs .tile")[0]
        seen["clicked"] = first.get_attribute("data-id")
        first.click()
        wait.until(lambda d: d.find_element(By.ID, "clicks").text == "1" and tiles(d, "similar"))
        wait.until(lambda d: tiles(d, "recs") and tiles(d, "recs") != seen["cold"])
        seen["similar"] = tiles(driver, "similar")
        seen["after_click"] = tiles(driver, "recs")
        seen["after_meta"] = driver.find_element(By.ID, "recs-meta").text
        driver.save_screenshot(str(SHOTS / "2-after-a-click.png"))

        driver.find_element(By.ID, "upload").send_keys(str(upload))
        wait.until(lambda d: tiles(d, "search"))
        seen["search"] = tiles(driver, "search")
        seen["search_meta"] = driver.find_element(By.ID, "search-meta").text
        driver.save_screenshot(str(SHOTS / "3-search-by-image.png"))

        driver.find_element(By.ID, "upload").send_keys(str(not_an_image))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        seen["upload_error"] = driver.find_element(By.ID, "error").text
        seen["search_after_error"] = tiles(driver, "search")
        driver.save_screenshot(str(SHOTS / "4-upload-error.png"))

        field = driver.find_element(By.ID, "user")
        field.clear()
        driver.find_element(By.ID, "load").click()
        wait.until(lambda d: "user_id" in d.find_element(By.ID, "error").text)
        seen["empty_user_error"] = driver.find_element(By.ID, "error").text
        driver.save_screenshot(str(SHOTS / "5-empty-user-error.png"))
        seen["console"] = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    return seen


@pytest.mark.timeout(600)
async def test_a_shopper_sees_picks_clicks_an_item_and_searches_by_photo(gateway, storefront,
                                                                         tmp_path):
    user = f"ui-{uuid.uuid4().hex[:8]}"
    upload = tmp_path / "cat.jpg"
    upload.write_bytes(photo("chelsea", "JPEG"))
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("this is not a picture")
    before = await asyncio.to_thread(interactions_counted, gateway.metrics_port)

    seen = await asyncio.to_thread(browse, storefront.url, user, upload, not_an_image)

    after = await asyncio.to_thread(interactions_counted, gateway.metrics_port)
    assert after == before + 1, "the click did not reach the gateway"
    assert len(seen["cold"]) == 12 and seen["images_loaded"]
    assert "model version 1" in seen["cold_meta"] and "fallback: cold_user" in seen["cold_meta"]
    assert seen["clicked"] not in seen["similar"] and len(seen["similar"]) == 8
    # the click reached the profile: personalised now, no longer the cold-user fallback
    assert seen["after_click"] != seen["cold"]
    assert "fallback" not in seen["after_meta"] and "policy similarity" in seen["after_meta"]
    assert len(seen["search"]) == 12 and "model version 1" in seen["search_meta"]
    assert seen["upload_error"].startswith("INVALID_ARGUMENT: ")
    assert "image" in seen["upload_error"]
    assert seen["search_after_error"] == seen["search"]
    assert seen["empty_user_error"] == "INVALID_ARGUMENT: user_id is empty"
    assert seen["console"] == [] or all("status of 400" in e["message"]
                                        for e in seen["console"]), seen["console"]
    for name in ("1-cold-user", "2-after-a-click", "3-search-by-image", "4-upload-error"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000


def _get(url: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_the_storefront_api_turns_gateway_errors_into_readable_json(storefront):
    url = storefront.url
    status, body = await asyncio.to_thread(_get, f"{url}/api/recommend?user=u&k=abc")
    assert (status, body["error"]) == (400, "INVALID_ARGUMENT")
    assert "whole number" in body["message"]
    status, body = await asyncio.to_thread(_get, f"{url}/api/recommend?user=u&k=0")
    assert (status, body["error"]) == (400, "INVALID_ARGUMENT") and "k must be" in body["message"]
    status, body = await asyncio.to_thread(_get, f"{url}/api/similar?item=no-such-item")
    assert (status, body["error"]) == (404, "NOT_FOUND") and "no-such-item" in body["message"]
    status, body = await asyncio.to_thread(_get, f"{url}/api/click", b"[1, 2]")
    assert (status, body["error"]) == (400, "INVALID_ARGUMENT")
    status, body = await asyncio.to_thread(_get, f"{url}/api/search", b"x" * (11 * 1024 * 1024))
    assert status == 413 and "limit" in body["message"]
    status, body = await asyncio.to_thread(_get, f"{url}/images/..%2F..%2F..%2Fetc%2Fpasswd")
    assert status == 404
    status, body = await asyncio.to_thread(_get, f"{url}/static/../server.py")
    assert status == 404


async def test_a_gateway_that_is_down_is_a_readable_503(catalog):
    from tests.support import free_port

    server = StorefrontServer(Storefront(f"127.0.0.1:{free_port()}", catalog.parent,
                                         timeout_s=3), port=0).start()
    try:
        status, body = await asyncio.to_thread(_get, f"{server.url}/api/recommend?user=u")
    finally:
        server.stop()
    assert (status, body["error"]) == (503, "UNAVAILABLE") and body["message"]
