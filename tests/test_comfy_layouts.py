"""ComfyUI single files, legacy and current, made the way ComfyUI makes them (see sai_layout):
each loads to the same transformer as ComfyUI's own dequantization, or is refused clearly."""

import json

import pytest
import torch
from conftest import TEST_TRANSFORMER, run_transformer, transformer_inputs
from safetensors.torch import save_file
from sai_layout import comfy_dequantize, to_comfy_quant, to_comfy_scaled_fp8, to_sai_layout

from fp8pipe.checkpoint import read_single_file_transformer
from fp8pipe.errors import ModelLoadError
from fp8pipe.fp8 import relative_l2
from fp8pipe.loader import LoadOptions, load_model

PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def sai_state(load_tiny):
    sd = load_tiny(precision="fp32").pipe.transformer.state_dict()
    return to_sai_layout(sd, TEST_TRANSFORMER["num_layers"], TEST_TRANSFORMER["dual_attention_layers"])


@pytest.fixture(scope="module")
def inputs():
    return transformer_inputs(TEST_TRANSFORMER)


def _load(state, tmp_path, base, precision="fp32", metadata=None, name="model.safetensors"):
    path = tmp_path / name
    save_file(state, str(path), metadata=metadata or None)
    return load_model(str(path), LoadOptions(device="cpu", precision=precision, base=str(base)))


def _reference(comfy_state, tmp_path, base, inputs):
    """The transformer ComfyUI computes from `comfy_state`: its weights dequantized per tensor, in fp32."""
    plain = {PREFIX + k: v.contiguous() for k, v in comfy_dequantize(comfy_state).items()}
    return run_transformer(_load(plain, tmp_path, base, name="reference.safetensors"), inputs)


def _check_against_reference(state, tmp_path, base, inputs, layout, metadata=None):
    reference = _reference(state, tmp_path, base, inputs)
    fp32 = _load(state, tmp_path, base, "fp32", metadata)
    assert fp32.source_kind == f"single_file:{layout}"
    out = run_transformer(fp32, inputs)
    assert torch.isfinite(out).all()
    assert relative_l2(out, reference) < 1e-6  # the same dequantization, exactly
    fp8 = run_transformer(_load(state, tmp_path, base, "fp8", metadata), inputs)
    assert relative_l2(fp8, reference) < 0.05  # per-row E4M3 of the same weights


def test_a_legacy_file_with_e4m3_biases_loads_its_biases_as_biases(sai_state, tiny_pipeline_dir, tmp_path, inputs):
    state = to_comfy_scaled_fp8(sai_state, fp8_biases=True)
    assert state[PREFIX + "joint_blocks.0.x_block.attn.qkv.bias"].dtype == torch.float8_e4m3fn
    _check_against_reference(state, tmp_path, tiny_pipeline_dir, inputs, "comfyui-fp8-scaled")


def test_a_legacy_e5m2_file_uses_its_scales_and_gives_no_nan(sai_state, tiny_pipeline_dir, tmp_path, inputs):
    state = to_comfy_scaled_fp8(sai_state, dtype=torch.float8_e5m2)
    _check_against_reference(state, tmp_path, tiny_pipeline_dir, inputs, "comfyui-fp8-scaled")


@pytest.mark.parametrize("fmt", ["float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("where", ["tensors", "header", "both"])
def test_a_current_comfyui_file_is_dequantized_per_tensor(sai_state, tiny_pipeline_dir, tmp_path, inputs, fmt, where):
    state, metadata = to_comfy_quant(sai_state, fmt, where)
    _check_against_reference(state, tmp_path, tiny_pipeline_dir, inputs, "comfyui-quant", metadata)


def test_a_current_e4m3_file_keeps_its_fp8_bytes(sai_state, tiny_pipeline_dir, tmp_path):
    state, metadata = to_comfy_quant(sai_state, "float8_e4m3fn", "tensors")
    loaded = _load(state, tmp_path, tiny_pipeline_dir, "fp8", metadata)
    layer = loaded.pipe.transformer.get_submodule("transformer_blocks.2.ff.net.2")
    assert torch.equal(layer.weight.view(torch.uint8), state[PREFIX + "joint_blocks.2.x_block.mlp.fc2.weight"].view(torch.uint8))
    assert torch.equal(layer.scale, state[PREFIX + "joint_blocks.2.x_block.mlp.fc2.weight_scale"].expand(layer.out_features))


@pytest.mark.parametrize("fmt", ["mxfp8", "nvfp4"])
def test_block_scaled_comfyui_formats_are_refused_naming_the_format(sai_state, tiny_pipeline_dir, tmp_path, fmt):
    state, _ = to_comfy_quant(sai_state, "float8_e4m3fn", "tensors")
    layer = PREFIX + "joint_blocks.0.x_block.mlp.fc1"
    state[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    with pytest.raises(ModelLoadError, match=f"'{fmt}'"):
        _load(state, tmp_path, tiny_pipeline_dir)


def test_a_refused_format_in_the_header_is_named_too(sai_state, tiny_pipeline_dir, tmp_path):
    state, metadata = to_comfy_quant(sai_state, "float8_e4m3fn", "header")
    layers = json.loads(metadata["_quantization_metadata"])
    layers["layers"][PREFIX + "joint_blocks.1.x_block.mlp.fc2"] = {"format": "nvfp4"}
    with pytest.raises(ModelLoadError, match="'nvfp4'"):
        _load(state, tmp_path, tiny_pipeline_dir, metadata={"_quantization_metadata": json.dumps(layers)})


@pytest.mark.parametrize("shape", [(-1, 1), (2,)])
def test_a_scale_that_is_not_one_per_tensor_is_refused(sai_state, tiny_pipeline_dir, tmp_path, shape):
    state = to_comfy_scaled_fp8(sai_state)
    key = PREFIX + "joint_blocks.3.x_block.mlp.fc1"
    rows = state[key + ".weight"].shape[0] if shape == (-1, 1) else 2
    state[key + ".scale_weight"] = state[key + ".scale_weight"].expand(rows).reshape(shape).contiguous()
    with pytest.raises(ModelLoadError, match=r"weight scale of shape \[" + str(rows)):
        _load(state, tmp_path, tiny_pipeline_dir)


def test_a_base_of_another_architecture_is_named_as_such(sai_state, tiny_pipeline_dir, tmp_path):
    state = to_comfy_scaled_fp8(sai_state)
    state[PREFIX + "pos_embed"] = torch.zeros(1, 24 * 24, state[PREFIX + "pos_embed"].shape[-1])
    with pytest.raises(ModelLoadError, match="another architecture than --base") as e:
        _load(state, tmp_path, tiny_pipeline_dir)
    assert "pos_embed_max_size: file 24" in str(e.value) and "re-export" not in str(e.value)


def test_a_refusal_inside_the_comfyui_reader_names_the_file_and_keeps_its_fix(sai_state, tmp_path):
    state, _ = to_comfy_quant(sai_state, "float8_e4m3fn", "tensors")
    state[PREFIX + "joint_blocks.0.x_block.mlp.fc1.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    path = tmp_path / "nvfp4.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as e:
        read_single_file_transformer(path)
    assert e.value.message.startswith("nvfp4.safetensors: layer ") and e.value.tried == [str(path)]
    assert e.value.fix.startswith("fp8pipe reads ComfyUI's float8_e4m3fn")


def test_a_diffusers_keyed_comfyui_file_gives_each_fp8_weight_its_scale_per_row(load_tiny, tmp_path):
    """ComfyUI's per-tensor scale in a file with diffusers' key names: kept as FP8, the scale
    broadcast to one per output row (the layout FP8Linear holds)."""
    state = {PREFIX + k: v.contiguous() for k, v in load_tiny(precision="fp32").pipe.transformer.state_dict().items()}
    layer = PREFIX + "transformer_blocks.2.ff.net.2"
    weight = state[layer + ".weight"]
    scale = weight.abs().amax() / 448.0
    state[layer + ".weight"] = (weight / scale).to(torch.float8_e4m3fn)
    state[layer + ".weight_scale"] = scale.reshape(())
    path = tmp_path / "diffusers-keyed.safetensors"
    save_file(state, str(path))
    layout, out = read_single_file_transformer(path)
    assert layout == "comfyui-quant"
    key = "transformer_blocks.2.ff.net.2"
    assert torch.equal(out[key + ".weight"].view(torch.uint8), state[layer + ".weight"].view(torch.uint8))
    assert out[key + ".scale"].shape == (weight.shape[0],) and bool((out[key + ".scale"] == scale).all())
    assert key + ".weight_scale" not in out and "transformer_blocks.0.attn.to_q.weight" in out
    assert out["transformer_blocks.0.attn.to_q.weight"].dtype == torch.float32
