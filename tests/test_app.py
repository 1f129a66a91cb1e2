"""app.py through gradio_client: the /generate API, its errors, kiosk limits, the queue."""

import threading

import pytest
from conftest import DEMO_SIDE, DEMO_SPEC, demo_app_limits, hold_at_denoise, size_error
from gradio_client import Client
from PIL import Image

from fp8pipe.metadata import parse_parameters


def test_generate_returns_a_png_with_parameters_and_stats_using_preset_defaults(advanced_app):
    url, _ = advanced_app
    image, stats = Client(url, verbose=False).predict(prompt="a red ball", seed=3, api_name="/generate")
    png = Image.open(image)
    assert png.format == "PNG" and png.size == (DEMO_SIDE, DEMO_SIDE)  # cpu-demo's default size
    params = parse_parameters(png.text["parameters"])
    assert params["prompt"] == "a red ball" and params["Seed"] == "3" and params["Steps"] == "8"
    assert stats["seed"] == 3 and stats["steps"] == 8 and stats["precision"] == "fp8" and "latency_s" in stats


def test_the_same_seed_through_the_api_gives_the_same_image(advanced_app):
    url, _ = advanced_app
    client = Client(url, verbose=False)
    a, _ = client.predict(prompt="a red ball", seed=11, steps=2, api_name="/generate")
    b, _ = client.predict(prompt="a red ball", seed=11, steps=2, api_name="/generate")
    assert Image.open(a).tobytes() == Image.open(b).tobytes()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"width": 100}, f"width: {size_error(demo_app_limits())}; got 100"),
        ({"steps": 0}, f"steps: must be a whole number from 1 to {demo_app_limits().max_steps}"),
        ({"guidance": -1}, f"guidance: must be a number from 0 to {demo_app_limits().max_guidance}"),
        ({"seed": -5}, "seed: must be a whole number from 0 to 4294967295"),
        ({"seed": 1.5}, "seed: must be a whole number"),
    ],
)
def test_bad_inputs_come_back_as_errors_that_name_the_field(advanced_app, fields, message):
    url, _ = advanced_app
    with pytest.raises(Exception, match=message):
        Client(url, verbose=False).predict(**{"prompt": "a red ball", **fields}, api_name="/generate")


def test_the_server_keeps_serving_after_a_bad_request(advanced_app):
    url, _ = advanced_app
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="width: must be"):
        client.predict(prompt="a red ball", width=7, api_name="/generate")
    image, _ = client.predict(prompt="a red ball", steps=1, api_name="/generate")
    assert Image.open(image).size == (DEMO_SIDE, DEMO_SIDE)


@pytest.mark.parametrize(
    "fields, message",
    [({"steps": 10}, "steps: must be a whole number from 1 to 4"), ({"width": 256}, f"width: must be {DEMO_SPEC.min_resolution} to 128 in steps")],
)
def test_a_kiosk_request_over_the_presets_limits_is_refused_at_the_api(kiosk_app, fields, message):
    url, _ = kiosk_app
    with pytest.raises(Exception, match=message):
        Client(url, verbose=False).predict(prompt="a red ball", **fields, api_name="/generate")


def test_the_kiosk_filter_refuses_a_listed_word_with_a_friendly_message(kiosk_app):
    url, _ = kiosk_app
    with pytest.raises(Exception, match="try a different idea"):
        Client(url, verbose=False).predict(prompt="a N.U.D.E statue", api_name="/generate")


def test_the_kiosk_rate_limit_counts_by_address_so_a_new_session_per_request_does_not_escape_it(kiosk_app):
    url, state = kiosk_app
    state.limiter.forget()
    try:
        for seed in range(5):
            Client(url, verbose=False).predict(prompt="a dot", seed=seed, steps=1, api_name="/generate")  # a fresh session each time
        with pytest.raises(Exception, match="Too many requests: at most 5 every 600 s"):
            Client(url, verbose=False).predict(prompt="a dot", steps=1, api_name="/generate")
        forged = Client(url, verbose=False, headers={"X-Real-IP": "203.0.113.9"})  # no --trusted-proxy-header: ignored
        with pytest.raises(Exception, match="Too many requests"):
            forged.predict(prompt="a dot", steps=1, api_name="/generate")
    finally:
        state.limiter.forget()


def test_a_full_queue_is_a_clear_error_and_queued_work_still_completes(kiosk_app):
    url, state = kiosk_app
    running, release = hold_at_denoise(state.engine)
    try:
        first = Client(url, verbose=False).submit(prompt="one", steps=1, api_name="/generate")
        assert running.wait(30)
        second = Client(url, verbose=False).submit(prompt="two", steps=1, api_name="/generate")
        for _ in range(100):  # until the second job holds the one waiting place
            if second.status().code.name in ("IN_QUEUE", "QUEUE_FULL"):
                break
            threading.Event().wait(0.1)
        with pytest.raises(Exception, match="(?i)queue is full"):
            Client(url, verbose=False).predict(prompt="three", steps=1, api_name="/generate")
    finally:
        state.engine.fault_hook = None
        release.set()
    assert Image.open(first.result(timeout=60)[0]).size == (64, 64)
    assert Image.open(second.result(timeout=60)[0]).size == (64, 64)


def test_a_prompt_word_the_demo_does_not_know_is_warned_about_in_the_stats(advanced_app):
    url, _ = advanced_app
    _, stats = Client(url, verbose=False).predict(prompt="a red lighthouse", seed=1, steps=1, api_name="/generate")
    assert stats["warning"] == "the demo model does not know 'lighthouse': those words are ignored"
    _, stats = Client(url, verbose=False).predict(prompt="a red star", seed=1, steps=1, api_name="/generate")
    assert stats["warning"] is None


def test_a_refused_input_is_one_log_line_with_field_value_and_client_and_no_traceback(advanced_app, caplog, capfd):
    import logging

    url, _ = advanced_app
    with caplog.at_level(logging.WARNING, logger="fp8pipe.app"), pytest.raises(Exception, match="width: must be"):
        Client(url, verbose=False).predict(prompt="a red ball", width=100, api_name="/generate")
    refused = [r.getMessage() for r in caplog.records if r.name == "fp8pipe.app"]
    assert len(refused) == 1 and refused[0].startswith("refused width=100 from 127.0.0.1: width: must be")
    assert "Traceback" not in capfd.readouterr().err
