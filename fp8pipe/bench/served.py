"""A served-path bench row (placement "served"): the case goes through the one request path the
app, the API and the CLI use (fp8pipe.serving.serve_request, inline, on an Engine with a
random-weight loader), so its figures include planning, the pool, placement (offload rungs
included, under `--vram-limit`) and the stats the app reports."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict

from ..loader import resolve_device
from .weights import resolve_arch


def run_served_case(case, options) -> dict:
    """Warm up and time `options.repeats` images of `case` through fp8pipe.serving."""
    from .. import serving
    from ..engine import Engine
    from ..randomload import random_loader
    from .rows import PROMPT, case_work

    spec = resolve_arch(case.arch)
    device = resolve_device(options.device)
    row = {**asdict(case), "model": spec.name, "t5": options.t5, "device": str(device), **case_work(case, spec, options.t5)}
    if case.compile:
        return {**row, "status": "skipped", "error": "the served path compiles through the engine's --compile, not per row"}

    def loader(model, load_options):
        return random_loader(model, load_options, seed=options.seed)

    engine = Engine(device=options.device, vram_budget=options.vram_budget, warmup=False, fp8_path=options.fp8_path, loader=loader, t5=options.t5)
    fields = dict(prompt=PROMPT, steps=case.steps, guidance=case.guidance, width=case.resolution, height=case.resolution)
    try:
        start = time.perf_counter()
        warmed = 0
        while warmed < options.warmup or (warmed and time.perf_counter() - start < options.min_warmup_s):
            serving.run_to_result(engine, engine.request(spec.name, seed=options.seed + warmed, **fields), spec.name, case.precision, inline=True)
            warmed += 1
        row.update(warmup_s=time.perf_counter() - start, warmup_images=warmed)
        latencies, step_times, stats = [], [], None
        for i in range(options.repeats):
            start = time.perf_counter()
            result = serving.run_to_result(engine, engine.request(spec.name, seed=options.seed + i, **fields), spec.name, case.precision, inline=True)
            latencies.append(time.perf_counter() - start)
            stats = serving.public_stats(result)
            step_times.append(stats["denoise_s"] / case.steps)  # the served stage's time per step (the transformer loop)
        row.update(
            status="ok",
            latencies_s=latencies,
            latency_s=statistics.median(latencies),
            step_times_s=step_times,
            step_time_s=statistics.median(step_times),
            served_stats=stats,
            plan=stats["plan"],
            fp8_path=stats["fp8_path"],
            peak_memory_bytes=stats["peak_memory_bytes"],
            peak_memory_kind=stats["peak_memory_kind"],
            image_size=[stats["width"], stats["height"]],
        )
        row["achieved_tflops"] = row["tflop_per_step"] / row["step_time_s"]
    except Exception as e:  # one failing case must not end the run
        row.update(status="error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    finally:
        engine.close()
    return row
