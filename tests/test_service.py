"""The app's server-side rules, without a UI: limits, styles, filter, rate limit, comparisons."""

import pytest
from PIL import Image

from fp8pipe.presets import parse_preset
from fp8pipe.requests import RequestError
from fp8pipe.fp8 import psnr
from fp8pipe.service import RateLimiter, Refused, build_request, difference_image
from fp8pipe.specs import SPECS

PRESET = parse_preset(
    'name = "t"\nfilter_words = ["gore"]\n[defaults]\nsteps = 3\nwidth = 64\nheight = 64\n[limits]\nmax_steps = 4\nmax_size = 128\n'
    '[[styles]]\nname = "Bright"\nsuffix = ", bright colors"\n',
    "t.toml",
)
DEMO = SPECS["demo"]


def test_left_out_settings_take_the_presets_defaults_and_the_style_adds_its_suffix():
    request = build_request(PRESET, DEMO, "a cat", style="Bright", seed=1)
    assert (request.steps, request.width, request.height) == (3, 64, 64)
    assert request.prompt == "a cat, bright colors"


def test_the_presets_limits_are_enforced_on_the_server():
    with pytest.raises(RequestError, match="steps: must be a whole number from 1 to 4"):
        build_request(PRESET, DEMO, "a cat", steps=5)


def test_a_filtered_prompt_is_refused_with_the_friendly_message():
    with pytest.raises(Refused, match="different idea"):
        build_request(PRESET, DEMO, "so much G0RE")


def test_the_rate_limit_is_a_rolling_window_per_session():
    limiter = RateLimiter(requests=2, per_seconds=10)
    limiter.check("a", now=0)
    limiter.check("a", now=1)
    with pytest.raises(Refused, match="at most 2 every 10 s. Try again in 9 s"):
        limiter.check("a", now=1)
    limiter.check("b", now=1)  # another session is not affected
    limiter.check("a", now=10.5)  # the first request has left the window


def test_difference_image_and_psnr_of_identical_and_different_images():
    a, b = Image.new("RGB", (8, 8), (10, 20, 30)), Image.new("RGB", (8, 8), (12, 20, 30))
    assert psnr(a, a) == float("inf") and difference_image(a, a)[1] == 0.0
    diff, mean = difference_image(a, b)
    assert diff.getpixel((0, 0)) == (8, 0, 0) and mean == pytest.approx(2 / 3)
    assert psnr(a, b) == pytest.approx(10 * __import__("math").log10(255**2 / (4 / 3)))


def test_the_global_ceiling_holds_over_all_addresses():
    limiter = RateLimiter(requests=2, per_seconds=10, total=3)
    for address in ("a", "b", "c"):
        limiter.check(address, now=0)
    with pytest.raises(Refused, match="from all visitors together: at most 3 every 10 s"):
        limiter.check("d", now=1)


def test_the_client_address_comes_from_a_proxy_header_only_when_one_is_trusted():
    from fp8pipe.service import client_key

    headers = {"X-Real-IP": "203.0.113.9", "X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert client_key("10.0.0.1", headers) == "10.0.0.1"
    assert client_key("10.0.0.1", headers, "X-Real-IP") == "203.0.113.9"
    assert client_key("10.0.0.1", headers, "X-Forwarded-For") == "203.0.113.7"  # what the proxy appended


def test_a_negative_prompt_holding_a_filter_word_is_refused():
    with pytest.raises(Refused):
        build_request(PRESET, DEMO, "a castle", negative_prompt="GORE")
