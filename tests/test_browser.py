"""The kiosk and advanced pages in headless Debian chromium, driven by Playwright.

Screenshots go to a temporary folder, so a test run leaves the tree clean; with
FP8PIPE_REFRESH_DOCS=1 they refresh the README's (docs/kiosk.png, docs/advanced.png).
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
REFRESH_DOCS = os.environ.get("FP8PIPE_REFRESH_DOCS") == "1"
if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("Debian chromium is not installed (apt-get install chromium); CI installs it", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

# As root on a closed network: no sandbox, and no background connections to refuse.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where screenshots go: docs/ when asked to refresh it, else a temporary folder."""
    return DOCS if REFRESH_DOCS else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_kiosk_makes_an_image_and_returns_to_the_attract_screen_when_idle(browser, kiosk_app, shots):
    url, _ = kiosk_app
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    expect(page.locator("#attract")).to_be_visible(timeout=30_000)
    page.locator("#start-button").click()
    prompt = page.locator("#prompt textarea")
    expect(prompt).to_be_visible()
    prompt.fill("a red circle in the center on a white background")
    page.locator("#generate-button").click()
    expect(page.locator("#result-image img")).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("Done in", timeout=60_000)
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / "kiosk.png"), full_page=True)
    # Nobody touches it: after idle_seconds (10 s in the test preset) it resets itself.
    expect(page.locator("#attract")).to_be_visible(timeout=30_000)
    expect(page.locator("#kiosk-main")).to_be_hidden()
    page.locator("#start-button").click()
    expect(page.locator("#prompt textarea")).to_have_value("")
    page.close()


def test_advanced_mode_generates_and_shows_stats(browser, advanced_app, shots):
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#prompt textarea").fill("a yellow square in the center on a black background")
    page.locator("#generate-button").click()
    expect(page.locator("#result-gallery img").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("latency_s").first).to_be_visible(timeout=30_000)
    page.screenshot(path=str(shots / "advanced.png"), full_page=True)
    page.close()


def test_advanced_compare_mode_shows_fp8_and_bf16_with_their_difference(browser, advanced_app):
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#prompt textarea").fill("a green triangle")
    page.get_by_label("Compare FP8 with BF16 (same seed)").check()
    page.locator("#generate-button").click()
    expect(page.locator("#result-gallery img")).to_have_count(2, timeout=60_000)
    expect(page.get_by_text("psnr_db").first).to_be_visible(timeout=30_000)
    expect(page.locator("#diff-image img")).to_be_visible()
    page.close()


def test_dropping_a_png_reads_its_parameters_back_into_the_settings(browser, advanced_app, tmp_path):
    from PIL import Image

    from fp8pipe.metadata import format_parameters, png_info

    text = format_parameters("a purple moon", "fog", {"Steps": 12, "CFG scale": 6.5, "Seed": 777, "Size": "96x160"})
    path = tmp_path / "made-elsewhere.png"
    Image.new("RGB", (96, 160), (80, 0, 120)).save(path, pnginfo=png_info(text))
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#parameters-drop input[type=file]").set_input_files(str(path))
    expect(page.locator("#prompt textarea")).to_have_value("a purple moon", timeout=30_000)
    expect(page.get_by_label("Seed", exact=True)).to_have_value("777")
    expect(page.get_by_label("number input for Steps")).to_have_value("12")
    expect(page.get_by_label("number input for Guidance")).to_have_value("6.5")
    expect(page.get_by_label("number input for Width")).to_have_value("96")
    expect(page.get_by_label("number input for Height")).to_have_value("160")
    page.close()
