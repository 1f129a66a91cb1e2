"""fp8pipe.checkpoint's file handling, each refusal and each stored dtype, on small synthetic files.

A checkpoint is user input (any file can be passed with --model): every refusal names the file
and says what to do; what is stored is FP8 bytes, float32 scales and bf16 for the rest.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from fp8pipe import checkpoint
from fp8pipe.errors import ModelLoadError
from fp8pipe.fp8 import FP8_DTYPE, TRANSFORMER_POLICY, FP8Linear


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".BIN", ".Ckpt"])
def test_every_pickle_suffix_is_refused_in_any_case_naming_the_file(tmp_path, suffix):
    with pytest.raises(ModelLoadError, match=f"Refusing to load model{suffix}: .* Python pickles") as e:
        checkpoint.refuse_pickle(tmp_path / f"model{suffix}")
    assert e.value.tried == [str(tmp_path / f"model{suffix}")] and "safetensors" in e.value.fix


@pytest.mark.parametrize("name", ["model.safetensors", "model.json", "model.bin.txt", "model"])
def test_files_that_are_not_pickles_pass(tmp_path, name):
    assert checkpoint.refuse_pickle(tmp_path / name) is None


def test_a_folder_lists_its_safetensors_sorted_and_ignores_other_files(tmp_path):
    for name in ("b.safetensors", "a.safetensors", "c.bin", "config.json"):
        (tmp_path / name).write_bytes(b"")
    assert checkpoint.safetensors_files(tmp_path) == [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]


def test_a_folder_without_safetensors_is_refused_naming_its_pickles_if_any(tmp_path):
    (tmp_path / "model.PT").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match=r"has no \.safetensors weights \(only pickle files: model\.PT\)") as e:
        checkpoint.safetensors_files(tmp_path)
    assert e.value.tried == [str(tmp_path)]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as e:
        checkpoint.safetensors_files(empty)
    assert e.value.message.endswith("has no .safetensors weights")


def test_several_pickles_are_all_named_comma_separated(tmp_path):
    for name in ("a.bin", "b.pt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ModelLoadError) as e:
        checkpoint.safetensors_files(tmp_path)
    assert e.value.message.endswith("has no .safetensors weights (only pickle files: a.bin, b.pt)")


def test_a_truncated_safetensors_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="cut.safetensors is not a readable safetensors file") as e:
        list(checkpoint.iter_safetensors([path]))
    assert "truncated or corrupt" in e.value.fix and e.value.tried == [str(path)]


def test_tensors_are_read_one_file_after_another_in_order(tmp_path):
    save_file({"a": torch.zeros(2), "b": torch.ones(3)}, str(tmp_path / "1.safetensors"))
    save_file({"c": torch.full((1,), 2.0)}, str(tmp_path / "2.safetensors"))
    got = [(k, t.tolist()) for k, t in checkpoint.iter_safetensors([tmp_path / "1.safetensors", tmp_path / "2.safetensors"])]
    assert got == [("a", [0.0, 0.0]), ("b", [1.0, 1.0, 1.0]), ("c", [2.0])]


@pytest.mark.parametrize("content, kind", [(b"{not json", "JSONDecodeError"), (b"\xff\xfe", "UnicodeDecodeError"), (b"[" * 100000, "RecursionError")])
def test_an_unreadable_json_file_is_refused_naming_it_and_the_error_kind(tmp_path, content, kind):
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "config.json"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=rf"config.json in m/ is not a readable JSON file \({kind}\)") as e:
        checkpoint.read_json_object(path, fix="do this")
    assert e.value.fix == "do this" and e.value.tried == [str(path)]


def test_a_json_file_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=f"config.json in {tmp_path.name}/ is not a JSON object"):
        checkpoint.read_json_object(path)
    path.write_text('{"a": 1}')
    assert checkpoint.read_json_object(path) == {"a": 1}


def test_a_folder_without_a_manifest_has_none_and_a_broken_one_says_how_to_remake_it(tmp_path):
    assert checkpoint.read_manifest(tmp_path) is None
    (tmp_path / checkpoint.MANIFEST).write_text("{")
    with pytest.raises(ModelLoadError) as e:
        checkpoint.read_manifest(tmp_path)
    assert "fp8pipe quantize" in e.value.fix
    (tmp_path / checkpoint.MANIFEST).write_text('{"spec": "demo"}')
    assert checkpoint.read_manifest(tmp_path) == {"spec": "demo"}


def test_storage_keeps_fp8_weights_and_float32_scales_and_stores_other_floats_in_bf16():
    from fp8pipe.fp8 import FP8Policy, swap_linears_to_fp8

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
    assert swap_linears_to_fp8(model, FP8Policy(quantize=("2",), keep=()), "upcast", torch.float32) == ["2"]
    model.register_buffer("steps", torch.arange(3))
    state = checkpoint.transformer_storage_state(model)
    assert state["0.weight"].dtype == torch.bfloat16 and state["1.weight"].dtype == torch.bfloat16
    assert state["2.weight"].dtype == FP8_DTYPE and state["2.scale"].dtype == torch.float32
    assert state["2.bias"].dtype == torch.bfloat16 and state["steps"].dtype == torch.int64
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state.values())


def test_saving_refuses_a_non_empty_folder_and_a_transformer_without_fp8_layers(load_tiny, tmp_path):
    source = load_tiny(precision="fp32")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(ValueError, match="--out .*taken exists and is not empty"):
        checkpoint.save_fp8_checkpoint(source.pipe, tmp_path / "taken", TRANSFORMER_POLICY, "tiny", None)
    with pytest.raises(ValueError, match="has no FP8 layers; load it with precision fp8 first"):
        checkpoint.save_fp8_checkpoint(source.pipe, tmp_path / "new", TRANSFORMER_POLICY, "tiny", None)


def test_a_saved_checkpoint_states_its_format_and_stores_every_component_in_bf16(load_tiny, tmp_path):
    source = load_tiny(precision="fp8")
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    out = checkpoint.save_fp8_checkpoint(source.pipe, tmp_path / "empty", TRANSFORMER_POLICY, source="tiny-src", spec_name="demo")
    manifest = json.loads((out / checkpoint.MANIFEST).read_text())
    assert {k: manifest[k] for k in ("format", "format_version", "source", "spec", "weight_dtype", "scale", "storage_dtype")} == {
        "format": "fp8pipe",
        "format_version": checkpoint.FORMAT_VERSION,
        "source": "tiny-src",
        "spec": "demo",
        "weight_dtype": "float8_e4m3fn",
        "scale": "float32 per output row",
        "storage_dtype": "bfloat16",
    }
    assert set(manifest["versions"]) == {"fp8pipe", "torch", "diffusers", "transformers", "safetensors", "python"}
    for component in ("text_encoder", "text_encoder_2", "vae"):
        for f in (out / component).glob("*.safetensors"):
            assert {t.dtype for t in load_file(str(f)).values() if t.is_floating_point()} == {torch.bfloat16}, f
    stored = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for k, t in stored.items() if k.endswith(".scale")} == {torch.float32}
    assert (out / "model_index.json").is_file() and (out / "transformer" / "config.json").is_file()


def _sd3_tensors(layers=2, dual=(), width=8, heads_dim=4, joint=16, pos=(1, 16, 8)):
    t = {"context_embedder.weight": torch.zeros(width, joint), "pos_embed.pos_embed": torch.zeros(*pos)}
    for i in range(layers):
        t[f"transformer_blocks.{i}.attn.norm_q.weight"] = torch.zeros(heads_dim)
        if i in dual:
            t[f"transformer_blocks.{i}.attn2.to_q.weight"] = torch.zeros(width, width)
    return t


def test_a_files_architecture_is_read_from_its_tensor_shapes():
    shape = checkpoint.file_architecture(_sd3_tensors(layers=3, dual=(0, 2)))
    assert shape == {"num_layers": 3, "caption_projection_dim": 8, "joint_attention_dim": 16, "attention_head_dim": 4, "pos_embed_max_size": 4, "dual_attention_layers": (0, 2)}
    without_pos = _sd3_tensors()
    del without_pos["pos_embed.pos_embed"]
    assert "pos_embed_max_size" not in checkpoint.file_architecture(without_pos)
    for missing in ("context_embedder.weight", "transformer_blocks.0.attn.norm_q.weight"):
        broken = _sd3_tensors()
        del broken[missing]
        assert checkpoint.file_architecture(broken) is None


def test_the_matching_config_is_found_and_a_mismatch_names_each_differing_field():
    tensors = _sd3_tensors(layers=2, dual=(1,))
    right = {"num_layers": 2, "caption_projection_dim": 8, "joint_attention_dim": 16, "attention_head_dim": 4, "pos_embed_max_size": 4, "dual_attention_layers": [1]}
    wrong = {**right, "num_layers": 4, "dual_attention_layers": None}
    assert checkpoint.infer_transformer_config(tensors, [wrong, right]) is right
    assert checkpoint.infer_transformer_config(tensors, [wrong]) is None
    assert checkpoint.infer_transformer_config({}, [right]) is None
    assert checkpoint.architecture_mismatch(tensors, right) is None
    assert checkpoint.architecture_mismatch(tensors, wrong) == "num_layers: file 2, base 4; dual_attention_layers: file (1,), base None"


def test_a_file_without_an_sd3_transformer_is_refused_naming_the_keys_it_lacks(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError) as e:
        checkpoint.read_single_file_transformer(path)
    assert e.value.message == "unet.safetensors holds no SD3 transformer (no 'joint_blocks.' or 'transformer_blocks.' keys)"
    assert e.value.tried == [str(path)] and e.value.fix == "Pass an SD3 / SD3.5 checkpoint, a diffusers folder, or a hub id."


def test_a_diffusers_keyed_file_loads_as_it_is_without_the_other_components(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = {**_sd3_tensors(), "vae.decoder.w": torch.zeros(1), "text_encoders.clip_l.w": torch.zeros(1), "first_stage_model.w": torch.zeros(1)}
    save_file(tensors, str(path))
    layout, state = checkpoint.read_single_file_transformer(path)
    assert layout == "diffusers" and set(state) == set(_sd3_tensors())
    prefixed = tmp_path / "p.safetensors"
    save_file({checkpoint.SAI_PREFIX + k: v for k, v in _sd3_tensors().items()}, str(prefixed))
    assert set(checkpoint.read_single_file_transformer(prefixed)[1]) == set(_sd3_tensors())  # the prefix is stripped
    assert checkpoint._strip_prefix("model.diffusion_model.x") == "x" and checkpoint._strip_prefix("x.model.diffusion_model.") == "x.model.diffusion_model."


def test_a_component_rewritten_in_bf16_keeps_its_integer_tensors_and_its_metadata(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2, 2), "ids": torch.arange(3), "mask": torch.tensor([True, False])}, str(path), metadata={"format": "pt", "note": "kept"})
    checkpoint._rewrite_in_storage_dtype(tmp_path)
    stored = load_file(str(path))
    assert (stored["w"].dtype, stored["ids"].dtype, stored["mask"].dtype) == (torch.bfloat16, torch.int64, torch.bool)
    assert stored["ids"].tolist() == [0, 1, 2]
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt", "note": "kept"}


def test_a_checkpoint_folder_holds_exactly_the_pipelines_parts_and_may_be_nested_anew(load_tiny, tmp_path):
    source = load_tiny(precision="fp8")
    out = checkpoint.save_fp8_checkpoint(source.pipe, tmp_path / "a" / "b" / "ckpt", TRANSFORMER_POLICY, "tiny", None)
    parts = {name for name, c in source.pipe.components.items() if c is not None}
    assert {p.name for p in out.iterdir()} == parts | {"model_index.json", checkpoint.MANIFEST}
    assert {p.name for p in (out / "transformer").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_a_transformer_without_fp8_layers_is_refused_with_the_whole_message(load_tiny, tmp_path):
    with pytest.raises(ValueError, match="^the pipeline's transformer has no FP8 layers; load it with precision fp8 first$"):
        checkpoint.save_fp8_checkpoint(load_tiny(precision="fp32").pipe, tmp_path / "x", TRANSFORMER_POLICY, "tiny", None)


def test_each_refusal_says_how_to_fix_it_in_full(tmp_path):
    cases = []
    with pytest.raises(ModelLoadError) as e:
        checkpoint.refuse_pickle(tmp_path / "m.ckpt")
    cases.append((e.value, "Convert it to .safetensors with a trusted tool first, or use the model's .safetensors release."))
    (tmp_path / "only.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError) as e:
        checkpoint.safetensors_files(tmp_path)
    assert e.value.message == f"{tmp_path} has no .safetensors weights (only pickle files: only.bin)"
    cases.append((e.value, "fp8pipe loads safetensors only; use the model's safetensors release."))
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(ModelLoadError) as e:
        checkpoint.read_json_object(tmp_path / "c.json")
    assert e.value.tried == [str(tmp_path / "c.json")]
    cases.append((e.value, "restore the file from the model's source"))
    (tmp_path / checkpoint.MANIFEST).write_text("[]")
    with pytest.raises(ModelLoadError) as e:
        checkpoint.read_manifest(tmp_path)
    cases.append((e.value, "re-run `python -m fp8pipe quantize`"))
    assert [(error.fix) for error, _ in cases] == [fix for _, fix in cases]
