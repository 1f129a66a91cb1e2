"""What each stage of `python -m fp8pipe check` does. Each `stage_X(options)` returns
{"status", "summary": [lines], "data": {...}, "markdown": str}; the runner adds the header.

Full-size models have random weights (time and memory do not depend on weight values); the
kiosk, planner and soak stages go through the engine and the service functions the app calls.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

GIB = 2**30
REPO = Path(__file__).resolve().parents[2]
PROMPTS = ("a lighthouse on a cliff at sunset", "a cat astronaut floating above the earth", "a bowl of ramen, studio photo", "a castle made of candy")


def _deadline(options: dict) -> float:
    return time.perf_counter() + float(options.get("budget_s", 510))


def _gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f}"


def _table(headers: list[str], rows: list[list]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="pipe")


# ---- 1. tests ----------------------------------------------------------------------------------


def stage_tests(options: dict) -> dict:
    """`pytest -m gpu tests/test_gpu.py`, read back from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "gpu.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_gpu.py", f"--junitxml={junit}"]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=float(options.get("budget_s", 510)))
        cases = _junit_cases(junit) if junit.is_file() else []
    counts = {k: sum(1 for c in cases if c["outcome"] == k) for k in ("passed", "failed", "error", "skipped")}
    if done.returncode == 5 or not cases:
        status = "failed"
    elif counts["failed"] or counts["error"]:
        status = "failed"
    elif counts["skipped"] == len(cases):
        status = "skipped"
    else:
        status = "ok"
    summary = [f"pytest -m gpu: {len(cases)} collected, {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, {counts['skipped']} skipped (exit {done.returncode})"]
    summary += [f"- {c['name']}: {c['outcome']}" + (f" ({c['message'][:160]})" if c["message"] else "") for c in cases]
    markdown = _table(["test", "outcome", "seconds", "message"], [[c["name"], c["outcome"], f"{c['seconds']:.1f}", c["message"][:200]] for c in cases])
    result = {"status": status, "summary": summary, "data": {"tests": cases, "exit_status": done.returncode}, "markdown": markdown, "log": done.stdout + done.stderr}
    if status == "failed":
        result["error"] = (done.stdout + done.stderr)[-4000:]
    return result


def _junit_cases(path: Path) -> list[dict]:
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (node.get("message") or node.text or "").strip().splitlines()[0] if (node.get("message") or node.text) else ""
                break
        cases.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message})
    return cases


# ---- 2. probe ----------------------------------------------------------------------------------


def stage_probe(options: dict) -> dict:
    """The start-up probe (fp8pipe/probe.py) at larger sizes: matmul rates, copy and PCIe bandwidths."""
    from ..probe import probe_device

    rates = probe_device(4096 if options.get("quick") else 8192, GIB)
    summary = [f"- {k}: {v}" for k, v in rates.items()]
    return {"status": "ok", "summary": summary, "data": rates, "markdown": _table(["measure", "value"], [[k, v] for k, v in rates.items()])}


# ---- 3. bench ----------------------------------------------------------------------------------


def stage_bench(options: dict) -> dict:
    """BF16 against FP8 per architecture at one size: eager and compiled without a cap, then the
    planner's placement under the cap (eager, then compiled), cases cut off at the stage budget."""
    import torch

    from ..bench import BenchOptions, Case, markdown_report, run_bench

    deadline = _deadline(options)
    quick = options.get("quick", False)
    archs, px = options.get("archs", ["medium", "large", "large-turbo"]), int(options.get("resolution", 1024))
    steps = 2 if quick else 4
    from ..bench.weights import resolve_arch

    def cases(placement: str, compiled: bool) -> list:
        return [Case(a, p, px, steps, resolve_arch(a).guidance, placement, compiled) for a in archs for p in ("bf16", "fp8")]

    bench_options = BenchOptions(device="cuda", t5="drop", repeats=1 if quick else 3, warmup=1, min_warmup_s=0 if quick else 2.0)
    uncapped = run_bench(cases("resident", False) + cases("resident", True), bench_options, None, True, options.get("command", ""), log=_log, deadline=deadline - 0.4 * float(options.get("budget_s", 510)))
    torch.cuda.empty_cache()
    cap = options.get("vram_cap")
    try:
        capped = run_bench(cases("planned", False) + cases("planned", True), bench_options, cap, False, options.get("command", ""), log=_log, deadline=deadline)
    except Exception as e:  # keep the uncapped rows
        capped = {**uncapped, "rows": [], "fidelity": [], "vram_limit": {"note": f"failed: {type(e).__name__}: {e}"[:300]}}
    summary = []
    for title, report in (("no cap", uncapped), (f"cap {_gib(cap)} GiB", capped)):
        for r in report["rows"]:
            line = f"- {title}: {r['model']} {r['precision']} {'compiled' if r['compile'] else 'eager'} {r.get('plan', {}).get('placement', r['placement'])}: {r['status']}"
            if r["status"] == "ok":
                line += f", step {r['step_time_s'] * 1000:.0f} ms, {r['achieved_tflops']:.0f} TFLOP/s, image {r['latency_s']:.2f} s, peak {_gib(r['peak_vram_allocated_bytes'])} GiB"
                ratio = r.get("fp8_vs_bf16") or {}
                if ratio.get("step_time_s"):
                    line += f", FP8/BF16 step {ratio['step_time_s']:.2f} peak {ratio['peak_memory_bytes']:.2f}"
            else:
                line += f" ({r.get('error', '')[:120]})"
            summary.append(line)
    failed = [r for rep in (uncapped, capped) for r in rep["rows"] if r["status"] == "error"]
    markdown = "## Without a cap\n\n" + markdown_report(uncapped) + f"\n## Under the cap ({_gib(cap)} GiB, planner placement)\n\n" + markdown_report(capped)
    return {"status": "failed" if failed else "ok", "summary": summary, "data": {"uncapped": uncapped, "capped": capped}, "markdown": markdown}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the service path (kiosk, planner, soak) ---------------------------------------------------


def _engine(budget: int, t5: str, warmup: bool = True, compile: bool = False):
    from ..engine import Engine
    from ..randomload import random_loader

    return Engine(device="cuda", vram_budget=budget, loader=random_loader, t5=t5, warmup=warmup, compile=compile)


def _cap(budget: int | None) -> dict:
    import torch

    from ..bench.measure import apply_vram_limit

    torch.cuda.empty_cache()
    if budget is None:
        torch.cuda.set_per_process_memory_fraction(1.0)
        return {"applied": False}
    return apply_vram_limit(budget, torch.device("cuda"))


def click(engine, preset, spec, prompt: str, seed: int, **fields) -> tuple[float, dict]:
    """What the app does on Create, minus HTTP: build the request within the preset, stream the
    job, wait for the image. Returns (click-to-image seconds, the result's stats)."""
    from .. import service
    from ..generation import Result

    start = time.perf_counter()
    request = service.build_request(preset, spec, prompt, None, seed=seed, **fields)
    result = None
    for item in service.stream_job(engine, request, preset.model, preset.precision, preview=preset.previews):
        if isinstance(item, Result):
            result = item
    return time.perf_counter() - start, result.stats


def _memory() -> dict:
    import torch

    return {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved()}


def stage_kiosk(options: dict) -> dict:
    """The kiosk preset under the cap: start-up (load + warm-up), the first click (cold) and
    warm clicks at the preset's size and at 1024/768/512 px, with the plan's predictions. The
    preset's image filter is not loaded here (its weights come from the hub): its time is not in
    these figures."""
    from ..presets import load_preset
    from ..projection import CARDS, project

    quick = options.get("quick", False)
    deadline = _deadline(options)
    preset = load_preset(options.get("kiosk_preset", "kiosk-8gb"))
    cap = options.get("vram_cap")
    cap_note = _cap(cap)
    engine = _engine(cap, preset.t5, compile=preset.compile)
    spec = engine.spec_for(preset.model)
    start = time.perf_counter()
    engine.start(models=[(preset.model, preset.precision)], request_fields=preset.defaults_for(spec))
    startup_s = time.perf_counter() - start
    rows = []
    chosen = preset.defaults_for(spec)["width"]  # the size the latency model chose for the preset
    sizes = list(dict.fromkeys([chosen, 1024, 768, 512])) if not quick else [chosen]
    try:
        for size in sizes:
            for i in range(1 if quick else (4 if size == sizes[0] else 3)):
                if time.perf_counter() > deadline:
                    break
                seconds, stats = click(engine, preset, spec, PROMPTS[i % len(PROMPTS)], seed=i, width=size, height=size)
                rows.append(
                    {
                        "size": size,
                        "kind": "cold" if not rows else "warm",
                        "click_to_image_s": round(seconds, 3),
                        "text_encode_s": stats.get("text_encode_s"),
                        "denoise_s": stats.get("denoise_s"),
                        "step_s": round(stats["denoise_s"] / stats["steps"], 4),
                        "decode_s": stats.get("decode_s"),
                        "peak_vram_bytes": stats.get("peak_vram_bytes"),
                        "plan": stats.get("plan"),
                        "fallback": stats.get("fallback"),
                        "h2d_bytes_per_step": (stats.get("h2d_streamed_bytes") or 0) // stats["steps"],  # the engine's count
                    }
                )
    finally:
        pool = engine.describe()["pool"]
        engine.close()
    h100_capped = dataclasses.replace(CARDS["H100 SXM"], name=f"H100 SXM capped to {_gib(cap)} GiB", vram_gib=(cap or 0) / GIB)
    fields = preset.defaults_for(spec)
    predicted = {s: project(spec, h100_capped, preset.precision, s, fields["steps"], fields["guidance"], preset.t5) for s in sizes}
    table = []
    for r in rows:
        p = predicted[r["size"]]
        table.append([r["size"], r["kind"], r["click_to_image_s"], r["text_encode_s"], r["step_s"], r["decode_s"], _gib(r["peak_vram_bytes"]),
                      _gib((r["plan"] or {}).get("predicted_peak_vram_bytes")), (r["plan"] or {}).get("placement"), f"{r['h2d_bytes_per_step'] / GIB:.2f}",
                      f"{p['step_floor_s']:.3f}", p["placement"]])  # fmt: skip
    headers = ["px", "click", "click-to-image s", "encode s", "step s", "decode s", "peak GiB", "predicted peak GiB", "placement", "H2D GiB/step", "projected step floor s", "projected placement"]
    warm = {s: [r["click_to_image_s"] for r in rows if r["size"] == s and r["kind"] == "warm"] for s in sizes}
    summary = [f"- engine start (load + warm-up) {startup_s:.1f} s; cap: {cap_note.get('note', 'none')}"]
    if rows:
        summary.append(f"- cold click at {rows[0]['size']} px: {rows[0]['click_to_image_s']:.2f} s (plan {(rows[0]['plan'] or {}).get('placement')})")
    summary += [f"- warm clicks at {s} px: median {statistics.median(v):.2f} s over {len(v)}" for s, v in warm.items() if v]
    data = {"preset": preset.name, "model": preset.model, "cap": cap_note, "startup_s": round(startup_s, 2), "clicks": rows, "pool": pool, "projection": predicted}
    return {"status": "ok" if rows else "failed", "summary": summary, "data": data, "markdown": _table(headers, table)}


# (model, precision, px, budget, T5 policy): three budgets. T5 is dropped, as on the kiosk: with
# "auto" the 8 GiB case put T5 on the host, and building and running random T5-XXL weights there
# took the whole stage on the H100 (bench/results/gpu-check/run2-tests-kiosk-planner-soak.log).
PLANNER_CASES = (
    ("sd3.5-medium", "fp8", 1024, 8 * GIB, "drop"),
    ("sd3.5-large", "fp8", 1024, 12 * GIB, "drop"),
    ("sd3.5-large", "bf16", 1024, 24 * GIB, "drop"),
)


def stage_planner(options: dict) -> dict:
    """For three budgets: the plan the engine chooses, its predicted peak VRAM, and the peak
    measured while it ran one image under a cap equal to the budget."""
    deadline = _deadline(options)
    rows = []
    for model, precision, px, budget, t5 in PLANNER_CASES[:1] if options.get("quick") else PLANNER_CASES:
        if time.perf_counter() > deadline:
            rows.append({"model": model, "precision": precision, "budget_bytes": budget, "status": "not run (stage time budget)"})
            continue
        import torch

        _cap(budget)
        torch.cuda.reset_peak_memory_stats()
        engine = _engine(budget, t5, warmup=False)
        try:
            request = engine.request(model, prompt=PROMPTS[0], seed=0, steps=2, width=px, height=px)
            result = engine.generate(request, model, precision)
            plan = result.stats["plan"]
            rows.append(
                {
                    "model": model, "precision": precision, "px": px, "budget_bytes": budget, "status": "ok",
                    "placement": plan["placement"], "t5": plan["t5"], "vae_tiling": plan["vae_tiling"],
                    "predicted_peak_vram_bytes": plan["predicted_peak_vram_bytes"],
                    "measured_peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                    "measured_peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                    "generation_peak_bytes": result.stats["peak_vram_bytes"], "fallback": result.stats.get("fallback"),
                    "latency_s": result.stats["latency_s"],
                }
            )  # fmt: skip
        except Exception as e:
            rows.append({"model": model, "precision": precision, "budget_bytes": budget, "status": f"error: {type(e).__name__}: {str(e)[:200]}"})
        finally:
            engine.close()
            _cap(None)
    table = [[r["model"], r["precision"], _gib(r["budget_bytes"]), r["status"], r.get("placement"), r.get("t5"), _gib(r.get("predicted_peak_vram_bytes")),
              _gib(r.get("measured_peak_allocated_bytes")), _gib(r.get("measured_peak_reserved_bytes")),
              f"{r['measured_peak_reserved_bytes'] / r['predicted_peak_vram_bytes']:.2f}" if r.get("predicted_peak_vram_bytes") else "n/a"] for r in rows]  # fmt: skip
    headers = ["model", "prec", "budget GiB", "status", "placement", "T5", "predicted peak GiB", "measured allocated GiB", "measured reserved GiB", "reserved / predicted"]
    summary = [f"- {r['model']} {r['precision']} at {_gib(r['budget_bytes'])} GiB: {r['status']}" + (f", {r['placement']} T5 {r['t5']}: predicted {_gib(r['predicted_peak_vram_bytes'])} GiB, measured {_gib(r['measured_peak_reserved_bytes'])} GiB reserved ({_gib(r['measured_peak_allocated_bytes'])} allocated)" if r["status"] == "ok" else "") for r in rows]
    ok = all(r["status"] == "ok" for r in rows)
    return {"status": "ok" if ok else "failed", "summary": summary, "data": {"cases": rows}, "markdown": _table(headers, table)}


def stage_soak(options: dict) -> dict:
    """Many requests through the service path under the cap (Medium FP8, T5 dropped, sizes
    alternating 512/768 so the allocator sees changing shapes): GPU memory before and after."""
    import torch

    from ..presets import load_preset

    deadline = _deadline(options)
    total = int(options.get("soak_requests", 200))
    preset = load_preset("kiosk-8gb")
    preset = dataclasses.replace(preset, model="sd3.5-medium", previews=False)
    cap = options.get("vram_cap")
    cap_note = _cap(cap)
    engine = _engine(cap, "drop")
    spec = engine.spec_for(preset.model)
    engine.start(models=[(preset.model, preset.precision)], request_fields={**preset.defaults_for(spec), "width": 512, "height": 512})
    torch.cuda.synchronize()
    before = _memory()
    timeline, latencies, errors = [], [], []
    try:
        for i in range(total):
            if time.perf_counter() > deadline:
                break
            size = 512 if i % 2 == 0 else 768
            try:
                seconds, _ = click(engine, preset, spec, PROMPTS[i % len(PROMPTS)], seed=i, width=size, height=size)
                latencies.append(seconds)
            except Exception as e:
                errors.append(f"request {i}: {type(e).__name__}: {str(e)[:160]}")
            if (i + 1) % 50 == 0:
                timeline.append({"requests": i + 1, **_memory()})
        torch.cuda.synchronize()
        after = _memory()
        loads = engine.load_count
    finally:
        engine.close()
    done = len(latencies) + len(errors)
    q = statistics.quantiles(latencies, n=20) if len(latencies) >= 20 else None
    summary = [
        f"- {done} of {total} requests ({len(errors)} errors), {loads} load(s); cap: {cap_note.get('note', 'none')}",
        f"- allocated before {_gib(before['allocated_bytes'])} GiB, after {_gib(after['allocated_bytes'])} GiB; reserved before {_gib(before['reserved_bytes'])} GiB, after {_gib(after['reserved_bytes'])} GiB",
    ]
    if latencies:
        summary.append(f"- click-to-image p50 {statistics.median(latencies):.3f} s" + (f", p95 {q[18]:.3f} s" if q else ""))
    rows = [["before", 0, _gib(before["allocated_bytes"]), _gib(before["reserved_bytes"])]]
    rows += [["during", t["requests"], _gib(t["allocated_bytes"]), _gib(t["reserved_bytes"])] for t in timeline]
    rows += [["after", done, _gib(after["allocated_bytes"]), _gib(after["reserved_bytes"])]]
    data = {"model": preset.model, "requests": total, "completed": done, "errors": errors, "loads": loads, "before": before, "after": after, "timeline": timeline,
            "p50_s": statistics.median(latencies) if latencies else None, "p95_s": q[18] if q else None, "cap": cap_note}  # fmt: skip
    status = "ok" if done == total and not errors and after["allocated_bytes"] <= before["allocated_bytes"] * 1.01 + 64 * 2**20 else "failed"
    return {"status": status, "summary": summary, "data": data, "markdown": _table(["when", "requests", "allocated GiB", "reserved GiB"], rows)}
