"""The kiosk and advanced pages in headless Debian chromium, driven by Playwright.

With FP8PIPE_REFRESH_DOCS=1 they also rewrite the README's screenshots (docs/kiosk.png from
`python app.py --kiosk`, docs/advanced.png from `python app.py`); otherwise screenshots go
to a temporary folder, so a test run leaves the checkout as it was.
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


@pytest.fixture
def screenshots(tmp_path):
    """Where screenshots go: docs/ when asked to refresh them, else this test's temporary folder."""
    return DOCS if REFRESH_DOCS else tmp_path


@pytest.fixture(scope="module")
def plain_kiosk_app():
    """`python app.py --kiosk` as the README runs it: the demo model, the cpu-demo preset."""
    from conftest import start_app

    url, demo, state = start_app(["--kiosk"])
    yield url, state
    demo.close()
    state.engine.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_the_attract_screen_shows_example_pictures_on_a_fresh_start(browser, kiosk_app):
    url, state = kiosk_app
    assert not state.recent and state.examples  # nobody has made a picture yet
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    expect(page.locator("#attract-image img")).to_be_visible(timeout=30_000)
    assert page.locator("#attract-image img").get_attribute("src")
    page.close()


def test_the_kiosk_offers_only_words_the_demo_knows(browser, kiosk_app):
    """The test preset lists an example ("a lighthouse on a cliff") and a style (", bright
    colors") the demo model does not know: neither is offered."""
    from fp8pipe.vocabulary import unknown_words

    url, _ = kiosk_app
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.locator("#start-button").click()
    placeholder = page.locator("#prompt textarea").get_attribute("placeholder")
    chips = page.locator("#ideas button")
    expect(chips.first).to_be_visible(timeout=30_000)
    ideas = [t.strip() for t in chips.all_inner_texts()]
    assert ideas == ["a red circle", "a blue square"]
    assert placeholder == "a red circle" and not unknown_words(placeholder)
    expect(page.locator("#style")).to_be_hidden()  # "Plain" is the only style left
    expect(page.locator("#vocabulary")).to_contain_text("circle, square, triangle, star")
    page.close()


def test_kiosk_makes_an_image_and_returns_to_the_attract_screen_when_idle(browser, kiosk_app):
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
    # Nobody touches it: after idle_seconds (10 s in the test preset) it resets itself.
    expect(page.locator("#attract")).to_be_visible(timeout=30_000)
    expect(page.locator("#kiosk-main")).to_be_hidden()
    page.locator("#start-button").click()
    expect(page.locator("#prompt textarea")).to_have_value("")
    page.close()


def test_the_kiosk_as_the_readme_starts_it(browser, plain_kiosk_app, screenshots):
    """docs/kiosk.png is this page: `python app.py --kiosk`, one picture made."""
    url, _ = plain_kiosk_app
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    expect(page.locator("#attract-image img")).to_be_visible(timeout=30_000)
    page.locator("#start-button").click()
    page.locator("#prompt textarea").fill("a red star on the left on a white background")
    page.locator("#generate-button").click()
    expect(page.locator("#status")).to_contain_text("Done in", timeout=60_000)
    expect(page.locator("#result-image img")).to_be_visible()
    screenshots.mkdir(exist_ok=True)
    page.screenshot(path=str(screenshots / "kiosk.png"), full_page=True)
    page.close()


def test_advanced_mode_generates_and_shows_stats(browser, advanced_app, screenshots):
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#prompt textarea").fill("a yellow square in the center on a black background")
    page.locator("#generate-button").click()
    expect(page.locator("#result-gallery img").first).to_be_visible(timeout=60_000)
    expect(page.locator("#stats-table")).to_contain_text("denoise", timeout=30_000)
    expect(page.locator("#stats-table")).to_contain_text("peak memory")
    expect(page.locator("#result-gallery")).to_contain_text("Images (64x64 px, shown at 4x)")
    expect(page.locator("#history img").first).to_be_visible()
    expect(page.get_by_text("latency_s")).to_have_count(0)  # the raw JSON waits behind its toggle
    page.locator("#stats-json").get_by_text("Stats as JSON").click()
    expect(page.get_by_text("latency_s").first).to_be_visible()
    page.locator("#stats-json").get_by_text("Stats as JSON").click()
    screenshots.mkdir(exist_ok=True)
    page.screenshot(path=str(screenshots / "advanced.png"), full_page=True)
    page.close()


def test_history_belongs_to_one_browser_session(browser, advanced_app):
    """One visitor generates; another visitor's History stays empty, and once they generate
    too, it holds their picture alone."""
    url, _ = advanced_app
    maker, other = browser.new_context(viewport={"width": 1400, "height": 1000}), browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        mine, theirs = maker.new_page(), other.new_page()
        theirs.goto(url)
        mine.goto(url)
        mine.locator("#prompt textarea").fill("a blue circle on a white background")
        mine.locator("#generate-button").click()
        expect(mine.locator("#history img").first).to_be_visible(timeout=60_000)
        expect(theirs.locator("#generate-button")).to_be_visible()
        expect(theirs.locator("#history img")).to_have_count(0)
        theirs.reload()
        expect(theirs.locator("#generate-button")).to_be_visible(timeout=30_000)
        expect(theirs.locator("#history img")).to_have_count(0)
        theirs.locator("#prompt textarea").fill("a green square on a black background")
        theirs.locator("#generate-button").click()
        expect(theirs.locator("#history")).to_contain_text("seed", timeout=60_000)
        expect(theirs.locator("#history img")).to_have_count(1)
    finally:
        maker.close()
        other.close()


def test_generate_is_above_the_fold_on_a_laptop_screen(browser, advanced_app):
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    page.goto(url)
    expect(page.locator("#generate-button")).to_be_in_viewport(timeout=30_000)
    assert page.locator("#prompt textarea").get_attribute("placeholder")
    expect(page.locator("#examples")).to_be_visible()
    page.close()


def test_advanced_compare_mode_shows_fp8_and_bf16_with_their_difference(browser, advanced_app):
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#prompt textarea").fill("a green triangle")
    page.get_by_label("Compare FP8 with BF16 (same seed)").check()
    page.locator("#generate-button").click()
    expect(page.locator("#result-gallery img")).to_have_count(2, timeout=60_000)
    expect(page.locator("#stats-table")).to_contain_text("FP8 against BF16: PSNR", timeout=30_000)
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


def test_dropping_an_adversarial_png_reads_what_it_can_and_the_server_keeps_serving(browser, advanced_app, tmp_path):
    from gradio_client import Client
    from PIL import Image

    from fp8pipe.metadata import png_info

    # the attack's long run of spaces inside a setting, a superscript and a 5000-digit number
    text = "a purple moon\nSteps: \u00b2, Seed: " + "9" * 5000 + ", A" + " " * 60_000 + "!"
    path = tmp_path / "adversarial.png"
    Image.new("RGB", (64, 64), (80, 0, 120)).save(path, pnginfo=png_info(text))
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#parameters-drop input[type=file]").set_input_files(str(path))
    expect(page.locator("#prompt textarea")).to_have_value("a purple moon", timeout=30_000)
    page.close()
    image, _ = Client(url, verbose=False).predict(prompt="next visitor", steps=1, api_name="/generate")
    assert image.endswith(".png")


def test_advanced_mode_picks_a_lora_from_the_folder_and_the_stats_say_so(browser, advanced_app):
    """The demo app's LoRA panel lists the demo LoRA; picking it in a slot sends it with the request."""
    url, _ = advanced_app
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator("#lora-panel").get_by_text("LoRAs (1 in the folder 'loras')").click()
    page.locator("#lora-name-1 input").click()
    page.get_by_role("option", name="house_black").click()
    page.locator("#prompt textarea").fill("a red circle in the center")
    page.locator("#generate-button").click()
    expect(page.locator("#stats-table")).to_contain_text("house_black 1 (runtime)", timeout=60_000)
    page.close()
