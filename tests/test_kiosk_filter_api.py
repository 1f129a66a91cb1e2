"""The image filter at the API: a kiosk whose classifier flags every picture returns none of
them (gradio_client), keeps none in its output folder or slideshow, tells the visitor what the
word filter tells them and logs one line; a kiosk whose classifier passes them reports the
filter's time in the stats. Also the take-home links: /takehome serves the output folder's
PNGs by name and nothing else."""

import logging
import urllib.error
import urllib.request

import pytest
from conftest import free_port, start_app
from gradio_client import Client
from tiny_classifier import save_tiny_classifier

from fp8pipe.safety import FRIENDLY_MESSAGE

PRESET = """
name = "kiosk-filtered"
model = "demo"
idle_seconds = 60
examples = ["a red circle", "a blue square"]

[image_filter]
model = "{folder}"
labels = ["nsfw"]
threshold = 0.5

[defaults]
steps = 2
width = 64
height = 64

[rate_limit]
requests = 100
per_seconds = 60
"""


def kiosk_with_classifier(tmp_path_factory, flags: bool, *extra):
    folder = save_tiny_classifier(tmp_path_factory.mktemp("classifier"), flags=flags)
    preset = tmp_path_factory.mktemp("preset") / "kiosk-filtered.toml"
    preset.write_text(PRESET.format(folder=folder.as_posix()))
    port = free_port()
    url, demo, state = start_app(["--kiosk", "--preset", str(preset), "--public-url", f"http://127.0.0.1:{port}", *extra], port=port)
    return url, demo, state


@pytest.fixture(scope="module")
def flagging_kiosk(tmp_path_factory):
    url, demo, state = kiosk_with_classifier(tmp_path_factory, flags=True)
    yield url, state
    demo.close()
    state.engine.close()


@pytest.fixture(scope="module")
def passing_kiosk(tmp_path_factory):
    url, demo, state = kiosk_with_classifier(tmp_path_factory, flags=False)
    yield url, state
    demo.close()
    state.engine.close()


def test_a_flagged_picture_is_not_returned_kept_or_shown(flagging_kiosk, caplog):
    url, state = flagging_kiosk
    client = Client(url, verbose=False)
    with caplog.at_level(logging.WARNING, logger="fp8pipe.app"), pytest.raises(Exception) as refused:
        client.predict(prompt="a red circle", api_name="/generate")
    assert FRIENDLY_MESSAGE in str(refused.value)
    assert list(state.outputs.folder.glob("*.png")) == []  # not saved
    assert not state.recent and not state.examples  # nothing for the slideshow, not even the examples
    lines = [r.getMessage() for r in caplog.records if "refused image" in r.getMessage()]
    assert len(lines) == 1 and "prompt='a red circle'" in lines[0] and "nsfw" in lines[0]


def test_previews_stay_off_while_an_image_filter_runs(flagging_kiosk):
    """Nothing of a picture reaches the page before the filter's verdict: the kiosk asks the
    engine for no previews even though this preset allows them (previews defaults to true)."""
    import app as webapp

    _, state = flagging_kiosk
    asked = []
    real_submit = state.engine.submit
    state.engine.submit = lambda *a, **k: asked.append(k["preview"]) or real_submit(*a, **k)
    try:
        with pytest.raises(Exception):
            list(webapp._run(state, "a red circle", preview=True))
    finally:
        state.engine.submit = real_submit
    assert asked == [False]


def test_a_passed_picture_reports_the_filters_time(passing_kiosk):
    url, state = passing_kiosk
    path, stats = Client(url, verbose=False).predict(prompt="a red circle", api_name="/generate")
    assert stats["image_filter_s"] > 0 and stats["image_filter_device"] == "cpu"
    assert len(state.examples) == 2  # the attract pictures passed it too


def test_a_take_home_link_serves_the_png_byte_for_byte(passing_kiosk):
    from fp8pipe.takehome import public_link

    url, state = passing_kiosk
    Client(url, verbose=False).predict(prompt="a blue square", api_name="/generate")
    kept = state.recent[0]
    with urllib.request.urlopen(public_link(state.public_url, kept)) as response:
        assert response.headers["Content-Type"] == "image/png"
        assert response.read() == open(kept, "rb").read()


@pytest.mark.parametrize("name", ["0" * 32 + ".png", "..%2F..%2Fetc%2Fpasswd", "x.png", "%2E%2E"])
def test_a_take_home_link_to_anything_else_is_not_found(passing_kiosk, name):
    url, state = passing_kiosk
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{state.public_url}/takehome/{name}")
    assert missing.value.code == 404
