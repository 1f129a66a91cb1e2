"""`python -m fp8pipe generate` and friends, as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DEMO_SIDE

from fp8pipe.cli import main
from fp8pipe.metadata import parse_parameters

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fp8pipe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_generate_writes_a_png_with_its_parameters_and_prints_stats(tmp_path):
    out = tmp_path / "x.png"
    proc = run_cli("generate", "--model", "demo", "--prompt", "a red ball", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert {"latency_s", "steps", "precision", "device", "peak_memory_bytes"} <= stats.keys()
    assert stats["precision"] == "fp8" and stats["device"] == "cpu" and stats["random_weights"] is False
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (DEMO_SIDE, DEMO_SIDE)
    params = parse_parameters(image.text["parameters"])
    assert params["prompt"] == "a red ball"
    assert params["Steps"] == str(stats["steps"]) and params["Seed"] == str(stats["seed"]) and params["Size"] == f"{DEMO_SIDE}x{DEMO_SIDE}"
    assert params["Model"] == "demo" and params["Precision"] == "fp8"
    assert "random weights" not in proc.stderr  # the shipped demo model is trained
    assert "8/8" in proc.stderr  # the tqdm progress bar


def _pixels(tmp_path, seed, name):
    out = tmp_path / name
    assert main(["generate", "--prompt", "a red ball", "--seed", str(seed), "--steps", "3", "--out", str(out)]) == 0
    return np.asarray(Image.open(out))


def test_the_same_seed_twice_gives_identical_pixels_and_another_seed_different_ones(tmp_path):
    first, again, other = _pixels(tmp_path, 1, "a.png"), _pixels(tmp_path, 1, "b.png"), _pixels(tmp_path, 2, "c.png")
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("./no/such/model", "neither an existing path nor a hub id"),
        ("stabilityai/stable-diffusion-3.5-medium", "Hugging Face Hub"),
        ("sd3.5-large", "Hugging Face Hub"),
        ("weights.ckpt", "pickle"),
    ],
)
def test_a_model_that_cannot_be_loaded_gives_one_clear_message_and_no_traceback(tmp_path, model, expected):
    proc = run_cli("generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Fix:" in proc.stderr or "Refusing" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, field",
    [(["--width", "100"], "width"), (["--steps", "0"], "steps"), (["--guidance", "nan"], "guidance"), (["--seed", "-1"], "seed")],
)
def test_a_setting_out_of_range_names_the_field_and_its_range(tmp_path, capsys, args, field):
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.png"), *args]) == 2
    err = capsys.readouterr().err
    assert f"\nerror: {field}: must be" in "\n" + err
    assert not (tmp_path / "x.png").exists()


def test_quantize_writes_a_checkpoint_that_generate_loads(tmp_path, capsys):
    out = tmp_path / "demo-fp8"
    assert main(["quantize", "--model", "demo", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["quantized_layers"] > 0
    assert main(["generate", "--model", str(out), "--prompt", "a red ball", "--steps", "2", "--out", str(tmp_path / "y.png")]) == 0


def test_policy_reports_the_layers_and_bytes_of_a_full_size_model(capsys):
    assert main(["policy", "--model", "sd3.5-medium", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "sd3.5-medium" and report["fp8_over_bf16"] < 0.52


@pytest.mark.parametrize("command", ["generate", "quantize", "policy", "soak", "load"])
def test_every_option_has_a_help_line_that_gives_its_default(command):
    import argparse

    from fp8pipe.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help line"
        if not action.required and not isinstance(action, argparse._StoreTrueAction):
            assert "default" in action.help, f"{command} {action.option_strings[0]}: {action.help!r} gives no default"


def test_generate_without_a_seed_picks_a_random_one_and_prints_it(tmp_path):
    proc = run_cli("generate", "--prompt", "a red circle", "--out", str(tmp_path / "x.png"), "--steps", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    seed = json.loads(proc.stdout)["seed"]
    assert f"seed {seed} (random; --seed {seed} repeats this picture)" in proc.stderr
    assert parse_parameters(Image.open(tmp_path / "x.png").text["parameters"])["Seed"] == str(seed)
