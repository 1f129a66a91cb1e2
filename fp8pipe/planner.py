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

from . import latency
from .cards import CARDS, Card
from .sizes import (
    CUDA_RUNTIME_BYTES,
    GROUP_OFFLOAD_BLOCKS_IN_FLIGHT,
    HOST_RUNTIME_BYTES,
    PLACEMENTS,
    SAFETY_FRACTION,
    T5_PLACEMENTS,
    VAE_TILE_PIXELS,
    ComponentSizes,
    GiB,
    Workload,
    component_sizes,
    with_lora,
    denoise_activation_bytes,
    format_size,
    text_encode_bytes,
    vae_decode_bytes,
)
from .specs import SPECS, ModelSpec

DEFAULT_CARD = "RTX 4090"  # the card latency is predicted for when none is named or probed
TIE_FRACTION = 0.01  # plans within 1 % of the fastest count as equally fast: the least VRAM wins

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
    level: int = 0  # index among the candidates, most predicted VRAM first
    t5_policy: str = "auto"  # "auto" (the planner picks) or the T5 mode every candidate was held to
    reasons: tuple[str, ...] = field(default=())
    breakdown: dict = field(default_factory=dict)
    resident_blocks: int = 0  # transformer blocks kept on the GPU (the rest stream)
    steps: int = 0
    execution: str = "eager"
    card: str = ""  # the card the latency was predicted for
    predicted_latency_s: float = 0.0  # a prediction (fp8pipe.latency), never a measurement
    floor_latency_s: float = 0.0  # the same at 100 % of every peak, no overheads
    predicted_step_s: float = 0.0
    streamed_bytes_per_step: int = 0
    fp8_layer_paths: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    candidates: tuple = ()  # the chosen plan only: the best of each placement, for `plan --json`
    lora_bytes: int = 0  # runtime LoRA weights counted with the blocks (0: none, or merged)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["candidates"] = list(self.candidates)
        d["kind"] = "prediction"
        return d


def _t5_gpu_bytes(sizes: ComponentSizes, t5: str) -> int:
    return {"16bit": sizes.t5_16bit, "fp8": sizes.t5_fp8}.get(t5, 0)


def _t5_host_bytes(sizes: ComponentSizes, t5: str) -> int:
    return sizes.t5_16bit if t5 == "cpu" else 0


def predict(spec: ModelSpec, precision: str, placement: str, t5: str, work: Workload, tiled: bool, attention: str, resident_blocks: int | None = None) -> dict:
    """Predicted peak VRAM and host RAM of one placement, with the terms that make them.

    `resident_blocks` (partial and group_offload): how many of the first transformer blocks stay
    on the GPU; the others stream, two in flight (the running one and the prefetched next).
    Runtime LoRA weights (`work.lora_bytes`) count with the blocks (see with_lora).
    """
    sizes = with_lora(component_sizes(spec.name, precision), work.lora_bytes)
    denoise = denoise_activation_bytes(spec, work, precision, attention)
    decode = vae_decode_bytes(spec, work, tiled)
    encode = text_encode_bytes(spec, work)
    clip = sizes.clip_l + sizes.clip_g
    t5_gpu = _t5_gpu_bytes(sizes, t5)
    transformer_rest = sizes.transformer - sizes.transformer_blocks
    everything_gpu = sizes.transformer + clip + t5_gpu + sizes.vae
    blocks = sizes.transformer_block_bytes
    between = 0
    if placement == "resident":
        vram = everything_gpu + max(denoise, decode, encode)
        host_weights = 0
        between = everything_gpu
    elif placement == "model_offload":
        stages = [clip + encode, t5_gpu + encode, sizes.transformer + denoise, sizes.vae + decode]
        vram = max(stages)
        host_weights = everything_gpu  # every offloaded component's home copy
    elif placement in ("partial", "group_offload"):
        k = (resident_blocks or 0) if placement == "partial" else 0
        streamed = blocks[k:]
        in_flight = GROUP_OFFLOAD_BLOCKS_IN_FLIGHT * max(streamed, default=0)
        resident = clip + t5_gpu + sizes.vae + transformer_rest + sum(blocks[:k])
        vram = resident + in_flight + max(denoise, decode, encode)
        host_weights = sum(streamed)  # pinned, for the streams' async copies
        between = resident
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
    return {
        "vram": vram,
        "host": host,
        "vram_between_requests": between,  # what stays on the GPU between requests (the pool's bill)
        "weights_on_gpu": everything_gpu,
        "denoise_activations": denoise,
        "vae_decode": decode,
        "text_encode": encode,
        "cuda_runtime": CUDA_RUNTIME_BYTES,
        "host_runtime": HOST_RUNTIME_BYTES,
        "host_weights": host_weights + _t5_host_bytes(sizes, t5),
        "lora_runtime": work.lora_bytes,
    }


def latency_job(spec: ModelSpec, precision: str, placement: str, t5: str, work: Workload, tiled: bool, resident_blocks: int | None, execution: str) -> latency.Job:
    """The latency model's view of one candidate: the counted sizes, as numbers."""
    sizes = with_lora(component_sizes(spec.name, precision), work.lora_bytes)
    return latency.Job(
        spec=spec,
        width=work.width,
        height=work.height,
        steps=work.steps or spec.steps,
        guidance=2.0 if work.guidance else 0.0,
        precision=precision,
        execution=execution,
        t5=t5,
        batch=work.batch,
        block_bytes=sizes.transformer_block_bytes,
        rest_bytes=sizes.transformer - sizes.transformer_blocks,
        clip_bytes=sizes.clip_l + sizes.clip_g,
        t5_bytes=sizes.t5_16bit if t5 in ("16bit", "cpu") else sizes.t5_fp8 if t5 == "fp8" else 0,
        vae_bytes=sizes.vae,
        placement=placement,
        resident_blocks=resident_blocks if placement == "partial" else (0 if placement == "group_offload" else None),
        vae_tiled=tiled,
    )


def _rungs(spec: ModelSpec, t5_policy: str) -> list[tuple[str, str, int | None]]:
    """Every (placement, T5 mode, resident blocks) the planner weighs. With T5 "auto" it may
    keep T5 on the GPU in 16-bit or FP8 or run it on the host; it drops T5 only when held to
    "drop" or when host RAM cannot hold it (dropping changes the picture)."""
    layers = spec.transformer_config["num_layers"]
    modes = ("16bit", "fp8", "cpu") if t5_policy == "auto" else (t5_policy,)
    rungs = []
    for t5 in modes:
        rungs.append(("resident", t5, None))
        rungs.extend(("partial", t5, k) for k in range(layers - 1, 0, -1))
        rungs.extend([("model_offload", t5, None), ("group_offload", t5, 0), ("sequential", t5, None)])
    return rungs


def plan_ladder(
    spec: ModelSpec,
    vram_budget: int,
    host_budget: int,
    work: Workload,
    precision: str = "fp8",
    attention: str = "sdpa",
    t5_policy: str = "auto",
    card: Card | None = None,
    execution: str = "eager",
) -> list[Plan]:
    """Every candidate as a Plan, most predicted VRAM first (its `level` is its index), each with
    VAE tiling on only where needed and its predicted latency on `card` (default DEFAULT_CARD)."""
    if precision not in ("fp8", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be one of fp8, bf16, fp16, fp32; got {precision!r}")
    if t5_policy != "auto" and t5_policy not in T5_PLACEMENTS:
        raise ValueError(f"t5 must be auto or one of {', '.join(T5_PLACEMENTS)}; got {t5_policy!r}")
    if execution not in ("eager", "compiled"):
        raise ValueError(f"execution must be eager or compiled; got {execution!r}")
    card = card or CARDS[DEFAULT_CARD]
    usable = int(vram_budget * (1 - SAFETY_FRACTION))
    plans = []
    for placement, t5, k in _rungs(spec, t5_policy):
        reasons = []
        tiled = False
        terms = predict(spec, precision, placement, t5, work, tiled, attention, k)
        if terms["vram"] > usable:
            tiled_terms = predict(spec, precision, placement, t5, work, True, attention, k)
            if tiled_terms["vram"] < terms["vram"]:
                tiled, terms = True, tiled_terms
                reasons.append(f"VAE tiling ({VAE_TILE_PIXELS} px tiles): the full decode needs {format_size(terms['vae_decode'])} more than a tile")
        host_t5 = t5
        if t5 == "cpu" and terms["host"] > host_budget:
            host_t5 = "drop"
            terms = predict(spec, precision, placement, "drop", work, tiled, attention, k)
            reasons.append(f"T5 dropped: host RAM {format_size(host_budget)} cannot also hold T5 ({format_size(component_sizes(spec.name, precision).t5_16bit)})")
        fits = terms["vram"] <= usable and terms["host"] <= host_budget
        job = latency_job(spec, precision, placement, host_t5, work, tiled, k, execution)
        pred = latency.predict(job, card)
        layers = spec.transformer_config["num_layers"]
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
                t5_policy=t5_policy,
                reasons=tuple(reasons),
                breakdown=terms,
                resident_blocks={"resident": layers, "model_offload": layers, "partial": k, "group_offload": 0}.get(placement, 0),
                steps=job.steps,
                execution=execution,
                card=card.name,
                predicted_latency_s=pred.latency_s,
                floor_latency_s=pred.floor_s,
                predicted_step_s=pred.step_s,
                streamed_bytes_per_step=pred.streamed_bytes_per_step,
                fp8_layer_paths=fp8_layer_paths(spec, precision, card) if precision == "fp8" else {},
                stages={s.name: {"predicted_s": s.seconds, "floor_s": s.floor_seconds} for s in pred.stages},
                lora_bytes=work.lora_bytes,
            )
        )
    # Partial residency that needs as much VRAM as keeping everything resident (the blocks in
    # flight outweigh the one or two left out) is never worth it: leave it out.
    resident = {p.t5: p.predicted_peak_vram_bytes for p in plans if p.placement == "resident"}
    plans = [p for p in plans if not (p.placement == "partial" and p.predicted_peak_vram_bytes >= resident.get(p.t5, 1 << 62))]
    plans.sort(key=lambda p: -p.predicted_peak_vram_bytes)
    return [replace(p, level=i) for i, p in enumerate(plans)]


def fp8_layer_paths(spec: ModelSpec, precision: str, card: Card) -> dict:
    """How many FP8 layers of the transformer take each path on `card` (see fp8.layer_path):
    AdaLN modulation weight-only everywhere, the rest scaled_mm where the card has FP8 matmul."""
    if precision != "fp8":
        return {}
    config = spec.transformer_config
    layers, dual = config["num_layers"], len(config.get("dual_attention_layers") or ())
    adaln = 2 * layers  # norm1.linear and norm1_context.linear of every block
    linears = layers * 12 - 3 + dual * 4  # q, k, v, out, MLP x2 for image and text (last block: text q, k, v only)
    scaled = linears if card.fp8_tflops is not None else 0
    return {"scaled_mm": scaled, "upcast": linears - scaled + adaln, "adaln_weight_only": adaln}


T5_QUALITY = {"16bit": 0, "cpu": 0, "fp8": 1, "drop": 2}  # 16-bit weights on either device are the same T5


def choose(ladder: list[Plan]) -> Plan | None:
    """The fastest fitting plan. Plans within TIE_FRACTION of it count as equally fast: the one
    with the more exact T5 wins, then the one needing the least VRAM (more headroom)."""
    fitting = [p for p in ladder if p.fits]
    if not fitting:
        return None
    best = min(p.predicted_latency_s for p in fitting)
    close = [p for p in fitting if p.predicted_latency_s <= best * (1 + TIE_FRACTION)]
    return min(close, key=lambda p: (T5_QUALITY[p.t5], p.predicted_peak_vram_bytes, p.predicted_latency_s))


def candidates_summary(ladder: list[Plan]) -> list[dict]:
    """One line per candidate for `plan --json`: the fastest few of each placement."""
    seen: dict[tuple[str, str], list[Plan]] = {}
    for p in ladder:
        seen.setdefault((p.placement, p.t5), []).append(p)
    out = []
    for (placement, t5), plans in seen.items():
        fitting = [p for p in plans if p.fits]
        p = min(fitting or plans, key=lambda q: q.predicted_latency_s)
        out.append(
            {
                "placement": placement,
                "t5": t5,
                "resident_blocks": p.resident_blocks,
                "fits": p.fits,
                "predicted_latency_s": round(p.predicted_latency_s, 4),
                "floor_latency_s": round(p.floor_latency_s, 4),
                "streamed_bytes_per_step": p.streamed_bytes_per_step,
                "predicted_peak_vram_bytes": p.predicted_peak_vram_bytes,
                "predicted_peak_host_bytes": p.predicted_peak_host_bytes,
            }
        )
    return sorted(out, key=lambda c: (not c["fits"], c["predicted_latency_s"]))


def plan_placement(
    spec: ModelSpec,
    vram_budget: int,
    host_budget: int,
    work: Workload,
    precision: str = "fp8",
    attention: str = "sdpa",
    t5_policy: str = "auto",
    card: Card | None = None,
    execution: str = "eager",
) -> Plan:
    """The fastest plan whose predicted peaks fit the budgets (SAFETY_FRACTION of VRAM kept free),
    with why. When nothing fits, the plan needing the least VRAM comes back with fits=False and
    its first reason names the shortfall."""
    ladder = plan_ladder(spec, vram_budget, host_budget, work, precision, attention, t5_policy, card, execution)
    chosen = choose(ladder)
    summary = tuple(candidates_summary(ladder))
    if chosen is not None:
        return replace(chosen, reasons=(*_why(ladder, chosen), *chosen.reasons), candidates=summary)
    last = min(ladder, key=lambda p: p.predicted_peak_vram_bytes)
    usable = int(vram_budget * (1 - SAFETY_FRACTION))
    if last.predicted_peak_vram_bytes > usable:
        short = f"nothing fits: even {last.placement} needs {format_size(last.predicted_peak_vram_bytes)} VRAM, {format_size(last.predicted_peak_vram_bytes - usable)} more than the {format_size(usable)} usable"
    else:
        short = f"nothing fits: host RAM {format_size(host_budget)} is {format_size(last.predicted_peak_host_bytes - host_budget)} short of {last.placement}'s {format_size(last.predicted_peak_host_bytes)}"
    return replace(last, reasons=(short, *last.reasons), candidates=summary)


def plan_as_run(
    spec: ModelSpec, vram_budget: int, host_budget: int, work: Workload, precision: str = "fp8", attention: str = "sdpa",
    t5_policy: str = "auto", card: Card | None = None, compile: bool = False,
) -> Plan:  # fmt: skip
    """The plan the engine runs: with `compile`, compiled execution (compiled blocks, the FP8
    quantizer fused) where the chosen plan keeps the transformer resident, the only placement the
    engine compiles; eager otherwise, so the prediction is for the path that really runs."""
    if compile:
        plan = plan_placement(spec, vram_budget, host_budget, work, precision, attention, t5_policy, card, "compiled")
        if plan.placement == "resident":
            return plan
    return plan_placement(spec, vram_budget, host_budget, work, precision, attention, t5_policy, card, "eager")


def plan_workload(plan: Plan) -> Workload:
    """The request `plan` was made for: size, batch, guidance, steps and its runtime LoRA bytes."""
    return Workload(plan.width, plan.height, plan.batch, plan.guidance, plan.steps, plan.lora_bytes)


def as_eager(plan: Plan, spec: ModelSpec, card: Card | None = None) -> Plan:
    """`plan` predicted for eager execution (what runs when compiling fails): the same placement,
    T5 and VAE tiling on the eager ladder, at the same step-down level and T5 policy."""
    ladder = plan_ladder(spec, plan.vram_budget_bytes, plan.host_budget_bytes, plan_workload(plan), plan.precision, plan.attention, plan.t5, card, "eager")
    same = next((p for p in ladder if (p.placement, p.t5, p.vae_tiling) == (plan.placement, plan.t5, plan.vae_tiling)), None)
    return replace(same or replace(plan, execution="eager"), level=plan.level, t5_policy=plan.t5_policy, reasons=plan.reasons)


def _why(ladder: list[Plan], chosen: Plan) -> list[str]:
    budget = format_size(int(chosen.vram_budget_bytes * (1 - SAFETY_FRACTION)))
    lines = []
    faster = [p for p in ladder if p.predicted_latency_s < chosen.predicted_latency_s and not p.fits]
    for p in sorted(faster, key=lambda q: q.predicted_latency_s)[:3]:
        what = "VRAM" if p.predicted_peak_vram_bytes > int(p.vram_budget_bytes * (1 - SAFETY_FRACTION)) else "host RAM"
        need = p.predicted_peak_vram_bytes if what == "VRAM" else p.predicted_peak_host_bytes
        lines.append(f"not {_name(p)}: predicts {p.predicted_latency_s:.2f} s but needs {format_size(need)} {what}")
    lines.append(
        f"{_name(chosen)}: predicted {chosen.predicted_latency_s:.2f} s (floor {chosen.floor_latency_s:.2f} s) on {chosen.card}, "
        f"{format_size(chosen.predicted_peak_vram_bytes)} of {budget} usable VRAM"
    )
    return lines


def _name(p: Plan) -> str:
    blocks = f" ({p.resident_blocks} blocks resident)" if p.placement == "partial" else ""
    return f"{p.placement}{blocks} with T5 {p.t5}"


def next_plan(plan: Plan, spec: ModelSpec, attention: str | None = None, card: Card | None = None) -> Plan | None:
    """What an out-of-memory steps down to: the fastest fitting plan predicting less VRAM than
    `plan`, else the one needing the least; None when nothing needs less. `card`: the card the
    plan was predicted for when it is not a named one (a probed GPU)."""
    from .cards import find_card

    work = plan_workload(plan)
    if card is None and plan.card in CARDS:
        card = find_card(plan.card)
    args = (spec, plan.vram_budget_bytes, plan.host_budget_bytes, work, plan.precision, attention or plan.attention, plan.t5_policy, card)
    ladder = plan_ladder(*args, "eager")
    if plan.execution == "compiled":  # the engine compiles resident transformers only (plan_as_run)
        compiled = {(p.placement, p.t5, p.vae_tiling): p for p in plan_ladder(*args, "compiled") if p.placement == "resident"}
        ladder = [compiled.get((p.placement, p.t5, p.vae_tiling), p) for p in ladder]
    below = [p for p in ladder if p.predicted_peak_vram_bytes < plan.predicted_peak_vram_bytes]
    if not below:
        return None
    chosen = choose(below) or below[-1]
    return replace(chosen, reasons=(f"stepped down from {_name(plan)} after running out of memory", *chosen.reasons))


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
    card = plans[0].card if plans else DEFAULT_CARD
    lines = [
        "# Planner table",
        "",
        f"Generated by `{command}`; do not edit by hand. Predictions, not measurements:",
        "weights counted from the configs, activations from `fp8pipe/sizes.py`, latency from",
        f"`fp8pipe/latency.py` at the {card}'s rates (eager; the budget caps its memory), with the floor",
        f"(100 % of every peak) beside it; {format_size(CUDA_RUNTIME_BYTES)} CUDA runtime and {int(SAFETY_FRACTION * 100)}% of the budget kept free.",
        "",
        "| model | px | VRAM budget | placement | resident blocks | T5 | VAE tiling | predicted VRAM | predicted host RAM | predicted latency s | floor s | fits |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p.model} ({p.precision}) | {p.width} | {p.vram_budget_bytes / GiB:.0f} GiB | {p.placement} | {p.resident_blocks} | {p.t5} | "
            f"{'yes' if p.vae_tiling else 'no'} | {format_size(p.predicted_peak_vram_bytes)} | "
            f"{format_size(p.predicted_peak_host_bytes)} | {p.predicted_latency_s:.2f} | {p.floor_latency_s:.2f} | {'yes' if p.fits else 'no'} |"
        )
    return "\n".join(lines) + "\n"
