"""VRAM budget -> placement plan: which components live where, what that predicts (peaks from
fp8pipe.sizes, latency from fp8pipe.latency), and why that plan was chosen.

Placements (most VRAM first):
- resident: every component on the GPU.
- partial: the first `resident_blocks` transformer blocks stay on the GPU, the rest stream with
  diffusers' group-offload hooks (one block in flight ahead), CLIP and VAE resident.
- model_offload: `pipe.enable_model_cpu_offload()`; one whole component on the GPU at a time.
- group_offload: every transformer block streamed (partial with no block resident).
- sequential: `pipe.enable_sequential_cpu_offload()`; one leaf layer at a time (slowest).
T5 steps down on its own axis: 16-bit on the GPU, FP8 weight-only on the GPU, on the CPU
(hidden from the offload hooks), dropped. VAE tiling switches on when a decode would not fit.
Among the candidates that fit both budgets, the plan with the lowest predicted latency wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .sizes import (
    CUDA_RUNTIME_BYTES,
    GROUP_OFFLOAD_BLOCKS_IN_FLIGHT,
    HOST_RUNTIME_BYTES,
    LADDER,
    PLACEMENTS,
    SAFETY_FRACTION,
    T5_PLACEMENTS,
    VAE_TILE_PIXELS,
    ComponentSizes,
    GiB,
    Workload,
    component_sizes,
    denoise_activation_bytes,
    format_size,
    text_encode_bytes,
    vae_decode_bytes,
)
from .specs import SPECS, ModelSpec

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
