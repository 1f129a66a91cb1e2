"""Sizes the planner works from: components counted on the meta device, activation and decode
peaks from a request's size, and the size parser (binary units).

Every figure is a plain function of numbers; nothing is allocated.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, replace

from .specs import SPECS, ModelSpec

KiB, MiB, GiB = 2**10, 2**20, 2**30

PLACEMENTS = ("resident", "partial", "model_offload", "group_offload", "sequential")  # roughly most VRAM first
T5_PLACEMENTS = ("16bit", "fp8", "cpu", "drop")  # the loader's T5 modes, most VRAM first
PRECISIONS = ("fp8", "bf16")

# Fixed costs that no model size explains (measured orders of magnitude, rounded up).
CUDA_RUNTIME_BYTES = 512 * MiB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack
HOST_RUNTIME_BYTES = 3 * GiB  # python + torch + CUDA libraries + diffusers/transformers, resident
# A plan must leave this share of the budget free: on the H100 under an 8 GiB cap the allocator
# reserved 7.48 GiB for 6.64 GiB allocated (Medium FP8; bench/results/gpu-check/run2-*.log),
# 12.7 % over what was allocated, while the planner predicted 6.85 GiB.
SAFETY_FRACTION = 0.12


# Activation model of one MMDiT block at its peak, in tensors of the block's width D
# (16-bit) per token: residual, modulated input, q, k, v, attention output (6) and the MLP
# hidden before and after GELU (2 x 4D). SDPA's flash / memory-efficient kernels never
# build the N x N matrix, so attention adds only its O(N) statistics.
BLOCK_ACTIVATION_WIDTHS = 14
# Dual-attention blocks (SD3.5 Medium's first 13) run a second image-only attention.
DUAL_ATTENTION_EXTRA_WIDTHS = 4
# FP8 scaled-matmul path: the largest input (the 4D MLP hidden) is copied to float32 and
# then to E4M3 before torch._scaled_mm: 4D x (4 + 1) bytes = 10 16-bit widths.
FP8_ACTIVATION_EXTRA_WIDTHS = 10
# Latents, noise prediction, guidance halves and prompt embeddings across steps: a few widths.
PERSISTENT_WIDTHS = 4
# FP8 upcast path (GPUs before Ada): the largest layer's weight is dequantized to float32 and
# then to the compute dtype right before its matmul: 4 + 2 bytes per weight, once at a time.
# Counted on every FP8 plan (the planner does not know the card's path; scaled_mm needs none).
FP8_UPCAST_BYTES_PER_WEIGHT = 6
# Measured on the CPU, one Large block at 512 px (scripts/measure_block_activations.py):
# float32 block 13.6 widths per token (the model says 14); FP8 paths add a fixed 0.2-0.3 GiB
# of weight-sized transients, which FP8_UPCAST_BYTES_PER_WEIGHT covers.

# VAE decode at full resolution: the last up-blocks hold about this many channels per pixel
# at their peak (upsampled 256-channel input, its GroupNorm/SiLU copies, the 128-channel
# resnet outputs). Measured on the CPU in float32 at 256 and 512 px (315 and 961 MiB):
# about 860 channels per pixel plus ~100 MiB fixed (scripts/measure_vae_decode_peak.py);
# both rounded up for the CUDA allocator's fragmentation.
VAE_DECODE_CHANNELS = 1024
VAE_DECODE_FIXED_BYTES = 128 * MiB
VAE_TILE_PIXELS = 512  # tile edge the engine sets when it turns VAE tiling on
VAE_TILE_OVERLAP = 0.25

# Each candidate placement with the T5 choices it may take, fastest first. The first whose
# predicted peaks fit both budgets wins; the ladder order makes the choice monotonic.
LADDER: tuple[tuple[str, str], ...] = (
    ("resident", "16bit"),
    ("resident", "fp8"),
    ("resident", "cpu"),
    ("model_offload", "16bit"),
    ("model_offload", "fp8"),
    ("model_offload", "cpu"),
    ("group_offload", "cpu"),
    ("sequential", "cpu"),
)
GROUP_OFFLOAD_BLOCKS_IN_FLIGHT = 2  # the running block and the prefetched next one (CUDA streams)

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """Bytes from '8GiB', '8GB', '8G', '8192MiB', '512M' or a plain number of bytes.

    Binary units throughout (a GPU sold as 8 GB has 8 GiB): 8GB == 8G == 8GiB.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"size must be a positive amount like 8GiB, 8GB, 8G or 8192MiB; got {text!r}")
        return int(text)
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"size must look like 8GiB, 8GB, 8G or 8192MiB; got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    value = int(number * {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}[unit])
    if value <= 0:
        raise ValueError(f"size must be a positive amount like 8GiB, 8GB, 8G or 8192MiB; got {text!r}")
    return value


def format_size(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ---- component sizes, counted on the meta device -------------------------------------


@dataclass(frozen=True)
class ComponentSizes:
    """Bytes of each component at its precision on the GPU, and the largest pieces offload moves."""

    transformer: int
    transformer_blocks: int  # all blocks together
    transformer_max_block: int
    transformer_max_leaf: int
    clip_l: int
    clip_g: int
    t5_16bit: int
    t5_fp8: int
    t5_max_leaf: int
    vae: int
    vae_max_leaf: int
    clip_max_leaf: int
    transformer_block_bytes: tuple[int, ...] = ()  # each block, in order

    def as_dict(self) -> dict:
        return asdict(self)


def _module_bytes(module, float_bytes: int) -> int:
    """Bytes on the GPU: FP8 tensors 1 byte, FP8 scales 4, other floats `float_bytes` each."""
    from .fp8 import FP8_DTYPE, FP8Linear

    total = 0
    for sub in module.modules():
        for name, t in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            if t.dtype == FP8_DTYPE:
                total += t.numel()
            elif isinstance(sub, FP8Linear) and name == "scale":
                total += t.numel() * 4
            elif t.is_floating_point():
                total += t.numel() * float_bytes
            else:
                total += t.numel() * t.element_size()
    return total


def _max_leaf_bytes(module, float_bytes: int) -> int:
    return max((_module_bytes(m, float_bytes) for m in module.modules() if not list(m.children())), default=0)


@functools.lru_cache(maxsize=32)
def component_sizes(spec_name: str, precision: str = "fp8") -> ComponentSizes:
    """Count every component of `spec_name` at `precision` (transformer; the rest 16-bit)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from .fp8 import T5_POLICY, TRANSFORMER_POLICY, swap_linears_to_fp8
    from .loader import _empty_transformer

    spec = SPECS[spec_name]
    transformer_float = 4 if precision == "fp32" else 2
    transformer = _empty_transformer(spec.transformer_config)
    if precision == "fp8":
        swap_linears_to_fp8(transformer, TRANSFORMER_POLICY, "scaled_mm", torch.bfloat16, quantize_weights=False)
    blocks = [_module_bytes(b, transformer_float) for b in transformer.transformer_blocks]
    with torch.device("meta"):
        from diffusers import AutoencoderKL

        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**spec.clip_l_config))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**spec.clip_g_config))
        t5 = T5EncoderModel(T5Config(**spec.t5_config))
        vae = AutoencoderKL.from_config(spec.vae_config)
    t5_16bit = _module_bytes(t5, 2)
    swap_linears_to_fp8(t5, T5_POLICY, "upcast", torch.bfloat16, quantize_weights=False)
    return ComponentSizes(
        transformer=_module_bytes(transformer, transformer_float),
        transformer_blocks=sum(blocks),
        transformer_max_block=max(blocks),
        transformer_max_leaf=_max_leaf_bytes(transformer, transformer_float),
        clip_l=_module_bytes(clip_l, 2),
        clip_g=_module_bytes(clip_g, 2),
        t5_16bit=t5_16bit,
        t5_fp8=_module_bytes(t5, 2),
        t5_max_leaf=_max_leaf_bytes(t5, 2),
        vae=_module_bytes(vae, 2),
        vae_max_leaf=_max_leaf_bytes(vae, 2),
        clip_max_leaf=max(_max_leaf_bytes(clip_l, 2), _max_leaf_bytes(clip_g, 2)),
        transformer_block_bytes=tuple(blocks),
    )


def with_lora(sizes: ComponentSizes, lora_bytes: int) -> ComponentSizes:
    """`sizes` with runtime LoRA weights spread evenly over the transformer blocks: they stay on the
    GPU with a resident block and stream with an offloaded one, as the runtime hooks move them."""
    if not lora_bytes or not sizes.transformer_block_bytes:
        return sizes
    per_block = lora_bytes // len(sizes.transformer_block_bytes)
    blocks = tuple(b + per_block for b in sizes.transformer_block_bytes)
    added = per_block * len(blocks)
    return replace(sizes, transformer=sizes.transformer + added, transformer_blocks=sizes.transformer_blocks + added,
                   transformer_max_block=max(blocks), transformer_block_bytes=blocks)


# ---- activations --------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What one request asks of the GPU: size, batch and whether guidance doubles it."""

    width: int
    height: int
    batch: int = 1
    guidance: bool = True
    steps: int | None = None  # None: the model's default (the latency of a plan depends on it)
    lora_bytes: int = 0  # runtime LoRA A/B weights (16-bit): they ride with the transformer blocks they change

    @property
    def passes(self) -> int:
        """Rows in a transformer call: the batch, twice with classifier-free guidance."""
        return self.batch * (2 if self.guidance else 1)


def image_tokens(spec: ModelSpec, width: int, height: int) -> int:
    """(H/16) * (W/16) for SD3.5: pixels / VAE factor / patch size, per side."""
    step = spec.size_multiple
    return (height // step) * (width // step)


def text_tokens(spec: ModelSpec) -> int:
    """Text tokens of a transformer call (one home: fp8pipe.flops.text_tokens)."""
    from .flops import text_tokens as tokens

    return tokens(spec.max_sequence_length, clip_tokens=spec.clip_tokens)


def denoise_activation_bytes(spec: ModelSpec, work: Workload, precision: str, attention: str) -> int:
    """Peak working memory of a transformer call beyond its weights."""
    config = spec.transformer_config
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = image_tokens(spec, work.width, work.height) + text_tokens(spec)
    widths = BLOCK_ACTIVATION_WIDTHS + PERSISTENT_WIDTHS
    if config.get("dual_attention_layers"):
        widths += DUAL_ATTENTION_EXTRA_WIDTHS
    if precision == "fp8":
        widths += FP8_ACTIVATION_EXTRA_WIDTHS
    value_bytes = 4 if precision == "fp32" else 2
    total = work.passes * tokens * width * widths * value_bytes
    if precision == "fp8":
        total += component_sizes(spec.name, precision).transformer_max_leaf * FP8_UPCAST_BYTES_PER_WEIGHT
    if attention == "sdpa-math":  # no fused kernel: the scores matrix of every head, plus its softmax
        total += work.passes * config["num_attention_heads"] * tokens * tokens * value_bytes * 2
    return total


def vae_decode_bytes(spec: ModelSpec, work: Workload, tiled: bool) -> int:
    """Peak working memory of the VAE decode: full-resolution feature maps, or one tile's."""
    edge_w = min(work.width, VAE_TILE_PIXELS) if tiled else work.width
    edge_h = min(work.height, VAE_TILE_PIXELS) if tiled else work.height
    scale = spec.vae_config["block_out_channels"][0] / 128  # channels relative to SD3.5's VAE
    per_image = int(edge_w * edge_h * VAE_DECODE_CHANNELS * scale * 2)
    output = work.width * work.height * 3 * 4  # the decoded image in float32, whole
    return VAE_DECODE_FIXED_BYTES + work.batch * (per_image + output)


def text_encode_bytes(spec: ModelSpec, work: Workload) -> int:
    """T5's working set for one prompt (and the negative one): small next to the weights."""
    d = spec.t5_config["d_model"]
    return work.passes * spec.max_sequence_length * (4 * d + spec.t5_config["d_ff"] * 2) * 2
