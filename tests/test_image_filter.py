"""The image filter behind the word filter: a classifier loaded through transformers' real
loading path (a tiny ViT saved to a folder, see tiny_classifier.py), its verdicts, the
presets that name one, and the app refusing to start when a required one cannot be loaded."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port
from PIL import Image
from tiny_classifier import save_tiny_classifier

from fp8pipe.image_filter import FILTER_VRAM_BYTES, ImageFilterError, ImageFlagged, filter_device, load_image_filter, planned_peak_vram, screened
from fp8pipe.presets import PresetError, load_preset, parse_preset
from fp8pipe.safety import FRIENDLY_MESSAGE


@pytest.fixture(scope="module")
def flagging(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("flags-all"), flags=True)


@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("flags-none"), flags=False)


def a_result(stats=None):
    from fp8pipe.generation import Result

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    return Result(image=image, request=None, parameters="a red circle", stats=dict(stats or {}), images=[image])


def test_a_classifier_that_flags_refuses_the_image_with_the_word_filters_message(flagging):
    image_filter = load_image_filter(str(flagging), ["nsfw"], 0.5)
    verdict = image_filter.check(Image.new("RGB", (64, 64)))
    assert verdict.flagged and verdict.label == "nsfw" and verdict.score > 0.99
    with pytest.raises(ImageFlagged) as refused:
        list(screened(iter(["progress", a_result()]), image_filter))
    assert str(refused.value) == FRIENDLY_MESSAGE and "nsfw 1.00 >= 0.5" in refused.value.detail


def test_a_passed_image_carries_the_filters_time_in_its_stats(passing):
    image_filter = load_image_filter(str(passing), ["nsfw"], 0.5)
    items = list(screened(iter(["progress", a_result()]), image_filter))
    assert items[0] == "progress"
    assert items[1].stats["image_filter_s"] > 0 and items[1].stats["image_filter_device"] == "cpu"


def test_without_a_filter_results_pass_untouched():
    result = a_result()
    assert list(screened(iter([result]), None)) == [result] and "image_filter_s" not in result.stats


def test_the_threshold_decides(flagging):
    image = Image.new("RGB", (8, 8))
    assert load_image_filter(str(flagging), ["nsfw"], 0.99).check(image).flagged  # it scores 0.9975
    assert not load_image_filter(str(flagging), ["nsfw"], 0.999).check(image).flagged


def test_a_model_that_cannot_be_loaded_says_how_to_go_on(tmp_path):
    with pytest.raises(ImageFilterError) as failed:
        load_image_filter(str(tmp_path / "nothing-here"), ["nsfw"], 0.5)
    message = str(failed.value)
    assert "nothing-here" in message and "--image-filter FOLDER" in message and "--no-image-filter" in message


def test_a_model_without_the_labels_to_flag_is_refused(passing):
    with pytest.raises(ImageFilterError, match="none of the labels porn"):
        load_image_filter(str(passing), ["porn"], 0.5)


def test_auto_runs_on_the_gpu_only_where_the_planner_leaves_room():
    GiB = 1024**3
    assert filter_device("auto", "cpu", None, None) == "cpu"
    assert filter_device("auto", "cuda", 8 * GiB, 5 * GiB) == "cuda"  # 2.6 GiB to spare
    assert filter_device("auto", "cuda", 8 * GiB, 7.2 * GiB) == "cpu"  # 0.4 GiB to spare
    assert filter_device("auto", "cuda", None, None) == "cpu"  # nothing planned: the CPU
    assert filter_device("cuda", "cpu", None, None) == "cuda"  # the preset decides


def test_the_kiosk_filter_runs_on_the_cpu_when_the_planner_fills_8_gib_with_resident_blocks():
    from fp8pipe.specs import SPECS

    preset = load_preset("kiosk-8gb")
    budget, peak = planned_peak_vram(SPECS[preset.model], preset, preset.vram, "cuda")
    assert budget == 8 * 1024**3 and 0 < peak < budget
    # partial residency keeps as many blocks on the GPU as fit, so no room is left twice over for
    # the classifier: it goes to the CPU rather than take the diffusion model's memory
    assert budget * 0.95 - peak < 2 * FILTER_VRAM_BYTES
    assert filter_device("auto", "cuda", budget, peak) == "cpu"
    assert filter_device("auto", "cuda", budget, budget // 2) == "cuda"  # with room, the GPU
    assert planned_peak_vram(SPECS[preset.model], preset, preset.vram, "cpu") == (None, None)


def test_the_kiosk_preset_has_the_filter_on_and_the_demo_preset_off():
    kiosk, demo = load_preset("kiosk-8gb"), load_preset("cpu-demo")
    assert kiosk.image_filter and kiosk.image_filter_labels == ("nsfw",) and 0 < kiosk.image_filter_threshold < 1
    assert kiosk.previews is False  # nothing shows before the filter's verdict
    assert demo.image_filter is None


def test_a_preset_filter_setting_out_of_range_names_the_key():
    with pytest.raises(PresetError, match=r"\[image_filter\]: threshold = 2 is not allowed; it must be a number from 0.0 to 1.0"):
        parse_preset('name = "x"\n[image_filter]\nmodel = "m"\nthreshold = 2\n', "x.toml")
    with pytest.raises(PresetError, match=r"\[image_filter\] needs model"):
        parse_preset('name = "x"\n[image_filter]\nthreshold = 0.5\n', "x.toml")


def run_app(*argv):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "app.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def test_the_kiosk_preset_does_not_start_without_its_classifier():
    """Offline and not in the cache: exit status 2 and what to do, before any model loads."""
    done = run_app("--kiosk", "--preset", "kiosk-8gb", "--port", str(free_port()))
    assert done.returncode == 2
    assert "error: the image filter that preset kiosk-8gb requires could not be loaded: Falconsai/nsfw_image_detection" in done.stderr
    assert "--no-image-filter" in done.stderr and "--image-filter FOLDER" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_filter_folder_that_is_missing_stops_the_app_too(tmp_path):
    done = run_app("--kiosk", "--image-filter", str(tmp_path / "missing"), "--port", str(free_port()))
    assert done.returncode == 2 and "could not be loaded" in done.stderr


def test_image_filter_and_no_image_filter_exclude_each_other():
    done = run_app("--image-filter", "x", "--no-image-filter")
    assert done.returncode == 2 and "--image-filter and --no-image-filter exclude each other" in done.stderr
