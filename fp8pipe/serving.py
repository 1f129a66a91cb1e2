"""The one request path: plan -> pool (load or reuse) -> place -> run stages -> stats.

`serve_request` is what the app's events, the HTTP API, `python -m fp8pipe generate` and the
bench's served-path rows all call; `public_stats` is the one stats schema they all report.
Torch-free: the engine (any `fp8pipe.seam.GenerationService`) does the work.

Two ways to run, the same code in the engine:
- queued (default): the engine's worker thread runs the job, in arrival order;
- inline: the job runs in this process on a thread this call starts and joins, never on the
  engine's worker. That is the way inside a ZeroGPU call, whose forked child holds only the
  calling thread (the worker does not exist there), and it still streams progress.
  `engine.run()` is the plain blocking form, in the caller's own thread (the CLI, the bench).

Stats schema (`STATS_KEYS`, every key always present; None where it does not apply):
  latency_s        load (if any) + encode + denoise + decode, seconds
  queue_wait_s     seconds from submit to start
  load_s, loaded   seconds spent loading for this request (0.0 when the pool had it), whether it did
  text_encode_s, denoise_s, decode_s   stage timings, seconds
  decode_fallback  "tiled" when the decode was retried tiled after an out-of-memory, else None
  steps, seed, width, height, batch   what ran
  model, precision, fp8_path, device, attention, random_weights   what it ran on
  fp8_layer_paths  how many FP8 layers ran each path (scaled_mm, upcast, of which AdaLN weight-only)
  h2d_streamed_bytes   bytes the offload hooks copied host->device for this request (streamed
                   transformer blocks, counted each time one ran); 0 when everything is resident
  plan             placement, t5, vae_tiling, attention, predicted peaks, fits, level
  fallback         the out-of-memory step-down taken for this request, or None
  peak_memory_bytes, peak_memory_kind, peak_vram_bytes   measured peak
  parameters       the PNG's parameters text
  warning          for the demo model: prompt words it does not know; else None
  image_filter_s, image_filter_device   the image filter's time and device (None without a filter)
  lora_mode, loras the LoRA mode that ran (runtime, merge) and each LoRA's name, strength, layout, matches
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

from .seam import Progress, Result

STATS_KEYS = (
    "latency_s",
    "queue_wait_s",
    "load_s",
    "loaded",
    "text_encode_s",
    "denoise_s",
    "decode_s",
    "decode_fallback",
    "steps",
    "seed",
    "width",
    "height",
    "batch",
    "model",
    "precision",
    "fp8_path",
    "fp8_layer_paths",
    "device",
    "attention",
    "random_weights",
    "plan",
    "fallback",
    "peak_memory_bytes",
    "peak_memory_kind",
    "peak_vram_bytes",
    "h2d_streamed_bytes",
    "parameters",
    "warning",
    "image_filter_s",
    "image_filter_device",
    "lora_mode",
    "loras",
)


def serve_request(
    engine, request, model: str, precision: str, preview: bool = False, t5: str | None = None, inline: bool = False, heartbeat: float | None = None
) -> Iterator[Progress | Result | None]:
    """Run `request` on `engine` and yield each Progress, then the Result.

    Closing the generator early (a client that went away or cancelled) cancels the job at its
    next step, so it never blocks the next request. With `heartbeat`, None is also yielded
    after that many seconds without progress (waiting in the queue, a slow stage), so a web
    server (or ZeroGPU's child, which checks for a stop only between items) can close it."""
    updates: queue.Queue = queue.Queue()
    if inline:
        job = engine.prepare(request, model=model, precision=precision, on_progress=updates.put, preview=preview, t5=t5)
        runner = threading.Thread(target=_settle, args=(engine, job), name="fp8pipe-inline", daemon=True)
        runner.start()
    else:
        job, runner = engine.submit(request, model=model, precision=precision, on_progress=updates.put, preview=preview, t5=t5), None
    quiet_since = time.monotonic()
    try:
        while not job.done():
            try:
                yield updates.get(timeout=0.05)
                quiet_since = time.monotonic()
            except queue.Empty:
                if heartbeat is not None and time.monotonic() - quiet_since >= heartbeat:
                    quiet_since = time.monotonic()
                    yield None
        while not updates.empty():  # the last steps' progress, before the result
            yield updates.get_nowait()
        yield job.result()
    finally:
        if not job.done():
            job.cancel()
        if runner is not None:
            runner.join()  # the device is free when this call returns (it stops at the next step)


def _settle(engine, job) -> None:
    try:
        engine.run_job(job)
    except BaseException:  # the job's future holds it; result() raises it in the caller
        pass


def run_to_result(engine, request, model: str, precision: str, **kwargs) -> Result:
    """Drain `serve_request` to its Result (the CLI and the bench)."""
    result = None
    for item in serve_request(engine, request, model, precision, **kwargs):  # a module global: a patch is seen
        if isinstance(item, Result):
            result = item
    return result


def public_stats(result: Result, extra: dict | None = None) -> dict:
    """The one stats schema (see the module docstring): every key of STATS_KEYS, in that order."""
    from .vocabulary import unknown_words_warning

    stats = result.stats
    warning = unknown_words_warning(result.request.prompt) if stats.get("model") == "demo" else None
    merged = {**stats, "parameters": result.parameters, "warning": warning}
    out = {key: merged.get(key) for key in STATS_KEYS}
    return {**out, **(extra or {})}
