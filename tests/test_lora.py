"""LoRA files written by other code (diffusers + PEFT; kohya and ComfyUI key conventions), loaded
by fp8pipe and compared with diffusers' own LoRA loading on the same tiny SD3 model."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fp8pipe.errors import ModelLoadError
from fp8pipe.fp8 import FP8Linear, psnr
from fp8pipe.generation import generate
from fp8pipe.lora import LoraSet, LoraSpec, parse_lora_arg
from fp8pipe.requests import GenerationRequest

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
RANK, ALPHA = 4, 8
LORA_B_GAIN = 1.0
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# kohya sd-scripts / ComfyUI module names (MMDiT, Stability AI) of the diffusers layers above:
# q, k and v are one fused qkv Linear there.
SAI_FUSED = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
             "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}
SAI_PLAIN = {"x_block.attn.proj": "attn.to_out.0", "x_block.mlp.fc2": "ff.net.2", "x_block.attn2.proj": "attn2.to_out.0"}


def _image(loaded, seed=3):
    request = GenerationRequest.create(loaded.spec, "a red ball on a blue square", steps=2, seed=seed, width=64, height=64)
    return np.asarray(generate(loaded, request).image)


@pytest.fixture(scope="module")
def diffusers_lora(load_tiny, tmp_path_factory):
    """A LoRA saved by diffusers' save_lora_weights from PEFT adapters on the transformer and CLIP-L."""
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = load_tiny(precision="fp32").pipe
    torch.manual_seed(0)
    configs = {"transformer": LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TRANSFORMER_TARGETS, init_lora_weights=False),
               "text_encoder": LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TE_TARGETS, init_lora_weights=False)}
    layers = {}
    for name, config in configs.items():
        module = getattr(pipe, name)
        module.add_adapter(config) if name == "transformer" else inject_adapter_in_model(config, module)
        with torch.no_grad():
            for n, p in module.named_parameters():
                if "lora_B" in n:
                    p.mul_(LORA_B_GAIN)  # a clear but moderate change of the picture
        layers[name] = get_peft_model_state_dict(module)
    folder = tmp_path_factory.mktemp("lora-diffusers")
    StableDiffusion3Pipeline.save_lora_weights(
        folder, transformer_lora_layers=layers["transformer"], text_encoder_lora_layers=layers["text_encoder"],
        transformer_lora_adapter_metadata=configs["transformer"].to_dict(), text_encoder_lora_adapter_metadata=configs["text_encoder"].to_dict(),
    )
    return folder / WEIGHT_NAME


def _peft_pairs(path):
    from safetensors.torch import load_file

    sd = load_file(str(path))
    return {k[: -len(".lora_A.weight")]: (sd[k], sd[k.replace("lora_A", "lora_B")]) for k in sd if k.endswith(".lora_A.weight")}


def _sai_file(diffusers_path, out, style):
    """The same LoRA in kohya's (`lora_unet_...`, lora_down/lora_up/alpha) or ComfyUI's
    (`diffusion_model.<MMDiT name>`) key names: q, k, v fused as kohya saves a split-qkv
    LoRA (down matrices stacked, up matrices block-diagonal, alpha for the stacked rank)."""
    pairs = _peft_pairs(diffusers_path)
    blocks = sorted({int(k.split(".")[2]) for k in pairs if k.startswith("transformer.transformer_blocks.")})
    state = {}

    def put(name, down, up, alpha):
        key = ("lora_unet_" + name.replace(".", "_")) if style == "kohya" else "diffusion_model." + name
        state[key + ".lora_down.weight"], state[key + ".lora_up.weight"] = down.contiguous(), up.contiguous()
        state[key + ".alpha"] = torch.tensor(float(alpha))

    for i in blocks:
        for sai, parts in SAI_FUSED.items():
            found = [pairs.get(f"transformer.transformer_blocks.{i}.{p}") for p in parts]
            if all(found):
                put(f"joint_blocks.{i}.{sai}", torch.cat([a for a, _ in found]), torch.block_diag(*[b for _, b in found]), ALPHA * 3)
        for sai, ours in SAI_PLAIN.items():
            if f"transformer.transformer_blocks.{i}.{ours}" in pairs:
                a, b = pairs[f"transformer.transformer_blocks.{i}.{ours}"]
                put(f"joint_blocks.{i}.{sai}", a, b, ALPHA)
    for key, (a, b) in pairs.items():
        if key.startswith("text_encoder."):
            name = key[len("text_encoder.") :]
            full = ("lora_te1_" + name.replace(".", "_")) if style == "kohya" else "text_encoders.clip_l.transformer." + name
            state[full + ".lora_down.weight"], state[full + ".lora_up.weight"] = a.contiguous(), b.contiguous()
            state[full + ".alpha"] = torch.tensor(float(ALPHA))
    save_file(state, str(out))
    return out


@pytest.fixture(scope="module")
def lora_files(diffusers_lora, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-other")
    return {
        "diffusers": diffusers_lora,
        "kohya": _sai_file(diffusers_lora, folder / "kohya_sd3.safetensors", "kohya"),
        "comfyui": _sai_file(diffusers_lora, folder / "comfy_sd3.safetensors", "comfyui"),
    }


@pytest.fixture(scope="module")
def reference(load_tiny, diffusers_lora):
    """Images of the fp32 model: without LoRA, and with diffusers' own LoRA loading at 1 and 0.5."""
    images = {"none": _image(load_tiny(precision="fp32"))}
    for strength in (1.0, 0.5):
        loaded = load_tiny(precision="fp32")
        loaded.pipe.load_lora_weights(str(diffusers_lora.parent), weight_name=WEIGHT_NAME, adapter_name="test")
        loaded.pipe.set_adapters(["test"], adapter_weights=[strength])
        images[strength] = _image(loaded)
    assert psnr(images[1.0], images["none"]) < 30  # the LoRA changes the picture clearly
    return images


@pytest.fixture(scope="module")
def fp32_model(load_tiny):
    loaded = load_tiny(precision="fp32")
    return loaded, LoraSet(loaded.pipe)


@pytest.fixture(scope="module")
def fp8_model(load_tiny):
    loaded = load_tiny(precision="fp8")
    return loaded, LoraSet(loaded.pipe), _image(loaded)


@pytest.mark.parametrize("layout, strength", [("diffusers", 1.0), ("kohya", 1.0), ("comfyui", 1.0), ("diffusers", 0.5), ("kohya", 0.5)])
def test_a_lora_in_fp32_gives_diffusers_own_image(fp32_model, lora_files, reference, layout, strength):
    loaded, loras = fp32_model
    stats = loras.apply([LoraSpec(str(lora_files[layout]), strength)], "runtime")
    assert psnr(_image(loaded), reference[strength]) >= 40
    entry = stats["loras"][0]
    assert entry["matched"].split("/")[0] == entry["matched"].split("/")[1]  # every module of the file found its layer
    assert any(c == "text_encoder" for c, _ in loras.read(LoraSpec(str(lora_files[layout]))).layers)


@pytest.mark.parametrize("mode", ["runtime", "merge"])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_fp8_with_a_lora_is_close_to_fp32_with_it_and_shows_its_effect(fp8_model, lora_files, reference, mode, strength):
    loaded, loras, without = fp8_model
    stats = loras.apply([LoraSpec(str(lora_files["kohya"]), strength)], mode)
    assert stats["lora_mode"] == mode
    image = _image(loaded)
    assert psnr(image, reference[strength]) >= 30
    assert psnr(image, reference[strength]) > psnr(image, reference["none"])
    assert psnr(image, reference[strength]) > psnr(image, without)


def test_runtime_loras_switch_per_request_without_reloading(fp8_model, lora_files):
    loaded, loras, before = fp8_model
    loras.apply([LoraSpec(str(lora_files["diffusers"]), 1.0)], "runtime")
    with_lora = _image(loaded)
    loras.apply([], "runtime")
    assert np.array_equal(_image(loaded), before) and not np.array_equal(with_lora, before)


def test_merge_requantizes_and_undo_restores_the_exact_fp8_bytes(fp8_model, lora_files):
    loaded, loras, _ = fp8_model
    loras.apply([], "merge")
    layer = loaded.pipe.transformer.get_submodule("transformer_blocks.0.attn.to_q")
    assert isinstance(layer, FP8Linear)
    weight, scale = layer.weight.clone(), layer.scale.clone()
    loras.apply([LoraSpec(str(lora_files["comfyui"]), 1.0)], "merge")
    assert not torch.equal(layer.weight.view(torch.uint8), weight.view(torch.uint8)) and not torch.equal(layer.scale, scale)
    loras.apply([], "merge")
    assert torch.equal(layer.weight.view(torch.uint8), weight.view(torch.uint8)) and torch.equal(layer.scale, scale)


def test_a_file_matching_no_layer_names_the_file_and_the_layouts_tried(fp32_model, tmp_path):
    path = tmp_path / "sdxl_style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(path))
    with pytest.raises(ModelLoadError, match="sdxl_style.safetensors matches no layer") as e:
        fp32_model[1].apply([LoraSpec(str(path))])
    assert "kohya sd-scripts" in str(e.value) and "diffusers/PEFT" in str(e.value)


def test_a_partial_match_is_reported_with_counts(fp32_model, lora_files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(lora_files["kohya"]))
    state["lora_unet_joint_blocks_99_x_block_attn_proj.lora_down.weight"] = torch.zeros(4, 8)
    state["lora_unet_joint_blocks_99_x_block_attn_proj.lora_up.weight"] = torch.zeros(8, 4)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    stats = fp32_model[1].apply([LoraSpec(str(path))])
    matched, total = map(int, stats["loras"][0]["matched"].split("/"))
    assert total == matched + 1
    fp32_model[1].apply([])


@pytest.mark.parametrize("text, expected", [("style.safetensors", ("style.safetensors", 1.0)), ("a/b.safetensors:0.5", ("a/b.safetensors", 0.5)),
                                            ("C:/loras/x.safetensors:-1", ("C:/loras/x.safetensors", -1.0))])
def test_lora_arguments_read_file_and_strength(text, expected):
    spec = parse_lora_arg(text)
    assert (spec.path, spec.strength) == expected


@pytest.mark.parametrize("text", ["x.safetensors:9", "x.safetensors:nan", "x.safetensors:inf"])
def test_a_strength_out_of_range_is_refused_naming_the_range(text):
    with pytest.raises(ValueError, match="must be a number from -4 to 4"):
        parse_lora_arg(text)


def test_a_pickle_lora_is_refused(fp32_model, tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickle"):
        fp32_model[1].apply([LoraSpec(str(path))])
