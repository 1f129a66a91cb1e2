"""FP8 checkpoints: the quantize -> load round trip, refusing pickles, single-file layouts."""

import numpy as np
import pytest
import torch
from conftest import TEST_TRANSFORMER, run_transformer, transformer_inputs
from safetensors.torch import save_file
from sai_layout import to_comfy_scaled_fp8, to_sai_layout

from fp8pipe.checkpoint import read_manifest, save_fp8_checkpoint
from fp8pipe.errors import ModelLoadError
from fp8pipe.fp8 import FP8_DTYPE, TRANSFORMER_POLICY, FP8Linear, relative_l2
from fp8pipe.generation import generate
from fp8pipe.loader import LoadOptions, load_model
from fp8pipe.requests import GenerationRequest


def _image(loaded, seed=7):
    request = GenerationRequest.create(loaded.spec, "a red ball", steps=3, seed=seed, width=64, height=64)
    return np.asarray(generate(loaded, request).image)


@pytest.fixture(scope="module")
def fp8_checkpoint(load_tiny, tmp_path_factory):
    source = load_tiny(precision="fp8")
    out = tmp_path_factory.mktemp("ckpt") / "tiny-fp8"
    save_fp8_checkpoint(source.pipe, out, TRANSFORMER_POLICY, source="tiny", spec_name=None)
    return source, out


def test_checkpoint_is_safetensors_only_with_a_manifest(fp8_checkpoint):
    _, out = fp8_checkpoint
    weight_files = [p for p in out.rglob("*") if p.is_file() and p.suffix not in (".json", ".txt", ".model")]
    assert weight_files and all(p.suffix == ".safetensors" for p in weight_files)
    manifest = read_manifest(out)
    assert manifest["policy"] == TRANSFORMER_POLICY.as_dict()
    assert len(manifest["quantized_layers"]) == 113 and "torch" in manifest["versions"]


def test_fp8_checkpoint_round_trip_is_bit_identical(fp8_checkpoint):
    source, out = fp8_checkpoint
    loaded = load_model(str(out), LoadOptions(device="cpu"))
    assert loaded.source_kind == "fp8_checkpoint"
    before, after = source.pipe.transformer.state_dict(), loaded.pipe.transformer.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        assert a.dtype == b.dtype, key
        if a.dtype == FP8_DTYPE:
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), key
        else:
            assert torch.equal(a, b), key


def test_fp8_checkpoint_round_trip_gives_identical_images(fp8_checkpoint):
    source, out = fp8_checkpoint
    loaded = load_model(str(out), LoadOptions(device="cpu"))
    assert np.array_equal(_image(source), _image(loaded))


def test_loading_an_fp8_checkpoint_never_makes_a_16_bit_copy_of_quantized_weights(fp8_checkpoint, monkeypatch):
    _, out = fp8_checkpoint
    calls = []
    monkeypatch.setattr(FP8Linear, "set_weight", lambda self, w: calls.append(w.dtype))
    load_model(str(out), LoadOptions(device="cpu"))
    assert calls == []  # FP8 bytes went straight into the layers; nothing was (re)quantized


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt", ".pth"])
def test_a_pickle_file_is_refused_with_a_clear_message(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(str(path), LoadOptions(device="cpu"))


def test_a_folder_with_only_pickled_transformer_weights_is_refused(tiny_pipeline_dir, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline_dir, folder)
    for f in (folder / "transformer").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_model(str(folder), LoadOptions(device="cpu"))


def _sai_state(load_tiny):
    sd = load_tiny(precision="fp32").pipe.transformer.state_dict()
    return to_sai_layout(sd, TEST_TRANSFORMER["num_layers"], TEST_TRANSFORMER["dual_attention_layers"])


def test_a_stability_ai_single_file_loads_into_the_same_transformer(load_tiny, tiny_pipeline_dir, tmp_path):
    path = tmp_path / "sd3-tiny.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in _sai_state(load_tiny).items()}, str(path))
    inputs = transformer_inputs(TEST_TRANSFORMER)
    loaded = load_model(str(path), LoadOptions(device="cpu", precision="fp32", base=str(tiny_pipeline_dir)))
    assert loaded.source_kind == "single_file:sai"
    assert torch.equal(run_transformer(loaded, inputs), run_transformer(load_tiny(precision="fp32"), inputs))


def test_a_comfyui_scaled_fp8_file_loads_bit_exact_and_matches(load_tiny, tiny_pipeline_dir, tmp_path):
    comfy = to_comfy_scaled_fp8(_sai_state(load_tiny))
    path = tmp_path / "sd3-tiny_fp8_scaled.safetensors"
    save_file(comfy, str(path))
    loaded = load_model(str(path), LoadOptions(device="cpu", base=str(tiny_pipeline_dir)))
    assert loaded.source_kind == "single_file:comfyui-fp8-scaled"
    transformer = loaded.pipe.transformer
    # q/k/v were one fused E4M3 tensor with one scale: split, not requantized.
    fused = comfy["model.diffusion_model.joint_blocks.1.x_block.attn.qkv.weight"]
    scale = comfy["model.diffusion_model.joint_blocks.1.x_block.attn.qkv.scale_weight"]
    q, k, v = (transformer.get_submodule(f"transformer_blocks.1.attn.to_{x}") for x in "qkv")
    assert torch.equal(torch.cat([q.weight, k.weight, v.weight]).view(torch.uint8), fused.view(torch.uint8))
    assert torch.equal(q.scale, scale.expand(q.out_features))
    inputs = transformer_inputs(TEST_TRANSFORMER)
    reference = run_transformer(load_tiny(precision="fp32"), inputs)
    assert relative_l2(run_transformer(loaded, inputs), reference) < 0.05


def test_a_checkpoint_saved_with_a_non_default_policy_loads_with_that_policy(load_tiny, tmp_path):
    from fp8pipe.fp8 import FP8Policy, swap_linears_to_fp8

    policy = FP8Policy(quantize=("transformer_blocks.0.*",), keep=TRANSFORMER_POLICY.keep)  # block 0 only
    source = load_tiny(precision="fp32")
    swap_linears_to_fp8(source.pipe.transformer, policy, "upcast", torch.float32)
    out = save_fp8_checkpoint(source.pipe, tmp_path / "block0", policy, source="tiny", spec_name=None)
    assert read_manifest(out)["policy"] == policy.as_dict()
    loaded = load_model(str(out), LoadOptions(device="cpu"))
    fp8 = {n for n, m in loaded.pipe.transformer.named_modules() if isinstance(m, FP8Linear)}
    assert fp8 and all(n.startswith("transformer_blocks.0.") for n in fp8)
    assert fp8 == set(read_manifest(out)["quantized_layers"])


def test_the_manifest_gives_the_policy_spec_and_kind_of_a_checkpoint_folder(tmp_path):
    import json

    from fp8pipe.checkpoint import MANIFEST
    from fp8pipe.fp8 import FP8Policy
    from fp8pipe.loader import Source, _manifest_settings

    policy = FP8Policy(quantize=("a.*",), keep=("a.b",))
    (tmp_path / MANIFEST).write_text(json.dumps({"policy": policy.as_dict(), "spec": "demo"}))
    assert _manifest_settings(Source("fp8_checkpoint", "here"), tmp_path) == (policy, "demo", "fp8_checkpoint-demo")
    (tmp_path / MANIFEST).write_text(json.dumps({"policy": policy.as_dict(), "spec": "sd3.5-medium"}))
    assert _manifest_settings(Source("fp8_checkpoint", "here"), tmp_path) == (policy, "sd3.5-medium", "fp8_checkpoint")
    (tmp_path / MANIFEST).write_text(json.dumps({"policy": policy.as_dict(), "spec": None}))
    assert _manifest_settings(Source("fp8_checkpoint", "here"), tmp_path) == (policy, "here", "fp8_checkpoint")
    # a plain diffusers folder: its manifest, if any, is not read; the default policy applies
    assert _manifest_settings(Source("folder", "there"), tmp_path) == (TRANSFORMER_POLICY, "there", "folder")
