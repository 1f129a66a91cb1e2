"""`generate --lora FILE[:STRENGTH]`: the LoRA is applied, recorded in the PNG as other SD tools
write it, read back from the PNG; bad input is one clear error."""

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fp8pipe.cli import main
from fp8pipe.metadata import add_loras, form_fields, split_lora_tags


@pytest.fixture(scope="module")
def kohya_lora(tmp_path_factory):
    """A kohya sd-scripts style LoRA on the first joint block's x attention (qkv fused) and fc2."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for name, (out, inp) in {"joint_blocks_0_x_block_attn_qkv": (3 * 256, 256), "joint_blocks_0_x_block_mlp_fc2": (256, 1024)}.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, inp, generator=g) * 0.1
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, 4, generator=g) * 0.1
        state[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    path = tmp_path_factory.mktemp("loras") / "house_style.safetensors"
    save_file(state, str(path))
    return path


def _generate(tiny_pipeline_dir, out, *extra):
    return main(["generate", "--model", str(tiny_pipeline_dir), "--device", "cpu", "--prompt", "a red ball", "--steps", "2",
                 "--width", "64", "--height", "64", "--seed", "5", "--out", str(out), *extra])


@pytest.mark.parametrize("mode", ["runtime", "merge"])
def test_generate_with_a_lora_records_it_in_the_png_and_reads_it_back(tiny_pipeline_dir, kohya_lora, tmp_path, capsys, mode):
    out = tmp_path / "with-lora.png"
    assert _generate(tiny_pipeline_dir, out, "--lora", f"{kohya_lora}:0.5", "--lora-mode", mode, "--json") == 0
    captured = capsys.readouterr()
    assert f'"lora_mode": "{mode}"' in captured.out and "house_style (kohya sd-scripts" in captured.err
    parameters = Image.open(out).info["parameters"]
    assert parameters.splitlines()[0] == "a red ball <lora:house_style:0.5>"
    assert 'Lora hashes: "house_style: ' in parameters
    fields = form_fields(parameters)
    assert fields["prompt"] == "a red ball" and fields["loras"] == [("house_style", 0.5)]


def test_the_lora_changes_the_picture(tiny_pipeline_dir, kohya_lora, tmp_path):
    import numpy as np

    _generate(tiny_pipeline_dir, tmp_path / "a.png")
    _generate(tiny_pipeline_dir, tmp_path / "b.png", "--lora", str(kohya_lora))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


@pytest.mark.parametrize("arg, message", [("missing.safetensors", "--lora: missing.safetensors is not a file"),
                                          ("{lora}:7", "must be a number from -4 to 4")])
def test_bad_lora_input_is_one_clear_error(tiny_pipeline_dir, kohya_lora, tmp_path, capsys, arg, message):
    assert _generate(tiny_pipeline_dir, tmp_path / "x.png", "--lora", arg.format(lora=kohya_lora)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_lora_tags_round_trip_through_the_parameters_text():
    text = add_loras("a cat\nSteps: 4, Seed: 1", [("style, v2", 0.75, "abc"), ("fast", -1.0, "def")])
    assert text.splitlines()[0] == "a cat <lora:style_ v2:0.75> <lora:fast:-1>"
    assert split_lora_tags(text.splitlines()[0]) == ("a cat", [("style_ v2", 0.75), ("fast", -1.0)])


def test_a_malformed_lora_tag_stays_part_of_the_prompt():
    assert split_lora_tags("a <lora:x:big> cat") == ("a <lora:x:big> cat", [])


def test_a_preset_lists_its_loras():
    from fp8pipe.presets import PresetLora, parse_preset

    preset = parse_preset('name = "x"\nlora_mode = "merge"\n[[loras]]\nfile = "styles/house.safetensors"\nstrength = 0.8\n', "x.toml")
    assert preset.loras == (PresetLora("styles/house.safetensors", 0.8),) and preset.lora_mode == "merge"


@pytest.mark.parametrize("table, message", [('file = "a.safetensors"\nstrength = 9', "strength = 9 is not allowed; it must be a number from -4.0 to 4.0"),
                                            ('file = "a.ckpt"', "it must be the path of a .safetensors LoRA file"),
                                            ("strength = 1", "missing key 'file'")])
def test_a_bad_preset_lora_names_the_key_and_the_allowed_values(table, message):
    from fp8pipe.presets import PresetError, parse_preset

    with pytest.raises(PresetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_preset(f'name = "x"\n[[loras]]\n{table}\n', "x.toml")


@pytest.mark.parametrize("mode", ["runtime", "merge"])
def test_an_engine_with_loras_applies_them_to_every_picture_and_says_so(tiny_pipeline_dir, kohya_lora, mode):
    from fp8pipe.engine import Engine
    from fp8pipe.lora import LoraSpec

    with Engine(device="cpu", warmup=False, loras=[LoraSpec(str(kohya_lora), 0.7)], lora_mode=mode) as engine:
        model = str(tiny_pipeline_dir)
        engine.start([(model, "fp8")])
        result = engine.generate(engine.request(model, prompt="a red circle", steps=2, width=64, height=64, seed=1), model=model)
    assert result.stats["lora_mode"] == mode and result.stats["loras"][0]["name"] == "house_style"
    assert "<lora:house_style:0.7>" in result.parameters.splitlines()[0]
