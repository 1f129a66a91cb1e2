"""VRAM budget -> placement plan: which components live where, and the peak that predicts.

Everything here is a plain function of numbers: component sizes are counted from the spec
configs on the meta device (nothing is allocated), activation and decode memory from the
request's size. The engine applies a `Plan` with diffusers' own hooks:

- resident: every component on the GPU.
- model_offload: `pipe.enable_model_cpu_offload()`; one whole component on the GPU at a time.
- group_offload: `transformer.enable_group_offload(block_level, use_stream=True)`; two
  transformer blocks on the GPU (the running one and the prefetched next), CLIP and VAE resident.
- sequential: `pipe.enable_sequential_cpu_offload()`; one leaf layer at a time (slowest).

The ladder is ordered by the VRAM each placement needs, which is not the order of their
names in the issue: group offload keeps two blocks resident, model offload the whole
transformer, so group offload comes after model offload.
T5 steps down on its own axis: 16-bit on the GPU, FP8 weight-only on the GPU, on the CPU
(hidden from the offload hooks), dropped (only when host RAM cannot hold it, or when held to
"drop"). VAE tiling switches on when a decode would not fit.
Attention: PyTorch SDPA (flash / memory-efficient kernels, no N x N matrix) by default,
xformers when importable; the choice is part of the plan and reported.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field, replace

from .specs import SPECS, ModelSpec

KiB, MiB, GiB = 2**10, 2**20, 2**30

PLACEMENTS = ("resident", "model_offload", "group_offload", "sequential")  # most VRAM first
T5_PLACEMENTS = ("16bit", "fp8", "cpu", "drop")  # the loader's T5 modes, most VRAM first
PRECISIONS = ("fp8", "bf16")

# Fixed costs that no model size explains (measured orders of magnitude, rounded up).
CUDA_RUNTIME_BYTES = 512 * MiB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack
HOST_RUNTIME_BYTES = 3 * GiB  # python + torch + CUDA libraries + diffusers/transformers, resident
SAFETY_FRACTION = 0.05  # a plan must leave this share of the budget free (fragmentation)

# Tokens: CLIP's 77 plus T5's max_sequence_length (256 for SD3.5): 333 text tokens.
CLIP_TOKENS = 77

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
    )


# ---- activations --------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What one request asks of the GPU: size, batch and whether guidance doubles it."""

    width: int
    height: int
    batch: int = 1
    guidance: bool = True

    @property
    def passes(self) -> int:
        """Rows in a transformer call: the batch, twice with classifier-free guidance."""
        return self.batch * (2 if self.guidance else 1)


def image_tokens(spec: ModelSpec, width: int, height: int) -> int:
    """(H/16) * (W/16) for SD3.5: pixels / VAE factor / patch size, per side."""
    step = spec.size_multiple
    return (height // step) * (width // step)


def text_tokens(spec: ModelSpec) -> int:
    return CLIP_TOKENS + spec.max_sequence_length


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


# ---- the plan -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Where each component lives for one (model, precision, request size), and what that costs."""

    model: str
    precision: str
    placement: str
    t5: str
    vae_tiling: bool
    attention: str
    predicted_peak_vram_bytes: int
    predicted_peak_host_bytes: int
    vram_budget_bytes: int
    host_budget_bytes: int
    width: int
    height: int
    batch: int
    guidance: bool
    fits: bool
    level: int = 0  # rung on the ladder it came from (0 = fastest); larger needs less VRAM
    t5_policy: str = "auto"  # "auto" (the ladder picks) or the T5 mode every rung was held to
    reasons: tuple[str, ...] = field(default=())
    breakdown: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def _t5_gpu_bytes(sizes: ComponentSizes, t5: str) -> int:
    return {"16bit": sizes.t5_16bit, "fp8": sizes.t5_fp8}.get(t5, 0)


def _t5_host_bytes(sizes: ComponentSizes, t5: str) -> int:
    return sizes.t5_16bit if t5 == "cpu" else 0


def predict(spec: ModelSpec, precision: str, placement: str, t5: str, work: Workload, tiled: bool, attention: str) -> dict:
    """Predicted peak VRAM and host RAM of one placement, with the terms that make them."""
    sizes = component_sizes(spec.name, precision)
    denoise = denoise_activation_bytes(spec, work, precision, attention)
    decode = vae_decode_bytes(spec, work, tiled)
    encode = text_encode_bytes(spec, work)
    clip = sizes.clip_l + sizes.clip_g
    t5_gpu = _t5_gpu_bytes(sizes, t5)
    transformer_rest = sizes.transformer - sizes.transformer_blocks
    everything_gpu = sizes.transformer + clip + t5_gpu + sizes.vae
    if placement == "resident":
        vram = everything_gpu + max(denoise, decode, encode)
        host_weights = 0
    elif placement == "model_offload":
        stages = [clip + encode, t5_gpu + encode, sizes.transformer + denoise, sizes.vae + decode]
        vram = max(stages)
        host_weights = everything_gpu  # every offloaded component's home copy
    elif placement == "group_offload":
        in_flight = GROUP_OFFLOAD_BLOCKS_IN_FLIGHT * sizes.transformer_max_block
        resident = clip + t5_gpu + sizes.vae + transformer_rest
        vram = resident + in_flight + max(denoise, decode, encode)
        host_weights = sizes.transformer_blocks  # pinned, for the streams' async copies
    elif placement == "sequential":
        leaf = max(sizes.transformer_max_leaf, sizes.clip_max_leaf, sizes.vae_max_leaf, sizes.t5_max_leaf if t5_gpu else 0)
        vram = leaf + max(denoise, decode, encode)
        host_weights = everything_gpu
    else:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
    vram += CUDA_RUNTIME_BYTES
    # Loading streams the transformer tensor by tensor; the other components pass through
    # the host at 16-bit, one at a time: the largest of them is the load transient.
    load_transient = 0 if placement != "resident" else max(clip, sizes.t5_16bit if t5 in ("16bit", "fp8") else 0, sizes.vae)
    host = HOST_RUNTIME_BYTES + host_weights + _t5_host_bytes(sizes, t5) + load_transient
    # What stays on the GPU between requests (the pool's bill): offload hooks put the rest back.
    between = {"resident": everything_gpu, "group_offload": clip + t5_gpu + sizes.vae + transformer_rest}.get(placement, 0)
    return {
        "vram": vram,
        "host": host,
        "vram_between_requests": between,
        "weights_on_gpu": everything_gpu,
        "denoise_activations": denoise,
        "vae_decode": decode,
        "text_encode": encode,
        "cuda_runtime": CUDA_RUNTIME_BYTES,
        "host_runtime": HOST_RUNTIME_BYTES,
        "host_weights": host_weights + _t5_host_bytes(sizes, t5),
    }


@functools.lru_cache(maxsize=1)
def xformers_usable() -> bool:
    """xformers imports AND runs its attention kernel on this GPU. A wheel built for another
    torch imports fine but has no CUDA kernels (seen on an H100: xformers 0.0.35, built for
    torch 2.10 cu128, under torch 2.11 cu130), so importing is not enough."""
    import importlib.util

    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import torch
        import xformers.ops

        q = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
        xformers.ops.memory_efficient_attention(q, q, q)
        return True
    except Exception:
        return False


def choose_attention(device: str = "cuda", dtype_bits: int = 16) -> str:
    """xformers when importable on a GPU, else SDPA (flash / memory-efficient kernels choose
    themselves); 'sdpa-math' only where no fused kernel runs (fp32 on old cards)."""
    if device.startswith("cuda") and xformers_usable():
        return "xformers"
    if device.startswith("cuda") and dtype_bits == 32:
        return "sdpa-math"
    return "sdpa"


def plan_ladder(
    spec: ModelSpec,
    vram_budget: int,
    host_budget: int,
    work: Workload,
    precision: str = "fp8",
    attention: str = "sdpa",
    t5_policy: str = "auto",
) -> list[Plan]:
    """Every ladder rung as a Plan (fastest first), each with VAE tiling on only where needed.

    `t5_policy` "auto" lets the ladder step T5 down too; a T5 mode (e.g. "drop" for a kiosk
    that cannot wait for T5 on the CPU) holds every rung to it.
    """
    if precision not in ("fp8", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be one of fp8, bf16, fp16, fp32; got {precision!r}")
    if t5_policy != "auto" and t5_policy not in T5_PLACEMENTS:
        raise ValueError(f"t5 must be auto or one of {', '.join(T5_PLACEMENTS)}; got {t5_policy!r}")
    rungs = LADDER if t5_policy == "auto" else tuple((p, t5_policy) for p in PLACEMENTS)
    usable = int(vram_budget * (1 - SAFETY_FRACTION))
    plans = []
    for level, (placement, t5) in enumerate(rungs):
        reasons = []
        tiled = False
        terms = predict(spec, precision, placement, t5, work, tiled, attention)
        if terms["vram"] > usable:
            tiled_terms = predict(spec, precision, placement, t5, work, True, attention)
            if tiled_terms["vram"] < terms["vram"]:
                tiled, terms = True, tiled_terms
                reasons.append(f"VAE tiling ({VAE_TILE_PIXELS} px tiles): the full decode needs {format_size(terms['vae_decode'])} more than a tile")
        host_t5 = t5
        if t5 == "cpu" and terms["host"] > host_budget:
            host_t5 = "drop"
            terms = predict(spec, precision, placement, "drop", work, tiled, attention)
            reasons.append(f"T5 dropped: host RAM {format_size(host_budget)} cannot also hold T5 ({format_size(component_sizes(spec.name, precision).t5_16bit)})")
        fits = terms["vram"] <= usable and terms["host"] <= host_budget
        plans.append(
            Plan(
                model=spec.name,
                precision=precision,
                placement=placement,
                t5=host_t5,
                vae_tiling=tiled,
                attention=attention,
                predicted_peak_vram_bytes=terms["vram"],
                predicted_peak_host_bytes=terms["host"],
                vram_budget_bytes=vram_budget,
                host_budget_bytes=host_budget,
                width=work.width,
                height=work.height,
                batch=work.batch,
                guidance=work.guidance,
                fits=fits,
                level=level,
                t5_policy=t5_policy,
                reasons=tuple(reasons),
                breakdown=terms,
            )
        )
    return plans


def plan_placement(
    spec: ModelSpec,
    vram_budget: int,
    host_budget: int,
    work: Workload,
    precision: str = "fp8",
    attention: str = "sdpa",
    t5_policy: str = "auto",
) -> Plan:
    """The fastest plan whose predicted peaks fit the budgets (5% VRAM kept free), with why.

    When nothing fits, the last rung (sequential offload) comes back with fits=False.
    """
    ladder = plan_ladder(spec, vram_budget, host_budget, work, precision, attention, t5_policy)
    for i, plan in enumerate(ladder):
        if plan.fits:
            return replace(plan, reasons=(*_why(ladder[:i], plan), *plan.reasons))
    last = ladder[-1]
    return replace(last, reasons=("nothing fits: even sequential offload predicts " + format_size(last.predicted_peak_vram_bytes), *last.reasons))


def _why(rejected: list[Plan], chosen: Plan) -> list[str]:
    budget = format_size(int(chosen.vram_budget_bytes * (1 - SAFETY_FRACTION)))
    lines = []
    seen = set()
    for p in rejected:
        if (p.placement, p.t5) in seen:
            continue
        seen.add((p.placement, p.t5))
        what = "VRAM" if p.predicted_peak_vram_bytes > int(p.vram_budget_bytes * (1 - SAFETY_FRACTION)) else "host RAM"
        need = p.predicted_peak_vram_bytes if what == "VRAM" else p.predicted_peak_host_bytes
        lines.append(f"not {p.placement} with T5 {p.t5}: needs {format_size(need)} {what}")
    lines.append(f"{chosen.placement} with T5 {chosen.t5}: {format_size(chosen.predicted_peak_vram_bytes)} of {budget} usable VRAM")
    return lines


def next_plan(plan: Plan, spec: ModelSpec, attention: str | None = None) -> Plan | None:
    """The first rung below `plan` (what an out-of-memory steps down to), or None at the bottom."""
    work = Workload(plan.width, plan.height, plan.batch, plan.guidance)
    ladder = plan_ladder(spec, plan.vram_budget_bytes, plan.host_budget_bytes, work, plan.precision, attention or plan.attention, plan.t5_policy)
    below = [p for p in ladder if p.level > plan.level]
    if not below:
        return None
    fitting = [p for p in below if p.fits]
    chosen = fitting[0] if fitting else below[-1]
    return replace(chosen, reasons=(f"stepped down from {plan.placement} (T5 {plan.t5}) after running out of memory", *chosen.reasons))


# ---- budgets --------------------------------------------------------------------------


def free_vram_bytes(device: str = "cuda") -> int | None:
    """Free memory on the GPU right now, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return free


def host_ram_bytes() -> int:
    """Available host RAM (psutil when installed, else the total from sysconf)."""
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ---- the table --------------------------------------------------------------------------

TABLE_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
TABLE_SIZES = (512, 768, 1024)
TABLE_BUDGETS_GIB = (80, 24, 16, 12, 8, 6, 4)
TABLE_HOST_GIB = 32


def planner_table(precision: str = "fp8", host_gib: int = TABLE_HOST_GIB) -> list[Plan]:
    plans = []
    for name in TABLE_MODELS:
        spec = SPECS[name]
        for px in TABLE_SIZES:
            for gib in TABLE_BUDGETS_GIB:
                plans.append(plan_placement(spec, gib * GiB, host_gib * GiB, Workload(px, px, 1, spec.guidance > 1.0), precision))
    return plans


def table_markdown(plans: list[Plan], command: str) -> str:
    """A markdown table of plans, with the command that produced it."""
    lines = [
        "# Planner table",
        "",
        f"Generated by `{command}`; do not edit by hand. Predictions, not measurements:",
        "weights counted from the configs, activations from the model in `fp8pipe/memory.py`,",
        f"{format_size(CUDA_RUNTIME_BYTES)} CUDA runtime and {int(SAFETY_FRACTION * 100)}% of the budget kept free.",
        "",
        "| model | px | VRAM budget | placement | T5 | VAE tiling | predicted VRAM | predicted host RAM | fits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p.model} ({p.precision}) | {p.width} | {p.vram_budget_bytes / GiB:.0f} GiB | {p.placement} | {p.t5} | "
            f"{'yes' if p.vae_tiling else 'no'} | {format_size(p.predicted_peak_vram_bytes)} | "
            f"{format_size(p.predicted_peak_host_bytes)} | {'yes' if p.fits else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# ---- command line ------------------------------------------------------------------------


def add_plan_command(subparsers) -> None:
    """`plan`: print the placement for a budget, or (--table) the planner table as markdown."""
    p = subparsers.add_parser("plan", help="choose a memory placement for a VRAM budget (no GPU needed)")
    p.add_argument("--model", default="sd3.5-large-turbo", help="a known family: " + ", ".join(SPECS))
    p.add_argument("--vram", default=None, help="VRAM budget, e.g. 8GiB, 8GB, 8G, 8192MiB (default: free memory of the GPU)")
    p.add_argument("--ram", default=None, help="host RAM budget (default: available RAM)")
    p.add_argument("--precision", default="fp8", choices=PRECISIONS, help="transformer precision (default fp8)")
    p.add_argument("--t5", default="auto", choices=("auto", *T5_PLACEMENTS), help="hold T5 to one mode (default: the planner steps it down)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's; 1 or less runs one transformer pass per image instead of two")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--table", nargs="?", const="-", default=None, metavar="FILE", help="write the planner table (markdown) to FILE, or print it")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    import json

    from .requests import GenerationRequest, RequestError
    from .specs import find_spec

    if args.table is not None:
        text = table_markdown(planner_table(args.precision), f"python -m fp8pipe plan --table {args.table} --precision {args.precision}".replace(" --table -", " --table"))
        if args.table == "-":
            print(text, end="")
        else:
            from pathlib import Path

            Path(args.table).parent.mkdir(parents=True, exist_ok=True)
            Path(args.table).write_text(text)
            print(f"wrote {args.table}")
        return 0
    spec = find_spec(args.model)
    if spec is None:
        raise RequestError("model", f"must be one of {', '.join(SPECS)} (or an alias); got {args.model!r}")
    request = GenerationRequest.create(spec, prompt="plan", guidance=args.guidance, seed=0, width=args.width, height=args.height, batch=args.batch)
    vram = parse_size(args.vram) if args.vram else free_vram_bytes()
    if vram is None:
        raise RequestError("vram", "no GPU here to measure: pass a budget such as --vram 8GiB")
    host = parse_size(args.ram) if args.ram else host_ram_bytes()
    work = Workload(request.width, request.height, request.batch, request.guidance > 1.0)  # the pipeline guides above 1
    plan = plan_placement(spec, vram, host, work, args.precision, choose_attention("cuda", 16), args.t5)
    if args.json:
        print(json.dumps(plan.as_dict()))
        return 0
    print(f"{spec.name} ({args.precision}) at {request.width}x{request.height}, batch {request.batch}, guidance {'on' if work.guidance else 'off'}")
    print(f"budget: {format_size(vram)} VRAM, {format_size(host)} host RAM")
    print(f"plan: {plan.placement}; T5 {plan.t5}; VAE tiling {'on' if plan.vae_tiling else 'off'}; attention {plan.attention}")
    print(f"predicted peak: {format_size(plan.predicted_peak_vram_bytes)} VRAM, {format_size(plan.predicted_peak_host_bytes)} host RAM" + ("" if plan.fits else "  (DOES NOT FIT)"))
    print("why:")
    for line in plan.reasons:
        print(f"  - {line}")
    b = plan.breakdown
    print(
        "terms: weights on GPU when resident {}, denoise activations {}, VAE decode {}, CUDA runtime {}".format(
            format_size(b["weights_on_gpu"]), format_size(b["denoise_activations"]), format_size(b["vae_decode"]), format_size(b["cuda_runtime"])
        )
    )
    return 0 if plan.fits else 1


# ---- applying a plan ------------------------------------------------------------------------


def load_options_for(plan: Plan, device: str, fp8_path: str = "auto"):
    """The LoadOptions that build `plan`: offload placements keep weights on the host."""
    from .loader import LoadOptions

    on_gpu = device.startswith("cuda")
    storage = "cpu" if on_gpu and plan.placement != "resident" else None
    return LoadOptions(precision=plan.precision, t5=plan.t5, fp8_path=fp8_path, device=device, storage=storage)


def apply_plan(loaded, plan: Plan) -> dict:
    """Install `plan`'s offload hooks, VAE tiling and attention backend on a freshly loaded
    pipeline (loaded with `load_options_for(plan, ...)`); returns what was applied.

    Only diffusers' own hooks: they move FP8Linear's E4M3 weight and float32 scale as
    ordinary parameters, so nothing FP8-specific is needed here.
    """
    import torch

    pipe, device = loaded.pipe, loaded.device
    applied = {"placement": plan.placement if device.type == "cuda" else "resident"}
    if device.type == "cuda" and plan.placement != "resident":
        if loaded.options.t5 == "cpu" and isinstance(pipe.text_encoder_3, torch.nn.Module):
            keep_on_host(pipe, "text_encoder_3")
        if plan.placement == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
        elif plan.placement == "group_offload":
            for name in ("text_encoder", "text_encoder_2", "vae", "text_encoder_3"):
                module = getattr(pipe, name, None)
                if isinstance(module, torch.nn.Module):  # a HostModule (T5 on the CPU) stays
                    module.to(device)  # dtypes were set by the loader; .to(device) keeps them
            # One block per group; with streams the next group is copied while this one runs.
            pipe.transformer.enable_group_offload(
                onload_device=device,
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=True,
                non_blocking=True,
            )
        elif plan.placement == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
    applied.update(apply_plan_tiling(loaded, plan))
    applied["attention"] = apply_attention(pipe, plan.attention)
    return applied


def apply_plan_tiling(loaded, plan: Plan) -> dict:
    """Turn VAE tiling on or off as `plan` says (safe to call again on a warm pipeline)."""
    vae = loaded.pipe.vae
    if not plan.vae_tiling:
        vae.disable_tiling()
        return {"vae_tiling": False}
    from .generation import enable_vae_tiling

    enable_vae_tiling(vae, VAE_TILE_PIXELS)
    return {"vae_tiling": True}


class HostModule:
    """A CPU-resident encoder that offload hooks cannot see.

    Written by hand because diffusers' offload moves every nn.Module component to the GPU:
    `enable_model_cpu_offload` hooks each module in its sequence and sends the ones in
    `_exclude_from_cpu_offload` to the GPU outright. A plain object is skipped by all three
    offload methods; it runs the module on the CPU and the pipeline moves the output back.
    """

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        import torch

        move = lambda x: x.to("cpu") if isinstance(x, torch.Tensor) else x  # noqa: E731
        return self.module(*(move(a) for a in args), **{k: move(v) for k, v in kwargs.items()})

    @property
    def dtype(self):
        return self.module.dtype

    @property
    def device(self):
        return self.module.device


def keep_on_host(pipe, name: str) -> None:
    """Replace component `name` by a HostModule (bypassing the pipeline's config bookkeeping,
    which would try to record the wrapper's class for saving; the engine never saves)."""
    object.__setattr__(pipe, name, HostModule(getattr(pipe, name)))


def apply_attention(pipe, attention: str) -> str:
    """Switch to xformers when asked and it loads; SDPA otherwise (the processors' default).

    Attention slicing is not offered: diffusers' sliced processor does not implement SD3's
    joint (image + text) attention, and SDPA's fused kernels already avoid the N x N matrix.
    """
    if attention == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as e:  # a broken xformers build must not stop the engine
            import logging

            logging.getLogger(__name__).warning("xformers unavailable (%s); using SDPA", e)
            return "sdpa"
    return attention
