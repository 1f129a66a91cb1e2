"""The advanced mode's stats table and its small pictures at a whole-number scale."""

from PIL import Image

from fp8pipe.display import display_copy, display_scale, scale_label
from fp8pipe.metadata import png_info
from fp8pipe.stats_table import stats_markdown

STATS = {
    "latency_s": 0.5, "text_encode_s": 0.02, "denoise_s": 0.4, "decode_s": 0.03, "queue_wait_s": 0.0, "seed": 7, "precision": "fp8",
    "fp8_path": "scaled_mm", "device": "cpu", "peak_memory_bytes": 600 * 2**20, "peak_memory_kind": "host_peak_rss",
    "plan": {"placement": "resident", "t5": "16bit", "vae_tiling": False},
}


def test_the_table_splits_latency_and_names_memory_plan_and_fp8_path():
    table = stats_markdown([STATS, {**STATS, "precision": "bf16", "fp8_path": None}, {"compare": {"psnr_db": 40.1, "mean_abs_diff": 0.2}}])
    lines = table.splitlines()
    assert lines[0] == "| | fp8, seed 7 | bf16, seed 7 |"
    assert "| denoise | 0.400 s | 0.400 s |" in lines and "| peak memory | 600 MiB host RSS | 600 MiB host RSS |" in lines
    assert "| plan | resident, T5 16bit | resident, T5 16bit |" in lines and "| FP8 path | scaled_mm | none (not fp8) |" in lines
    assert "FP8 against BF16: PSNR 40.1 dB" in table


def test_a_warning_is_a_note_under_the_table():
    assert "**Note:** the demo model does not know 'cliff'" in stats_markdown([{**STATS, "warning": "the demo model does not know 'cliff'"}])


def test_small_pictures_scale_by_a_whole_number_and_large_ones_stay():
    assert display_scale(64, 64) == 4 and display_scale(100, 64) == 2 and display_scale(1024, 1024) == 1
    assert scale_label(64, 64, 4) == "64x64 px, shown at 4x" and scale_label(512, 512, 1) == "512x512 px"


def test_the_display_copy_has_sharp_pixels_and_keeps_the_parameters(tmp_path):
    source = tmp_path / "a.png"
    picture = Image.new("RGB", (64, 64), (0, 0, 0))
    picture.putpixel((0, 0), (255, 0, 0))
    picture.save(source, pnginfo=png_info("a red dot\nSteps: 8, Seed: 1"))
    path, scale = display_copy(source)
    shown = Image.open(path)
    assert scale == 4 and shown.size == (256, 256)
    assert {shown.getpixel((x, y)) for x in range(4) for y in range(4)} == {(255, 0, 0)} and shown.getpixel((4, 4)) == (0, 0, 0)
    assert shown.text["parameters"] == "a red dot\nSteps: 8, Seed: 1"


def test_the_table_names_the_loras_and_the_mode_that_ran():
    from fp8pipe.stats_table import stats_markdown

    stats = {"latency_s": 1.0, "precision": "fp8", "seed": 1, "lora_mode": "merge", "loras": [{"name": "house_black", "strength": 0.5}, {"name": "b", "strength": 1.0}]}
    assert "| LoRAs | house_black 0.5, b 1 (merge) |" in stats_markdown([stats]).splitlines()
    assert "| LoRAs | none |" in stats_markdown([{**stats, "loras": []}]).splitlines()
