"""What one bench row does: build a fresh random-weight pipeline for a case (architecture x
precision x resolution x steps x guidance x placement x compile), warm it up, time `repeats`
images, and record peaks; the FP8/BF16 ratios between rows of one run; the fidelity proxy
(FP8 against the BF16 weights it was quantized from, identical inputs); and the whole run."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import torch

from ..flops import passes_per_step, text_tokens, transformer_pass_work
from ..fp8 import TRANSFORMER_POLICY, choose_path, relative_l2, swap_linears_to_fp8
from ..generation import free_memory
from ..loader import resolve_device
from ..specs import ModelSpec
from .measure import StepTimer, apply_vram_limit, compile_transformer_, environment, fuse_activation_quant_, host_peak_bytes, reset_host_peak
from .weights import GIB, HOST_USABLE, _meta_transformer, cpu_refusal, host_available_bytes, made_bytes, pipeline_weight_bytes, random_pipeline, random_transformer, resolve_arch

PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, golden hour"
RATIO_KEYS = ("step_time_s", "peak_memory_bytes", "latency_s")  # fp8 / bf16 of these, per matching pair


@dataclass(frozen=True)
class Case:
    arch: str
    precision: str
    resolution: int
    steps: int
    guidance: float
    placement: str = "resident"
    compile: bool = False


@dataclass(frozen=True)
class BenchOptions:
    device: str = "auto"
    t5: str = "16bit"
    fp8_path: str = "auto"
    compile_mode: str = "default"
    fuse_quant: bool = False
    repeats: int = 3
    warmup: int = 1
    min_warmup_s: float = 10.0
    cpu_full_size: bool = False  # full-size models on the CPU take minutes per image and all the RAM
    seed: int = 0
    compile_scope: str = "blocks"  # blocks: regional compilation of each MMDiT block; whole: the forward
    vram_budget: int | None = None  # placement "planned": the planner's VRAM budget (default: the cap, else free VRAM)


def planned(case: Case, spec: ModelSpec, options: BenchOptions, device: torch.device):
    """The planner's Plan for `case` under the run's VRAM budget (what the engine would choose)."""
    from .. import memory

    budget = options.vram_budget or memory.free_vram_bytes(str(device)) or 0
    work = memory.Workload(case.resolution, case.resolution, 1, case.guidance > 1.0)
    attention = memory.choose_attention(str(device))
    return memory.plan_placement(spec, budget, memory.host_ram_bytes(), work, case.precision, attention, options.t5)


def _build(case: Case, spec: ModelSpec, options: BenchOptions, device: torch.device, fp8_path: str | None, row: dict):
    """A fresh random-weight pipeline placed as the case says; a planned case goes through the
    engine's own plan -> load options -> apply_plan path."""
    if case.placement != "planned":
        make_on = torch.device("cpu") if case.placement == "model_offload" else device
        pipe = random_pipeline(spec, case.precision, device, options.seed, options.t5, fp8_path or "upcast", make_on)
        if case.placement == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
        return pipe
    from .. import memory
    from ..randomload import random_loader

    plan = planned(case, spec, options, device)
    row["plan"] = {"placement": plan.placement, "t5": plan.t5, "vae_tiling": plan.vae_tiling, "fits": plan.fits,
                   "predicted_peak_vram_bytes": plan.predicted_peak_vram_bytes, "vram_budget_bytes": plan.vram_budget_bytes}  # fmt: skip
    loaded = random_loader(spec.name, memory.load_options_for(plan, str(device), options.fp8_path), seed=options.seed)
    row["applied"] = memory.apply_plan(loaded, plan)
    return loaded.pipe


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_pipe(pipe, case: Case, spec: ModelSpec, seed: int):
    return pipe(
        prompt=PROMPT,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        height=case.resolution,
        width=case.resolution,
        generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=spec.max_sequence_length,
        output_type="pil",
    ).images[0]


def case_work(case: Case, spec: ModelSpec, t5: str) -> dict:
    txt = text_tokens(spec.max_sequence_length, clip_tokens=spec.clip_tokens)
    work = transformer_pass_work(spec.transformer_config, case.resolution, case.resolution, txt, spec.vae_scale_factor)
    per_step = passes_per_step(case.guidance) * work.flops
    return {"image_tokens": work.image_tokens, "text_tokens": txt, "tflop_per_step": per_step / 1e12, "tflop_per_image": case.steps * per_step / 1e12}


@torch.inference_mode()
def run_case(case: Case, options: BenchOptions) -> dict:
    """Build a fresh random-weight pipeline for `case`, warm it up, and measure it."""
    if case.placement == "served":  # through the app's own request path
        from .served import run_served_case

        return run_served_case(case, options)
    spec = resolve_arch(case.arch)
    device = resolve_device(options.device)
    fp8_path = choose_path(device, options.fp8_path) if case.precision == "fp8" else None
    row = {**asdict(case), "model": spec.name, "fp8_path": fp8_path, "t5": options.t5, "device": str(device), **case_work(case, spec, options.t5)}
    if case.placement in ("model_offload", "planned") and device.type != "cuda":
        return {**row, "status": "skipped", "error": f"{case.placement} placement needs a CUDA device"}
    refusal = cpu_refusal(spec, device, options)
    if refusal:
        return {**row, "status": "skipped", "error": refusal}
    make_on = torch.device("cpu") if case.placement != "resident" else device
    row["weight_bytes"] = pipeline_weight_bytes(spec, case.precision, device, options.t5)
    available = host_available_bytes() if make_on.type == "cpu" else None
    if available is not None and sum(row["weight_bytes"].values()) > HOST_USABLE * available:
        need = sum(row["weight_bytes"].values()) / GIB
        return {**row, "status": "skipped", "error": f"the weights need {need:.1f} GiB of host RAM; {available / GIB:.1f} GiB is available"}
    free_memory(device)
    host_resettable = reset_host_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe = transformer = timer = None
    try:
        start = time.perf_counter()
        pipe = _build(case, spec, options, device, fp8_path, row)
        _synchronize(device)
        row["load_s"] = time.perf_counter() - start
        transformer = pipe.transformer
        row["transformer_weight_bytes"] = sum(t.numel() * t.element_size() for t in [*transformer.parameters(), *transformer.buffers()])
        if case.precision == "fp8" and options.fuse_quant:
            fuse_activation_quant_(transformer)
        if case.compile:
            torch._dynamo.reset()  # each case compiles a new model: stay clear of the recompile limit
            row["compiled"] = compile_transformer_(transformer, options.compile_mode, regional=options.compile_scope == "blocks")
        timer = StepTimer(transformer, device)
        start = time.perf_counter()
        warmed = 0  # at least `warmup` images and `min_warmup_s` seconds: a busy or cold machine settles first
        while warmed < options.warmup or (warmed and time.perf_counter() - start < options.min_warmup_s):
            _run_pipe(pipe, case, spec, options.seed + warmed)
            _synchronize(device)
            warmed += 1
        row["warmup_s"] = time.perf_counter() - start  # includes compilation when compiling
        row["warmup_images"] = warmed
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timer.reset()
        latencies = []
        for i in range(options.repeats):
            start = time.perf_counter()
            image = _run_pipe(pipe, case, spec, options.seed + i)
            _synchronize(device)
            latencies.append(time.perf_counter() - start)
        steps = timer.seconds()
        row.update(
            status="ok",
            latencies_s=latencies,
            latency_s=statistics.median(latencies),
            step_times_s=steps,
            step_time_s=statistics.median(steps),
            transformer_calls=len(steps),
            image_size=list(image.size),
        )
        row["achieved_tflops"] = row["tflop_per_step"] / row["step_time_s"]
        if device.type == "cuda":
            row["peak_vram_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            row["peak_vram_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        else:
            row["peak_vram_allocated_bytes"] = row["peak_vram_reserved_bytes"] = None
    except Exception as e:  # one failing case (an OOM under the cap) must not end the run
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        row.update(status="oom" if oom else "error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    finally:
        if timer is not None:
            timer.remove()
        pipe = transformer = timer = None
        free_memory(device)
    row["peak_host_bytes"] = host_peak_bytes()
    row["peak_host_kind"] = "case (VmHWM reset per case)" if host_resettable else "process lifetime (VmHWM could not be reset)"
    if row.get("status") == "ok":
        on_gpu = device.type == "cuda"
        row["peak_memory_bytes"] = row["peak_vram_allocated_bytes"] if on_gpu else row["peak_host_bytes"]
        row["peak_memory_kind"] = "vram_allocated" if on_gpu else "host_rss"
    return row


def _pair_key(row: dict) -> tuple:
    return tuple(row[k] for k in ("arch", "resolution", "steps", "guidance", "placement", "compile"))


def add_ratios(rows: list[dict]) -> None:
    """Put `fp8_vs_bf16` (fp8 / bf16 of step time, peak memory, latency) on each FP8 row whose BF16
    twin (same case otherwise) ran in this run; None where there is no twin."""
    bf16 = {_pair_key(r): r for r in rows if r["precision"] == "bf16" and r.get("status") == "ok"}
    for row in rows:
        if row["precision"] != "fp8":
            row["fp8_vs_bf16"] = None
            continue
        twin = bf16.get(_pair_key(row))
        if twin is None or row.get("status") != "ok":
            row["fp8_vs_bf16"] = None
            continue
        row["fp8_vs_bf16"] = {k: row[k] / twin[k] if twin[k] else None for k in RATIO_KEYS}


# ---- fidelity ----------------------------------------------------------------------------


@torch.inference_mode()
def fidelity(spec: ModelSpec, resolution: int, steps: int, guidance: float, device: torch.device, seed: int = 0, fp8_path: str = "auto") -> dict:
    """Relative L2 of the FP8 transformer against the BF16 one it is quantized from.

    One random BF16 transformer runs a denoising loop on random text embeddings; its Linear
    weights are then quantized in place (FP8 = quantization of those BF16 weights, all else
    unchanged, bf16 compute for both). `per_step_rel_l2`: the FP8 output on the BF16 loop's
    own inputs, step by step (no accumulation); `final_latent_rel_l2`: the FP8 loop run on its
    own from the same noise, against the BF16 final latent.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = spec.transformer_config
    path = choose_path(device, fp8_path)
    dtype = torch.bfloat16
    model = random_transformer(config, "bf16", device, seed, dtype=dtype)
    gen = torch.Generator("cpu").manual_seed(seed)
    batch = passes_per_step(guidance)
    txt = text_tokens(spec.max_sequence_length, clip_tokens=spec.clip_tokens)
    text = torch.randn(batch, txt, config["joint_attention_dim"], generator=gen).to(device, dtype)
    pooled = torch.randn(batch, config["pooled_projection_dim"], generator=gen).to(device, dtype)
    size = resolution // spec.vae_scale_factor
    noise = torch.randn(1, config["in_channels"], size, size, generator=gen).to(device)

    def predict(latents, t):
        out = model(
            hidden_states=latents.repeat(batch, 1, 1, 1).to(dtype),
            timestep=t.expand(batch),
            encoder_hidden_states=text,
            pooled_projections=pooled,
            return_dict=False,
        )[0].float()
        if batch == 2:
            uncond, cond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        return out

    def denoise():
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift)
        scheduler.set_timesteps(steps, device=device)
        latents, record = noise.clone(), []
        for t in scheduler.timesteps:
            pred = predict(latents, t)
            record.append((latents, t, pred))
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        return record, latents

    reference, final_bf16 = denoise()
    quantized = swap_linears_to_fp8(model, TRANSFORMER_POLICY, path, dtype, quantize_weights=True)
    per_step = [relative_l2(predict(latents, t), pred) for latents, t, pred in reference]
    _, final_fp8 = denoise()
    del model
    free_memory(device)
    return {
        "model": spec.name,
        "resolution": resolution,
        "steps": steps,
        "guidance": guidance,
        "fp8_path": path,
        "quantized_layers": len(quantized),
        "per_step_rel_l2": per_step,
        "max_step_rel_l2": max(per_step),
        "final_latent_rel_l2": relative_l2(final_fp8, final_bf16),
        "finite": bool(torch.isfinite(final_bf16).all() and torch.isfinite(final_fp8).all()),  # random weights can overflow
    }


def still_to_measure(device: torch.device, rows: list[dict]) -> list[str]:
    """What this run could not measure, said in the report instead of left blank."""
    if device.type == "cuda":
        return [f"{r['model']} {r['precision']} {r['resolution']}px: {r['status']} ({r.get('error', '')})" for r in rows if r.get("status") != "ok"]
    return [
        "GPU step time and achieved TFLOP/s, BF16 and FP8 (scaled_mm), for sd3.5-large, sd3.5-large-turbo and sd3.5-medium at 512/768/1024 px",
        "peak VRAM (allocated and reserved) per case, and which cases fit under --vram-limit 8GiB",
        "end-to-end latency with full-size CLIP-L/G, T5-XXL (16-bit, fp8, dropped) and VAE on a GPU",
        "speed-up of --compile, --compile-mode reduce-overhead (CUDA graphs) and --fuse-quant on a GPU",
        "model_offload placement (needs CUDA)",
        "fidelity (relative L2 FP8 vs BF16) at full size",
    ]


def make_cases(archs, precisions, resolutions, steps, guidance, placements, compiles) -> list[Case]:
    cases = []
    for arch in archs:
        spec = resolve_arch(arch)
        for res in resolutions or [spec.resolution]:
            if res % spec.size_multiple:
                raise ValueError(f"resolution {res} is not a multiple of {spec.size_multiple} for {spec.name}")
            for placement in placements:
                for compiled in compiles:
                    for precision in precisions:
                        cases.append(
                            Case(
                                arch=arch,
                                precision=precision,
                                resolution=res,
                                steps=steps or spec.steps,
                                guidance=spec.guidance if guidance is None else guidance,
                                placement=placement,
                                compile=compiled,
                            )
                        )
    return cases


def run_bench(
    cases: list[Case], options: BenchOptions, vram_limit: int | None = None, with_fidelity: bool = True, command: str = "", log=print, deadline: float | None = None
) -> dict:
    """Measure every case and the fidelity proxy; returns the report (JSON-ready dict). Cases not
    started by `deadline` (a perf_counter reading) are reported as not run."""
    device = resolve_device(options.device)
    fid = []
    if with_fidelity and {"bf16", "fp8"} <= {c.precision for c in cases}:
        seen = set()
        for c in cases:  # fidelity runs before the VRAM cap: the BF16 master must fit
            key = (c.arch, c.resolution, c.steps, c.guidance)
            if key in seen:
                continue
            seen.add(key)
            log(f"fidelity {c.arch} {c.resolution}px {c.steps} steps ...")
            spec = resolve_arch(c.arch)
            refusal = cpu_refusal(spec, device, options)
            if refusal:
                fid.append({"model": spec.name, "resolution": c.resolution, "steps": c.steps, "guidance": c.guidance, "error": "skipped: " + refusal})
                continue
            need = made_bytes(_meta_transformer(spec.transformer_config, "bf16", torch.bfloat16, "upcast"), torch.bfloat16)
            available = host_available_bytes() if device.type == "cpu" else None
            if available is not None and need > HOST_USABLE * available:
                error = f"skipped: the BF16 transformer needs {need / GIB:.1f} GiB of host RAM; {available / GIB:.1f} GiB is available"
                fid.append({"model": spec.name, "resolution": c.resolution, "steps": c.steps, "guidance": c.guidance, "error": error})
                continue
            try:
                fid.append(fidelity(resolve_arch(c.arch), c.resolution, c.steps, c.guidance, device, options.seed, options.fp8_path))
            except Exception as e:
                fid.append({"model": resolve_arch(c.arch).name, "resolution": c.resolution, "steps": c.steps, "guidance": c.guidance, "error": f"{type(e).__name__}: {e}"[:300]})
            free_memory(device)
    limit = apply_vram_limit(vram_limit, device)
    if vram_limit is not None and options.vram_budget is None:
        options = replace(options, vram_budget=vram_limit)  # the planner plans for the cap it runs under
    rows = []
    for i, case in enumerate(cases, 1):
        log(f"[{i}/{len(cases)}] {case.arch} {case.precision} {case.resolution}px {case.steps} steps cfg {case.guidance} {case.placement} compile={case.compile} ...")
        if deadline is not None and time.perf_counter() > deadline:
            spec = resolve_arch(case.arch)
            row = {**asdict(case), "model": spec.name, "fp8_path": None, **case_work(case, spec, options.t5), "status": "not run", "error": "time budget spent"}
        else:
            row = run_case(case, options)
        log(f"    {row['status']}" + (f": step {row['step_time_s'] * 1000:.1f} ms, image {row['latency_s']:.2f} s" if row["status"] == "ok" else f": {row.get('error', '')}"))
        rows.append(row)
    add_ratios(rows)
    by_key = {(f["model"], f["resolution"], f["steps"], f["guidance"]): f for f in fid}
    for row in rows:
        f = by_key.get((row["model"], row["resolution"], row["steps"], row["guidance"])) if row["precision"] == "fp8" else None
        row["fidelity"] = {k: f[k] for k in ("max_step_rel_l2", "final_latent_rel_l2")} if f and "error" not in f else None
    return {
        "schema": 1,
        "kind": "measurement",
        "weights": "random (full-size architectures from fp8pipe.specs; FP8 weights random E4M3 bytes)",
        "command": command,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": environment(device),
        "vram_limit": limit,
        "options": asdict(options),
        "prompt": PROMPT,
        "rows": rows,
        "fidelity": fid,
        "still_to_measure": still_to_measure(device, rows),
    }
