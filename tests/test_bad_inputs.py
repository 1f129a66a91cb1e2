"""A catalogue of bad inputs, through both the CLI and the API: each gives a clear message
naming the field (and its allowed range), and the next good request succeeds."""

from dataclasses import dataclass

import pytest
import torch
from gradio_client import Client
from safetensors.torch import save_file

import app as webapp
from conftest import demo_app_limits, size_error
from fp8pipe.cli import main as cli

TOO_LONG = "x" * 10_000


@dataclass(frozen=True)
class Case:
    field: str
    value: object
    message: str  # the start of the error, after "error: " on the CLI


SIZE = size_error(demo_app_limits())  # the cpu-demo preset serves the API; the CLI has the same range
CASES = [
    Case("prompt", "", "prompt: must not be empty"),
    Case("prompt", "   \t  ", "prompt: must not be empty"),
    Case("prompt", "\x00\x01\x1b", "prompt: must not be empty"),
    Case("prompt", "\u200b\u200d\u2060\ufeff", "prompt: must not be empty"),  # only invisible format characters
    Case("prompt", "\u3164\u2800\ufe0f", "prompt: must not be empty"),  # a Hangul filler, a braille blank, a variation selector
    Case("prompt", "a \ud800 cat", "prompt: must be valid Unicode text"),  # a lone surrogate
    Case("negative_prompt", "fog \udc80", "negative_prompt: must be valid Unicode text"),  # undecodable bytes on a command line
    Case("prompt", TOO_LONG, "prompt: must be at most 2000 characters; got 10000"),
    Case("negative_prompt", TOO_LONG, "negative_prompt: must be at most 2000 characters"),
    *[Case(side, v, f"{side}: {SIZE}") for side in ("width", "height") for v in (0, -64, 100, 100_000, 63.5)],
    *[Case("steps", v, "steps: must be a whole number from 1 to") for v in (0, 10_000, -3, 2.5)],
    *[Case("guidance", v, "guidance: must be a number from 0 to") for v in (float("nan"), float("inf"), float("-inf"), -1.0, 1000.0)],
    *[Case("seed", v, "seed: must be a whole number from 0 to 4294967295") for v in (-1, 2**64, 1.5, 2**32)],
]
# NaN and infinities have no JSON form, and gradio_client cannot encode a lone surrogate: it
# refuses them before sending (test_hardening sends surrogates over plain HTTP).
API_CASES = [
    c
    for c in CASES
    if not (isinstance(c.value, float) and c.value != c.value or c.value in (float("inf"), float("-inf")))
    and not (isinstance(c.value, str) and any("\ud800" <= ch <= "\udfff" for ch in c.value))
]
ACCEPTED_PROMPTS = ["a cat 🐱 on a mat", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", "a\x07 bell \u200f\u202e"]


def _cli_args(case: Case) -> list[str]:
    fields = {"prompt": "a red ball", case.field: case.value}
    args = []
    for name, value in fields.items():
        args += [f"--{name.replace('_', '-')}={value}"]
    return args


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.field}={str(c.value)[:12]!r}")
def test_bad_value_on_the_cli_names_the_field(case, tmp_path, capsys):
    if case.field in ("steps", "seed", "width", "height") and isinstance(case.value, float):
        # argparse itself refuses a fraction for an integer flag, naming the flag
        with pytest.raises(SystemExit) as exit_:
            cli(["generate", "--out", str(tmp_path / "x.png"), *_cli_args(case)])
        assert exit_.value.code == 2 and f"--{case.field}" in capsys.readouterr().err
        return
    assert cli(["generate", "--out", str(tmp_path / "x.png"), *_cli_args(case)]) == 2
    assert f"error: {case.message}" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: f"{c.field}={str(c.value)[:12]!r}")
def test_bad_value_on_the_api_names_the_field_and_the_next_request_succeeds(case, advanced_app):
    url, _ = advanced_app
    client = Client(url, verbose=False)
    fields = {"prompt": "a red ball", "steps": 1, case.field: case.value}
    with pytest.raises(Exception, match=case.message.replace("(", r"\(")):
        client.predict(**fields, api_name="/generate")
    image, _ = client.predict(prompt="a red ball", steps=1, api_name="/generate")
    assert image.endswith(".png")


@pytest.mark.parametrize("prompt", ACCEPTED_PROMPTS)
def test_emoji_rtl_and_stray_control_characters_are_accepted(prompt, advanced_app, tmp_path):
    url, _ = advanced_app
    _, stats = Client(url, verbose=False).predict(prompt=prompt, steps=1, api_name="/generate")
    assert stats["steps"] == 1
    assert cli(["generate", "--prompt", prompt, "--steps", "1", "--out", str(tmp_path / "x.png")]) == 0


def _write_checkpoint(path, tensors):
    save_file(tensors, str(path))
    return path


def _bad_models(tmp_path):
    (tmp_path / "weights.ckpt").write_bytes(b"\x80\x04")
    good = tmp_path / "good.safetensors"
    _write_checkpoint(good, {"transformer_blocks.0.attn.to_q.weight": torch.zeros(64, 64)})
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    return [
        ("../../../../etc/passwd", "is not a .safetensors file"),
        ("/etc", "not a diffusers pipeline"),
        ("../../../../", "not a diffusers pipeline"),
        (str(tmp_path / "weights.ckpt"), "Refusing to load weights.ckpt"),
        (str(tmp_path / "truncated.safetensors"), "not a readable safetensors file"),
        (str(tmp_path / "empty.safetensors"), "not a readable safetensors file"),
        (str(tmp_path / "notes.txt"), "is not a .safetensors file"),
        ("no/such-model-anywhere", "could not get 'no/such-model-anywhere' from the Hugging Face Hub"),
    ]


def test_bad_model_paths_and_checkpoints_give_one_clear_message_each(tmp_path, capsys):
    for model, message in _bad_models(tmp_path):
        assert cli(["generate", "--model", model, "--prompt", "x", "--out", str(tmp_path / "x.png")]) == 2, model
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (model, err)
    assert cli(["generate", "--prompt", "a red ball", "--steps", "1", "--out", str(tmp_path / "ok.png")]) == 0


def test_wrong_dtype_and_wrong_shape_checkpoints_name_the_tensor(load_tiny, tiny_pipeline_dir, tmp_path, capsys):
    state = load_tiny(precision="fp32").pipe.transformer.state_dict()
    key = "transformer_blocks.0.attn.to_q.weight"
    wrong_dtype = _write_checkpoint(tmp_path / "int.safetensors", {**state, key: state[key].to(torch.int32)})
    wrong_shape = _write_checkpoint(tmp_path / "shape.safetensors", {**state, key: state[key][:, :32].contiguous()})
    for path, message in ((wrong_dtype, "has dtype int32"), (wrong_shape, "has shape (256, 32)")):
        args = ["generate", "--model", str(path), "--base", str(tiny_pipeline_dir), "--prompt", "x", "--out", str(tmp_path / "x.png")]
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert message in err and key in err


@pytest.mark.parametrize(
    "preset, message",
    [
        ("no-such-preset", "unknown preset 'no-such-preset'"),
        ("../../etc/passwd", "is not allowed"),
        ("/etc/passwd.toml", "does not exist"),
    ],
)
def test_unknown_or_traversing_presets_stop_the_app_with_a_clear_message(preset, message, capsys):
    assert webapp.main(["--preset", preset]) == 2
    assert message in capsys.readouterr().err


def test_a_malformed_preset_file_names_the_file_and_key(tmp_path, capsys):
    path = tmp_path / "broken.toml"
    path.write_text('name = "broken"\n[limits]\nmax_steps = "many"\n')
    assert webapp.main(["--preset", str(path)]) == 2
    err = capsys.readouterr().err
    assert "broken.toml: [limits]: max_steps = 'many' is not allowed; it must be a whole number from 1 to 150" in err
