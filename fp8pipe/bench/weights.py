"""Random weights for full-size SD3.5 architectures, made in their final dtype on the target device.

Every model is built on the meta device and each tensor is then made once, on the target
device, in its final dtype (FP8 weights as random E4M3 bytes with plausible row scales), so a
host with less RAM than the model can still run it. Time and memory do not depend on weight
values, so these stand in for the real weights in benchmarks.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..fp8 import FP8_DTYPE, T5_POLICY, TRANSFORMER_POLICY, FP8Linear, swap_linears_to_fp8
from ..loader import _empty_transformer, cast_io_to, component_dtype, transformer_compute_dtype
from ..specs import SPECS, ModelSpec, find_spec

GIB = 2**30
ARCHS = {"large": "sd3.5-large", "large-turbo": "sd3.5-large-turbo", "medium": "sd3.5-medium", "tiny": "demo"}
HOST_USABLE = 0.8  # a CPU case runs only when its weights fit in this share of the available RAM

# Random E4M3 weights: codes 0x40..0x7E are the magnitudes 2 .. 448 (0x7F is NaN), drawn
# uniformly, which spreads a row over the top of the range as quantized weights do (amax -> 448).
FP8_CODE_LOW, FP8_CODE_HIGH = 0x40, 0x7F


def resolve_arch(name: str) -> ModelSpec:
    spec = SPECS.get(ARCHS.get(name.strip().lower(), "")) or find_spec(name)
    if spec is None:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}")
    return spec


def _fp8_code_rms() -> float:
    codes = torch.arange(FP8_CODE_LOW, FP8_CODE_HIGH, dtype=torch.uint8).view(FP8_DTYPE).float()
    return codes.pow(2).mean().sqrt().item()


def random_e4m3(shape, device, generator) -> torch.Tensor:
    """Random E4M3 values drawn as bytes (sign bit + code), never through a 16-bit tensor."""
    codes = torch.randint(FP8_CODE_LOW, FP8_CODE_HIGH, shape, dtype=torch.uint8, device=device, generator=generator)
    signs = torch.randint(0, 2, shape, dtype=torch.uint8, device=device, generator=generator) * 0x80
    return (codes | signs).view(FP8_DTYPE)


def _random_param(module: nn.Module, attr: str, t: torch.Tensor, device, dtype, gen) -> torch.Tensor:
    if isinstance(module, FP8Linear):
        if attr == "weight":
            return random_e4m3(t.shape, device, gen)
        if attr == "scale":  # row scales so that q * scale has std ~ 1/sqrt(fan_in), +-10% per row
            jitter = 1 + 0.1 * torch.randn(t.shape, device=device, generator=gen, dtype=torch.float32)
            return jitter / (math.sqrt(module.in_features) * _fp8_code_rms())
        return torch.zeros(t.shape, device=device, dtype=module.compute_dtype)
    if not t.is_floating_point():
        raise ValueError(f"no random rule for the integer parameter {attr} of {type(module).__name__}")
    if t.dim() >= 2:  # Linear, Conv, Embedding: std 1/sqrt(fan_in)
        fan_in = math.prod(t.shape[1:])
        return torch.randn(t.shape, device=device, dtype=dtype, generator=gen).mul_(1 / math.sqrt(fan_in))
    if attr == "weight":  # norm scales
        return torch.ones(t.shape, device=device, dtype=dtype)
    return torch.zeros(t.shape, device=device, dtype=dtype)  # biases


def _computed_buffer(module: nn.Module, attr: str, t: torch.Tensor, device, dtype) -> torch.Tensor:
    """Buffers hold facts, not weights: compute them as the module's constructor does."""
    from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed

    if isinstance(module, PatchEmbed) and attr == "pos_embed":
        grid = module.pos_embed_max_size or int(math.sqrt(t.shape[1]))
        table = get_2d_sincos_pos_embed(
            module.proj.out_channels, grid, base_size=module.base_size, interpolation_scale=module.interpolation_scale, device=device, output_type="pt"
        )
        return table.float().unsqueeze(0).to(dtype)
    if attr == "position_ids":
        return torch.arange(t.shape[-1], device=device).expand(t.shape).clone()
    raise ValueError(f"no rule to compute the buffer {attr} of {type(module).__name__}")


@torch.no_grad()
def materialize_random_(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Replace every meta tensor of `model` by a random one made on `device` in its final dtype.

    Tied parameters stay tied; buffers are computed (position tables, position ids). For the
    host, when a GPU is present, each tensor is drawn there and copied over: one generator
    thread on the CPU took minutes for Large's 8 GB (seen on an H100 machine).
    """
    make = torch.device("cuda") if device.type == "cpu" and torch.cuda.is_available() else device
    gen = torch.Generator(make).manual_seed(seed)
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for attr, t in list(module._parameters.items()):
            if t is None or not t.is_meta:
                continue
            if id(t) not in made:
                made[id(t)] = nn.Parameter(_random_param(module, attr, t, make, dtype, gen).to(device), requires_grad=False)
            module._parameters[attr] = made[id(t)]
        for attr, t in list(module._buffers.items()):
            if t is not None and t.is_meta:
                module._buffers[attr] = _computed_buffer(module, attr, t, device, dtype)
    return model


def _meta_transformer(config: dict, precision: str, compute: torch.dtype, fp8_path: str) -> nn.Module:
    model = _empty_transformer(config)
    if precision == "fp8":
        swap_linears_to_fp8(model, TRANSFORMER_POLICY, fp8_path, compute, quantize_weights=False)
    return model


def random_transformer(
    config: dict, precision: str, device: torch.device, seed: int, fp8_path: str = "upcast", dtype=None, make_on: torch.device | None = None
) -> nn.Module:
    """An SD3 transformer with random weights at `precision` for `device` (compute dtype as the
    loader's, or `dtype` when given), made on `make_on` (default `device`; the CPU for offload),
    never holding a second copy of any tensor."""
    compute = dtype or transformer_compute_dtype(precision, device)
    model = _meta_transformer(config, precision, compute, fp8_path)
    materialize_random_(model, make_on or device, compute, seed)
    if dtype is None and compute != component_dtype(device):
        cast_io_to(model, compute)
    return model.eval()


def _meta_components(spec: ModelSpec, t5: str, dtype: torch.dtype):
    """(CLIP tokenizer, T5 tokenizer, {name: model on the meta device}) for the text encoders and VAE."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from ..tiny import build_clip_tokenizer, build_t5_tokenizer

    clip_tok, t5_tok = build_clip_tokenizer(), build_t5_tokenizer()
    ids = {"bos_token_id": clip_tok.bos_token_id, "eos_token_id": clip_tok.eos_token_id, "pad_token_id": clip_tok.pad_token_id}
    with torch.device("meta"):
        parts = {
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**{"vocab_size": len(clip_tok), **spec.clip_l_config, **ids})),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**{"vocab_size": len(clip_tok), **spec.clip_g_config, **ids})),
            "text_encoder_3": None
            if t5 == "drop"
            else T5EncoderModel(T5Config(**{"vocab_size": len(t5_tok), **spec.t5_config, "pad_token_id": 0, "eos_token_id": 1})),
            "vae": AutoencoderKL.from_config(spec.vae_config),
        }
    if parts["text_encoder_3"] is not None and t5 == "fp8":
        swap_linears_to_fp8(parts["text_encoder_3"], T5_POLICY, "upcast", dtype, quantize_weights=False)
    return clip_tok, t5_tok, parts


def made_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Bytes a meta-device `model` takes once made in `dtype` (FP8 weights 1 byte, row scales 4)."""
    scales = {id(m.scale) for m in model.modules() if isinstance(m, FP8Linear)}
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype == FP8_DTYPE or not t.is_floating_point():
            width = t.element_size()
        else:
            width = 4 if id(t) in scales else dtype.itemsize
        total += t.numel() * width
    return total


def pipeline_weight_bytes(spec: ModelSpec, precision: str, device: torch.device, t5: str = "16bit") -> dict[str, int]:
    """Bytes of each component's weights as `random_pipeline` makes them for `device` (meta build only)."""
    dtype = component_dtype(device)
    compute = transformer_compute_dtype(precision, device)
    _, _, parts = _meta_components(spec, t5, dtype)
    sizes = {name: made_bytes(model, dtype) for name, model in parts.items() if model is not None}
    sizes["transformer"] = made_bytes(_meta_transformer(spec.transformer_config, precision, compute, "upcast"), compute)
    return sizes


def random_pipeline(
    spec: ModelSpec, precision: str, device: torch.device, seed: int = 0, t5: str = "16bit", fp8_path: str = "upcast", make_on: torch.device | None = None
):
    """A StableDiffusion3Pipeline of `spec` with random weights in `device`'s dtypes, every component
    made on `make_on` (default `device`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    dtype = component_dtype(device)
    clip_tok, t5_tok, parts = _meta_components(spec, t5, dtype)
    for i, name in enumerate(("text_encoder", "text_encoder_2", "text_encoder_3", "vae")):
        if parts[name] is not None:
            parts[name] = materialize_random_(parts[name], make_on or device, dtype, seed + 1 + i).eval()
    transformer = random_transformer(spec.transformer_config, precision, device, seed, fp8_path, make_on=make_on)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift),
        tokenizer=clip_tok,
        tokenizer_2=clip_tok,
        tokenizer_3=t5_tok if parts["text_encoder_3"] is not None else None,
        **parts,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cpu_refusal(spec: ModelSpec, device: torch.device, options) -> str | None:
    """Why a full-size model will not run on the CPU (None where it may)."""
    if device.type == "cpu" and spec.hub_id is not None and not options.cpu_full_size:  # the SD3.5 families, not the demo
        return f"{spec.name} is full-size and the device is the CPU (use a GPU, --arch tiny, or --cpu-full-size)"
    return None


def host_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
