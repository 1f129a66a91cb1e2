"""An all-in-one single file: its own CLIP-L, CLIP-G and T5 (16-bit or ComfyUI FP8) are used;
--base provides only tokenizers, scheduler and what the file lacks."""

import pytest
import torch
from conftest import TEST_TRANSFORMER
from safetensors.torch import save_file
from sai_layout import comfy_quantize, to_sai_layout

from fp8pipe.errors import ModelLoadError
from fp8pipe.loader import LoadOptions, load_model

ENCODERS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"}


def _shifted(module, seed):
    """The module's state with every float tensor moved by noise: not the base's weights."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in module.state_dict().items() if k != "encoder.embed_tokens.weight"}  # T5's, tied to shared.weight
    return {k: (v.float() + 0.01 * torch.randn(v.shape, generator=g)).to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def parts(load_tiny):
    loaded = load_tiny(precision="fp32")
    sai = to_sai_layout(loaded.pipe.transformer.state_dict(), TEST_TRANSFORMER["num_layers"], TEST_TRANSFORMER["dual_attention_layers"])
    encoders = {name: _shifted(getattr(loaded.pipe, name), i) for i, name in enumerate(ENCODERS)}
    return sai, encoders


def _file(sai, encoders, t5_fp8=False):
    state = {"model.diffusion_model." + k: v.to(torch.bfloat16) for k, v in sai.items()}
    for name, sd in encoders.items():
        prefix = f"text_encoders.{ENCODERS[name]}.transformer."
        for k, v in sd.items():
            if t5_fp8 and name == "text_encoder_3" and k.startswith("encoder.block.") and k.endswith(".weight") and v.ndim == 2:
                state[prefix + k], state[prefix + k[: -len("weight")] + "scale_weight"] = comfy_quantize(v, torch.float8_e4m3fn)
            else:
                state[prefix + k] = v
    if t5_fp8:
        state["text_encoders.t5xxl.transformer.scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return {k: v.contiguous() for k, v in state.items()}


def _load(state, tmp_path, base):
    path = tmp_path / "all-in-one.safetensors"
    save_file(state, str(path))
    return load_model(str(path), LoadOptions(device="cpu", precision="fp32", base=str(base)))


def test_the_files_own_text_encoders_are_used(parts, tiny_pipeline_dir, tmp_path):
    sai, encoders = parts
    loaded = _load(_file(sai, encoders), tmp_path, tiny_pipeline_dir)
    for name, sd in encoders.items():
        got = getattr(loaded.pipe, name).state_dict()
        for k, v in sd.items():
            assert torch.equal(got[k].to(torch.bfloat16), v), (name, k)
    assert loaded.describe()["components_from"] == {
        "text_encoder": "file", "text_encoder_2": "file", "text_encoder_3": "file", "vae": "base", "tokenizers": "base", "scheduler": "base",
    }


def test_a_t5_in_comfyui_fp8_is_dequantized_with_its_scales(parts, tiny_pipeline_dir, tmp_path):
    sai, encoders = parts
    state = _file(sai, encoders, t5_fp8=True)
    loaded = _load(state, tmp_path, tiny_pipeline_dir)
    prefix = "text_encoders.t5xxl.transformer."
    scaled = [k for k in state if k.startswith(prefix) and k.endswith(".scale_weight")]
    assert scaled and state[scaled[0][: -len("scale_weight")] + "weight"].dtype == torch.float8_e4m3fn
    key = scaled[0][len(prefix) : -len("scale_weight")] + "weight"
    expected = state[prefix + key].float() * state[prefix + key[: -len("weight")] + "scale_weight"]
    assert torch.equal(loaded.pipe.text_encoder_3.state_dict()[key].float(), expected.to(torch.bfloat16).float())


def test_a_transformer_only_file_takes_every_other_part_from_base(parts, tiny_pipeline_dir, tmp_path):
    sai, _ = parts
    loaded = _load(_file(sai, {}), tmp_path, tiny_pipeline_dir)
    assert set(loaded.describe()["components_from"].values()) == {"base"}


def test_a_text_encoder_of_another_shape_is_refused_naming_it(parts, tiny_pipeline_dir, tmp_path):
    sai, encoders = parts
    clip_l = {k: v for k, v in encoders["text_encoder"].items() if "layers.1." not in k}
    with pytest.raises(ModelLoadError, match="the CLIP-L in all-in-one.safetensors does not fit"):
        _load(_file(sai, {"text_encoder": clip_l}), tmp_path, tiny_pipeline_dir)
