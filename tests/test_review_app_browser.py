"""The review app end to end in headless Chromium: the real `wildreid app` command on a small generated
gallery, driven through the page like a reviewer. Skipped, with the reason, where Chromium, its driver,
Selenium or Gradio are missing; CI installs them (`make install-browser`, run by `.ci/run`) and sets
WILDREID_REQUIRE_BROWSER=1, which turns a missing browser into an error instead of a skip.

Set WILDREID_SCREENSHOT_DIR to keep the screenshots (the README's pictures come from `docs/`)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wildreid.identification import Gallery
from wildreid.identification.review.audit import AuditLog
from wildreid.identification.review.demo_gallery import build_demo_gallery

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    if not CHROMIUM or not DRIVER:
        return "headless Chromium not installed (apt-get install chromium chromium-driver, or make install-browser)"
    for module in ("selenium", "gradio"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install -e '.[dev]')"
    return None


if _missing() and os.environ.get("WILDREID_REQUIRE_BROWSER"):  # CI (.ci/run): these tests must run
    raise RuntimeError(f"WILDREID_REQUIRE_BROWSER is set but {_missing()}")
pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
TOP_K = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """`wildreid app` serving a fresh generated gallery; yields its URL, folders and query photos."""
    built = build_demo_gallery(tmp_path_factory.mktemp("app"))
    port = _free_port()
    log = open(built["gallery"].parent / "app.log", "w")
    uploads = built["gallery"].parent / "gradio-temp"  # the app makes its own wildreid-app-* folder inside
    uploads.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(uploads)}
    process = subprocess.Popen([sys.executable, "-m", "wildreid.identification.cli", "app", "--gallery", str(built["gallery"]),
                                "--port", str(port), "--top_k", str(TOP_K)], stdout=log, stderr=subprocess.STDOUT,
                               env=env, cwd=Path(__file__).resolve().parents[1])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"the app did not start: {(built['gallery'].parent / 'app.log').read_text()[-2000:]}")
    assert [folder.name[:13] for folder in uploads.iterdir()] == ["wildreid-app-"]
    yield {**built, "url": url, "review": built["gallery"].with_name("gallery.review"), "uploads": uploads}
    process.terminate()  # SIGTERM: the app removes its uploads folder on the way out
    process.wait(timeout=30)
    log.close()
    assert not list(uploads.glob("wildreid-app-*")), "the app left its uploads behind"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text


def _wait_for_text(driver, selector: str, expected: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: expected in _text(d, selector))


def _wait_for_thumbnails(driver, count: int, timeout: float = 60):
    """Until the gallery browser has finished updating and shows `count` loaded thumbnails."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = """const images = document.querySelectorAll('#gallery-browser img');
        const busy = document.querySelector('#gallery-browser .pending, #gallery-count .pending');
        return !busy && images.length === arguments[0] && [...images].every(i => i.complete && i.naturalWidth > 0);"""
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script, count))


def _query(driver, url: str, photo: Path) -> None:
    """Open the app, upload one photo, ask for candidates and wait until they are shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 90)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#query-files input[type=file]"))).send_keys(str(photo))
    _wait_for_text(driver, "#query-files", photo.stem)  # uploaded to the server (the name may wrap at the dot)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#find"))).click()
    _wait_for_text(driver, "#status", "candidates for 1 photo")


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("WILDREID_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))


def test_upload_shows_k_candidates_with_match_pictures_and_same_as_updates_disk(app, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = Gallery.load(app["gallery"])
    _query(browser, app["url"], app["images"][4])  # a photo of zebra/001
    assert list(app["uploads"].glob(f"wildreid-app-*/**/{app['images'][4].name}"))  # uploads land in the app's folder
    for i in range(TOP_K):
        assert browser.find_element(By.CSS_SELECTOR, f"#candidate-{i}").is_displayed()
        for picture in ("pair", "match"):  # both pictures arrive: query | gallery image, at least 256 px wide
            WebDriverWait(browser, 60).until(lambda d: d.execute_script(
                "const image = document.querySelector(arguments[0]);"
                "return image && image.complete && image.naturalWidth", f"#candidate-{i}-{picture} img") > 256)
    assert _text(browser, "#candidate-0-text").startswith("1. zebra/001")
    # The app's default, auto, ranks by the demo gallery's recorded choice, as `wildreid identify` would.
    for shown in ("method: fusion", "fused score", "cosine", "verified local matches"):
        assert shown in _text(browser, "#candidate-0-text")
    assert "Suggestion" in _text(browser, "#suggestion")
    _screenshot(browser, "review_app_candidates.png", tmp_path)

    browser.find_element(By.CSS_SELECTOR, "#same-0").click()
    _wait_for_text(browser, "#status", "Decision recorded: same as zebra/001")
    after = Gallery.load(app["gallery"])
    assert len(after) == len(before) + 1 and after.metadata["identity"].iloc[-1] == "zebra/001"
    record = AuditLog(app["review"] / "audit.jsonl").records()[-1]
    assert record["decision"] == "same" and record["identity"] == "zebra/001"
    assert [c["identity"] for c in record["candidates"]][0] == "zebra/001" and len(record["candidates"]) == TOP_K
    assert str(len(after)) in _text(browser, "#gallery-summary")


def test_new_individual_and_undo(app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    before = Gallery.load(app["gallery"])
    lines_before = len(AuditLog(app["review"] / "audit.jsonl").records())
    _query(browser, app["url"], app["images"][9])
    browser.find_element(By.CSS_SELECTOR, "#new-name textarea, #new-name input").send_keys("Newcomer")
    browser.find_element(By.CSS_SELECTOR, "#decide-new").click()
    _wait_for_text(browser, "#status", "new individual zebra/Newcomer")
    assert "zebra/Newcomer" in Gallery.load(app["gallery"]).identities

    browser.find_element(By.CSS_SELECTOR, "#undo").click()
    _wait_for_text(browser, "#status", "Undone: new zebra/Newcomer")
    restored = Gallery.load(app["gallery"])
    assert restored.metadata["image_id"].tolist() == before.metadata["image_id"].tolist()
    records = AuditLog(app["review"] / "audit.jsonl").records()[lines_before:]
    assert [r["decision"] for r in records] == ["new", "undo"] and records[1]["undoes"] == records[0]["id"]

    # The gallery browser: thumbnails with counts, search by name.
    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Gallery')]").click()
    _wait_for_thumbnails(browser, len(restored.identities))
    assert _text(browser, "#gallery-count") == f"{len(restored.identities)} individuals"
    _screenshot(browser, "review_app_gallery.png", tmp_path)
    search = browser.find_element(By.CSS_SELECTOR, "#gallery-search textarea, #gallery-search input")
    search.send_keys("001")
    browser.find_element(By.CSS_SELECTOR, "#gallery-search-button").click()
    _wait_for_thumbnails(browser, 1)
    assert _text(browser, "#gallery-count") == "1 individuals matching '001'"
    count = int((restored.metadata["identity"] == "zebra/001").sum())
    assert f"zebra/001 ({count} images)" in _text(browser, "#gallery-browser")
