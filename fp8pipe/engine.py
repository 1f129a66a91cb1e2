"""The warm engine: a pool of loaded pipelines and one worker that runs requests in order.

- Start-up loads the named pipelines and runs one uncounted warm-up generation each (and
  `torch.compile`, when asked) before `ready` is set.
- The pool is keyed by (model, precision, placement, T5 placement), bounded by the VRAM and
  host RAM budgets the planner predicts; the least recently used pipeline leaves first.
- One GPU job at a time, in arrival order: a single worker thread reads a FIFO queue;
  `submit()` returns a `Job` at once (a Future with cancel and progress). `run()` (or
  `prepare()` + `run_job()`) runs a job inline in the caller's thread instead, through the
  same code: for a process with no worker thread (a ZeroGPU call's forked child), the CLI and
  the bench. The engine satisfies `fp8pipe.seam.GenerationService`.
- Every step calls back with the step number and, when asked, a cheap preview: a fixed
  linear map from the 16 latent channels to RGB.
- Cancel takes effect between steps (diffusers' `pipe._interrupt`: the remaining steps are
  skipped and the decode never runs).
- Out of memory: the pipeline that failed is dropped whole (never reused half-moved), memory
  is freed, the plan steps down one rung, and the request is retried once; the step-down
  sticks for later requests and is reported in the stats.

The engine is the only object with state here; the work itself is plain functions.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch

from . import memory
from .fp8 import path_counts as fp8_path_counts
from .generation import free_memory, parameters_text, peak_memory_bytes, rounded, run_stages
from .loader import LoadedModel, load_model, resolve_device
from .memory import Plan, Workload
from .previews import latent_preview
from .requests import GenerationRequest
from .seam import Cancelled, EngineClosed, OutOfMemory, Progress, QueueFull, Result
from .specs import SPECS, ModelSpec, find_spec

log = logging.getLogger(__name__)

STAGES = ("load", "encode", "denoise", "decode")
WARMUP_STEPS = 2
WARMUP_PROMPT = "a warm-up image"

_DEVICE_FAILURES = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error", "illegal memory access")


def proves_broken(error: BaseException) -> bool:
    """True when `error` says the device (and so the pipeline's state on it) failed, not the request."""
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return any(marker in str(error) for marker in _DEVICE_FAILURES)


@dataclass(frozen=True)
class PoolKey:
    model: str
    precision: str
    placement: str
    t5: str


@dataclass
class Entry:
    """One warm pipeline in the pool and the plan it was built for."""

    key: PoolKey
    loaded: LoadedModel
    plan: Plan
    applied: dict
    vram_bytes: int  # what it keeps on the GPU between requests
    host_bytes: int
    uses: int = 0
    streamed: memory.StreamCounter | None = None  # host->device bytes of streamed blocks
    lora_set: object = None  # fp8pipe.lora.LoraSet when LoRAs may be used with this pipeline


class Job:
    """One submitted request: a Future for its Result, its progress, and cancel()."""

    def __init__(self, job_id: int, request: GenerationRequest, model: str, precision: str, on_progress, preview: bool, t5: str | None = None):
        self.id = job_id
        self.request, self.model, self.precision, self.t5 = request, model, precision, t5
        self.on_progress: Callable[[Progress], None] | None = on_progress
        self.preview = preview
        self.future: Future = Future()
        self.submitted = time.perf_counter()
        self.step = 0
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop at the next step boundary (or before starting); result() then raises Cancelled."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def result(self, timeout: float | None = None) -> Result:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()

    @property
    def progress(self) -> Progress:
        """Steps done so far (no preview)."""
        return Progress(self.step, self.request.steps)


def _plan_summary(plan: Plan) -> dict:
    keys = ("placement", "resident_blocks", "t5", "vae_tiling", "attention", "predicted_peak_vram_bytes", "predicted_peak_host_bytes", "fits", "level")
    keys += ("execution", "card", "predicted_latency_s", "floor_latency_s", "streamed_bytes_per_step")
    d = plan.as_dict()
    return {k: d[k] for k in keys}


class Engine:
    """Warm pipelines, one worker, requests in arrival order. See the module docstring."""

    def __init__(
        self,
        device: str = "auto",
        vram_budget: int | str | None = None,
        host_budget: int | str | None = None,
        warmup: bool = True,
        compile: bool = False,
        fp8_path: str = "auto",
        loader: Callable[..., LoadedModel] = load_model,
        t5: str = "auto",
        max_queue: int = 64,
        loras: tuple = (),
        lora_mode: str = "runtime",
        lora_library=None,
        lora_budget: int | str = "256MiB",
    ):
        self.device = resolve_device(device)
        if vram_budget is not None:
            self.vram_budget = memory.parse_size(vram_budget)
        else:
            self.vram_budget = memory.free_vram_bytes(str(self.device)) if self.device.type == "cuda" else 0
        self.host_budget = memory.parse_size(host_budget) if host_budget is not None else memory.host_ram_bytes()
        self.warmup, self.compile, self.fp8_path = warmup, compile, fp8_path
        self.t5_policy = t5  # "auto": the planner steps T5 down; or hold it to one mode ("drop" for speed)
        self.loader = loader
        self.loras, self.lora_mode = tuple(loras), lora_mode  # LoRAs (lora.LoraSpec) on every pipeline loaded
        self.lora_library = lora_library  # fp8pipe.lora_library.LoraLibrary: the folder per-request LoRAs are named in, or None
        self.lora_budget = memory.parse_size(lora_budget)  # runtime bytes one request's LoRAs may take
        self.lora_modes: dict[tuple[str, str], tuple[str, str]] = {}  # (model, precision) -> (LoRA mode, why)
        self.attention = memory.choose_attention(str(self.device))
        # Test hook: called with the stage name ("load", "encode", "denoise", "decode") as each
        # stage starts; raising torch.OutOfMemoryError there exercises the fallback.
        self.fault_hook: Callable[[str], None] | None = None
        self.load_count = 0
        self.compile_error: str | None = None  # why compiling failed once: the engine then runs eager
        self.events: list[dict] = []  # loads, evictions, step-downs, in order
        self.ready = threading.Event()
        self._pool: OrderedDict[PoolKey, Entry] = OrderedDict()  # least recently used first
        self._plans: dict[tuple[str, str, str], Plan] = {}  # (model, precision, T5 policy): sticky after a step-down
        self.max_queue = max_queue  # waiting jobs beyond this are refused (a public Space must not pile up)
        self._queue: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards submit/close
        self._gpu = threading.Lock()  # one job, load or warm-up on the device at a time
        self._worker: threading.Thread | None = None
        self._running: Job | None = None  # the job on the device now
        self._closed = False

    # ---- life cycle ----

    def start(self, models=(("demo", "fp8"),), request_fields: dict | None = None) -> Engine:
        """Load `models` [(model, precision)], warm each up, start the worker, then set `ready`."""
        with self._gpu:
            self._load_and_warm(models, request_fields)
        self._start_worker()
        self.ready.set()
        return self

    def _load_and_warm(self, models, request_fields: dict | None) -> None:
        for model, precision in models:
            spec = self.spec_for(model)
            request = GenerationRequest.create(spec, prompt=WARMUP_PROMPT, seed=0, **(request_fields or {}))
            for attempt in (1, 2):
                entry = None
                try:
                    entry = self._entry(model, precision, request)
                    if self.warmup:
                        self._warm(entry, replace(request, steps=min(WARMUP_STEPS, request.steps)))
                    break
                except torch.OutOfMemoryError as e:
                    if attempt == 2:
                        raise OutOfMemory(f"out of memory warming up {model} ({precision}) even after stepping down") from e
                    self._step_down(model, precision, entry, "warmup", e)

    def close(self, timeout: float | None = 30, cancel_running: bool = False) -> bool:
        """Finish the running job (or, with `cancel_running`, stop it at its next step), fail the
        queued ones with EngineClosed, free the pool. Returns True when the worker has stopped."""
        with self._lock:
            self._closed = True
            self._queue.put(None)
        running = self._running
        if cancel_running and running is not None:
            running.cancel()
        if self._worker is not None:
            self._worker.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.future.done():
                job.future.set_exception(EngineClosed("the engine was closed before this job ran"))
        stopped = self._worker is None or not self._worker.is_alive()
        if stopped:
            for key in list(self._pool):
                self._evict(key, "closed")
        return stopped

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="fp8pipe-engine", daemon=True)
            self._worker.start()

    # ---- requests ----

    def spec_for(self, model: str) -> ModelSpec:
        """The spec that validates requests for `model` (a known family, or a loaded one's)."""
        known = find_spec(model)
        if known is not None:
            return known
        for entry in list(self._pool.values()):
            if entry.key.model == model:
                return entry.loaded.spec
        return SPECS["sd3.5-medium"]  # until loaded: the widest limits of the SD3.5 family

    def request(self, model: str = "demo", **fields) -> GenerationRequest:
        """A validated GenerationRequest for `model` (fields as GenerationRequest.create takes)."""
        return GenerationRequest.create(self.spec_for(model), **fields)

    def submit(
        self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", on_progress=None, preview: bool = False, t5: str | None = None
    ) -> Job:
        """Queue `request`; returns its Job at once. Jobs run one at a time, first come first served.

        `t5` holds T5 to one mode for this job (16bit, fp8, cpu, drop); None: the engine's policy."""
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFull(f"{self._queue.qsize()} jobs are already waiting (at most {self.max_queue}); try again shortly")
            job = Job(next(self._ids), request, model, precision, on_progress, preview, t5)
            self._start_worker()
            self._queue.put(job)
        return job

    def prepare(
        self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", on_progress=None, preview: bool = False, t5: str | None = None
    ) -> Job:
        """A Job for `run_job`: not queued. Its `cancel()` works from any thread."""
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is closed")
            return Job(next(self._ids), request, model, precision, on_progress, preview, t5)

    def run_job(self, job: Job) -> Result:
        """Run a prepared job inline, in the caller's thread, with everything a queued job gets
        (pool, plan, progress, previews, cancel between steps, the out-of-memory step-down).
        Jobs from the queue and inline ones take turns on the device. This is the path for a
        process that has no worker thread, such as a ZeroGPU call's forked child."""
        self._execute(job)
        return job.result()

    def run(self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", on_progress=None, preview: bool = False, t5: str | None = None) -> Result:
        """`request` inline, in the caller's thread (see run_job)."""
        return self.run_job(self.prepare(request, model, precision, on_progress, preview, t5))

    def generate(self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", **kwargs) -> Result:
        return self.submit(request, model, precision, **kwargs).result()

    def worker_alive(self) -> bool:
        """True while the worker thread that runs queued jobs is alive (a replica's health check)."""
        return self._worker is not None and self._worker.is_alive()

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "vram_budget_bytes": self.vram_budget,
            "host_budget_bytes": self.host_budget,
            "attention": self.attention,
            "ready": self.ready.is_set(),
            "loads": self.load_count,
            "queued": self._queue.qsize(),
            "pool": [{**vars(e.key), "plan": _plan_summary(e.plan), "uses": e.uses} for e in list(self._pool.values())],
        }

    # ---- the worker ----

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._execute(job)

    def _execute(self, job: Job) -> None:
        """Run `job` in this thread (the worker's, or an inline caller's) and settle its future."""
        if job.cancelled:
            job.future.set_exception(Cancelled("cancelled before it started"))
            return
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            with self._gpu:
                self._running = job
                result = self._run(job)
            job.future.set_result(result)
        except BaseException as e:  # the worker must outlive any one job
            job.future.set_exception(e)
        finally:
            self._running = None

    def _run(self, job: Job) -> Result:
        started = time.perf_counter()
        stats: dict = {"queue_wait_s": round(started - job.submitted, 4), "fallback": None}
        stage = {"name": "load"}
        for attempt in (1, 2):
            entry = None
            stage["name"] = "load"
            try:
                load_start = time.perf_counter()
                entry, loaded_now = self._entry_for_job(job)
                lora_stats, lora_specs = self._apply_loras(entry, job.request)
                stats["load_s"] = round(time.perf_counter() - load_start, 4) if loaded_now else 0.0
                stats["loaded"] = loaded_now
                images, timings = self._generate(entry, job, stage)
                break
            except torch.OutOfMemoryError as e:
                if attempt == 2:
                    raise OutOfMemory(
                        f"out of memory in {stage['name']} again after stepping down from {stats['fallback']['from']['placement']} "
                        f"to {stats['fallback']['to']['placement']}; try a smaller image or batch, or free GPU memory other programs hold"
                    ) from e
                stats["fallback"] = self._step_down(job.model, job.precision, entry, stage["name"], e, job.t5)
        loaded = entry.loaded
        peak, peak_kind = peak_memory_bytes(self.device)
        stats.update(rounded(timings))
        stats.update(
            {
                "latency_s": round(time.perf_counter() - started, 4),  # load (if any) + encode + denoise + decode
                "steps": job.request.steps,
                "seed": job.request.seed,
                "width": job.request.width,
                "height": job.request.height,
                "batch": job.request.batch,
                "model": loaded.display_name,
                "precision": loaded.options.precision,
                "fp8_path": loaded.fp8_path,
                "fp8_layer_paths": fp8_path_counts(loaded.pipe.transformer) if loaded.options.precision == "fp8" else None,
                "device": str(self.device),
                "peak_memory_bytes": peak,
                "peak_memory_kind": peak_kind,
                "peak_vram_bytes": peak if self.device.type == "cuda" else None,
                "h2d_streamed_bytes": entry.streamed.bytes if entry.streamed is not None else 0,
                "plan": _plan_summary(entry.plan),
                "attention": entry.applied.get("attention"),
                "random_weights": loaded.random_weights,
            }
        )
        parameters = parameters_text(loaded, job.request)
        stats.update(lora_stats)
        if lora_specs:
            from .lora import png_loras
            from .metadata import add_loras

            parameters = add_loras(parameters, png_loras(lora_specs))
        return Result(image=images[0], request=job.request, parameters=parameters, stats=stats, images=images)

    def _apply_loras(self, entry: Entry, request: GenerationRequest) -> tuple[dict, list]:
        """The fixed LoRAs and the request's own on `entry`'s pipeline (no reload: runtime strengths
        switch, merged weights are redone); ({lora_mode, loras} stats, the LoraSpecs used)."""
        if entry.lora_set is None:
            if request.loras:
                from .requests import RequestError

                raise RequestError("loras", "this server takes no LoRAs per request (start it with --lora-dir)")
            return {"lora_mode": None, "loras": []}, []
        from .lora import apply_for_request

        mode = self.lora_modes[(entry.key.model, entry.key.precision)][0]  # chosen by _lora_plan
        budget = self.lora_budget if mode == "runtime" else None  # merged LoRAs take no memory beside the weights
        return apply_for_request(entry.lora_set, self.loras, self.lora_library, request.loras, mode, budget)

    def _generate(self, entry: Entry, job: Job, stage: dict) -> tuple[list, dict]:
        def enter(name: str) -> None:
            stage["name"] = name
            if job.cancelled:
                raise Cancelled(f"cancelled before {name}")
            if self.fault_hook is not None:
                self.fault_hook(name)

        def on_step(pipe, i, t, latents) -> None:
            job.step = i + 1
            if job.on_progress is not None:
                try:
                    job.on_progress(Progress(i + 1, job.request.steps, latent_preview(latents) if job.preview else None))
                except Exception:  # a broken progress display must not fail the image
                    log.exception("progress callback failed")
            if job.cancelled:
                pipe._interrupt = True  # diffusers skips the remaining steps

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        entry.uses += 1
        if entry.streamed is not None:
            entry.streamed.bytes = 0
        try:
            images, timings = run_stages(entry.loaded, job.request, on_step, enter)
        except (Cancelled, torch.OutOfMemoryError):
            raise
        except Exception as e:
            # Only a failure that proves the pipeline broken (the device itself failed) drops it;
            # anything else (an input the tokenizer cannot read, a bug in one request) keeps the
            # warm pipeline, so one odd request cannot make the next visitor wait for a reload.
            if proves_broken(e):
                self._evict(entry.key, "failed")
            raise
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return images, timings

    def _step_down(self, model: str, precision: str, entry: Entry | None, stage: str, error: BaseException, t5: str | None = None) -> dict:
        """After an out-of-memory: drop the pipeline whole, free memory, make the next rung
        the plan for (model, precision). Returns the report; raises OutOfMemory at the bottom."""
        failed = self._plans.get((model, precision, t5 or self.t5_policy))
        if entry is not None:
            self._evict(entry.key, "out of memory")  # never reuse a pipeline that failed mid-move
        free_memory(self.device)
        lower = memory.next_plan(failed, self.spec_for(model), card=self._card()) if failed is not None else None
        if lower is None:
            raise OutOfMemory(
                f"out of memory in {stage} on the lowest plan ({failed.placement if failed else 'unplanned'}); "
                "try a smaller image or batch, or free GPU memory other programs hold"
            ) from error
        self._plans[(model, precision, t5 or self.t5_policy)] = lower
        report = {"stage": stage, "from": _plan_summary(failed), "to": _plan_summary(lower), "error": str(error)[:200]}
        self.events.append({"event": "step_down", "model": model, "precision": precision, **report})
        log.warning("out of memory in %s: stepping down from %s (T5 %s) to %s (T5 %s)", stage, failed.placement, failed.t5, lower.placement, lower.t5)
        return report

    # ---- the pool ----

    def _entry_for_job(self, job: Job) -> tuple[Entry, bool]:
        loads = self.load_count
        entry = self._entry(job.model, job.precision, job.request, job.t5)
        return entry, self.load_count > loads

    @property
    def compiles(self) -> bool:
        """Whether this engine compiles resident transformers: asked for, on a GPU, with a warm-up
        to compile in before the first visitor, and not failed before."""
        return self.compile and self.warmup and self.device.type == "cuda" and self.compile_error is None

    def _card(self):
        """This GPU as the start-up probe measured it (cached per device), else the named card it is,
        for the latency the planner ranks by (None: the default)."""
        from .cards import card_for_device_name
        from .probe import probed_card

        if self.device.type != "cuda":
            return None
        return probed_card(str(self.device)) or card_for_device_name(torch.cuda.get_device_name(self.device))

    def _plan_for(self, model: str, precision: str, spec: ModelSpec, request: GenerationRequest, t5: str | None = None, lora_bytes: int | None = None) -> Plan:
        if lora_bytes is None:
            lora_bytes = self._lora_plan(model, precision, spec, request, t5)
        work = Workload(request.width, request.height, request.batch, request.guidance > 1.0, lora_bytes=lora_bytes)
        t5 = t5 or self.t5_policy
        sticky = self._plans.get((model, precision, t5))
        if spec.name not in SPECS:  # a custom family: sizes unknown, everything resident
            return sticky or _unplanned(spec, precision, work, self.attention)
        if self.device.type != "cuda" and self.vram_budget:
            # A budget given on a CPU: the plan a GPU of that size would run, computed and reported
            # (the same plan the app or the CLI chooses there); every component stays in host RAM.
            plan = memory.plan_placement(spec, self.vram_budget, self.host_budget, work, precision, self.attention, t5)
            if sticky is not None and sticky.level > plan.level:
                plan = sticky
            plan = replace(plan, reasons=(*plan.reasons, "CPU device: planned for this VRAM budget; every component stays in host RAM"))
            self._plans[(model, precision, t5)] = plan
            return plan
        if self.device.type != "cuda":  # no VRAM to plan for: the fastest rung, or the sticky one
            ladder = memory.plan_ladder(spec, self.host_budget, self.host_budget, work, precision, self.attention, t5)
            plan = next(p for p in ladder if p.level >= (sticky.level if sticky else 0))
            plan = replace(plan, reasons=("CPU device: every component in host RAM",))
            self._plans[(model, precision, t5)] = plan
            return plan
        budget = self.vram_budget
        plan = memory.plan_as_run(spec, budget, self.host_budget, work, precision, self.attention, t5, self._card(), self.compiles)
        if sticky is not None and sticky.level > plan.level:
            # Stepped down after an out-of-memory: stay at least that low, at this request's size (eager).
            ladder = memory.plan_ladder(spec, budget, self.host_budget, work, precision, self.attention, t5, self._card())
            plan = next((p for p in ladder if p.level >= sticky.level and p.fits), ladder[-1])
            plan = replace(plan, reasons=(f"kept at or below {sticky.placement} (T5 {sticky.t5}) after an out-of-memory", *plan.reasons))
        self._plans[(model, precision, t5)] = plan
        return plan

    def _lora_plan(self, model: str, precision: str, spec: ModelSpec, request: GenerationRequest, t5: str | None) -> int:
        """The runtime LoRA bytes this (model, precision)'s plans count: the LoRA mode is chosen
        once, on its first plan (fp8pipe.lora_plan.choose_lora_mode), and kept in `lora_modes`."""
        if not self.loras and self.lora_library is None:
            return 0
        key = (model, precision)
        if key not in self.lora_modes:
            from .lora_plan import choose_lora_mode

            reserve = self.lora_reserve_bytes()
            runtime = merged = None
            if self.lora_mode == "auto" and spec.name in SPECS:
                sticky_key = (model, precision, t5 or self.t5_policy)
                before = self._plans.get(sticky_key)
                merged = self._plan_for(model, precision, spec, request, t5, 0)
                runtime = self._plan_for(model, precision, spec, request, t5, reserve)
                self._plans.pop(sticky_key, None)  # these two were trials: neither is a step-down to keep
                if before is not None:
                    self._plans[sticky_key] = before
            self.lora_modes[key] = choose_lora_mode(self.lora_mode, self.lora_library is not None, runtime, merged)
            self.events.append({"event": "lora_mode", "model": model, "precision": precision, "mode": self.lora_modes[key][0], "why": self.lora_modes[key][1]})
        return self.lora_reserve_bytes() if self.lora_modes[key][0] == "runtime" else 0

    def lora_reserve_bytes(self) -> int:
        """Runtime LoRA weights to plan for: the fixed LoRAs', and with a LoRA folder the largest
        set one request may pick from it now (at most the per-request budget)."""
        from .lora_library import MAX_REQUEST_LORAS, runtime_bytes

        fixed = sum(runtime_bytes(s.path) for s in self.loras)
        if self.lora_library is None:
            return fixed
        largest = sorted((runtime_bytes(p) for p in self.lora_library.files().values()), reverse=True)[:MAX_REQUEST_LORAS]
        return fixed + min(self.lora_budget, sum(largest))

    def _entry(self, model: str, precision: str, request: GenerationRequest, t5: str | None = None) -> Entry:
        spec = self.spec_for(model)
        plan = self._plan_for(model, precision, spec, request, t5)
        placement = f"partial:{plan.resident_blocks}" if plan.placement == "partial" else plan.placement  # hooks differ by k
        key = PoolKey(model, precision, placement, plan.t5)
        entry = self._pool.get(key)
        if entry is not None and entry.plan.vae_tiling == plan.vae_tiling:
            self._pool.move_to_end(key)
            return entry
        if entry is not None:  # same placement, different tiling: adjust in place
            entry.applied.update(memory.apply_plan_tiling(entry.loaded, plan))
            entry.plan = plan
            self._pool.move_to_end(key)
            return entry
        self._make_room(plan)
        if self.fault_hook is not None:
            self.fault_hook("load")
        options = memory.load_options_for(plan, str(self.device), self.fp8_path)
        loaded = self.loader(model, options)
        self.load_count += 1
        try:
            lora_set, lora_applied = None, None
            if self.loras or self.lora_library is not None:
                from .lora import LoraSet

                lora_set = LoraSet(loaded.pipe)
                mode = self.lora_modes[(model, precision)][0]  # chosen by _lora_plan when the plan was made
                # Before the plan's offload hooks, which hold the weights they are given: merged once, here.
                lora_applied = lora_set.apply(list(self.loras), mode)
            applied = memory.apply_plan(loaded, plan)
            if lora_applied is not None:
                applied["loras"] = lora_applied
        except BaseException:
            del loaded
            free_memory(self.device)
            raise
        terms = plan.breakdown
        on_gpu = self.device.type == "cuda"
        entry = Entry(
            key=key,
            loaded=loaded,
            plan=plan,
            applied=applied,
            vram_bytes=terms.get("vram_between_requests", 0) if on_gpu else 0,
            host_bytes=terms.get("host_weights", 0) if on_gpu else terms.get("weights_on_gpu", 0),
            streamed=memory.count_streamed_bytes(loaded.pipe.transformer) if plan.placement in ("partial", "group_offload") and on_gpu else None,
            lora_set=lora_set,
        )
        if plan.execution == "compiled" and on_gpu and plan.placement == "resident":
            from .compiling import compile_transformer_

            applied["compiled"] = compile_transformer_(loaded.pipe.transformer)  # the blocks, regionally
        self._pool[key] = entry
        self.events.append({"event": "load", "key": vars(key), "plan": _plan_summary(plan), "load_s": round(loaded.load_seconds, 3)})
        return entry

    def _make_room(self, plan: Plan) -> None:
        """Evict least recently used pipelines until `plan` fits beside the rest."""
        on_gpu = self.device.type == "cuda"
        need_host = plan.breakdown.get("host_weights", 0) if on_gpu else plan.breakdown.get("weights_on_gpu", 0)  # {} if unplanned
        while self._pool:
            vram = sum(e.vram_bytes for e in self._pool.values())
            host = sum(e.host_bytes for e in self._pool.values())
            vram_fits = not on_gpu or vram + plan.predicted_peak_vram_bytes <= self.vram_budget  # on the CPU nothing is in VRAM
            if vram_fits and host + need_host <= self.host_budget:
                return
            self._evict(next(iter(self._pool)), "budget")

    def _evict(self, key: PoolKey, why: str) -> None:
        entry = self._pool.pop(key, None)
        if entry is None:
            return
        self.events.append({"event": "evict", "key": vars(key), "why": why})
        pipe = entry.loaded.pipe
        try:
            pipe.remove_all_hooks()
        except Exception:  # hooks are gone with the pipeline anyway
            pass
        del entry, pipe
        free_memory(self.device)

    def _fall_back_to_eager(self, entry: Entry, request: GenerationRequest, error: BaseException) -> None:
        """Compiling failed (no Triton, an unsupported GPU, ...): run this pipeline eager, plan every
        later one eager, and say so in the plan's reasons and the events."""
        from .compiling import uncompile_transformer_

        uncompile_transformer_(entry.loaded.pipe.transformer)
        self.compile_error = f"{type(error).__name__}: {str(error)[:200]}"
        log.warning("torch.compile failed (%s); running eager", self.compile_error)
        key, plan = entry.key, entry.plan
        eager = memory.as_eager(plan, self.spec_for(key.model), self._card())
        entry.plan = replace(eager, reasons=(*plan.reasons, f"eager: compiling failed ({self.compile_error})"))
        entry.applied["compiled"] = False
        entry.applied["compile_error"] = self.compile_error
        self.events.append({"event": "compile_failed", "key": vars(key), "error": self.compile_error})

    def _warm(self, entry: Entry, request: GenerationRequest) -> None:
        """One uncounted generation, so the first visitor does not pay for lazy initialisation
        (kernel selection, allocator growth, compile)."""
        start = time.perf_counter()
        try:
            run_stages(entry.loaded, request)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            if not entry.applied.get("compiled"):
                raise
            self._fall_back_to_eager(entry, request, e)
            run_stages(entry.loaded, request)
        entry.applied["warmup_s"] = round(time.perf_counter() - start, 3)
        self.events.append({"event": "warmup", "key": vars(entry.key), "seconds": entry.applied["warmup_s"]})


def _unplanned(spec: ModelSpec, precision: str, work: Workload, attention: str) -> Plan:
    return Plan(
        model=spec.name,
        precision=precision,
        placement="resident",
        t5="16bit",
        vae_tiling=False,
        attention=attention,
        predicted_peak_vram_bytes=0,
        predicted_peak_host_bytes=0,
        vram_budget_bytes=0,
        host_budget_bytes=0,
        width=work.width,
        height=work.height,
        batch=work.batch,
        guidance=work.guidance,
        fits=True,
        reasons=(f"{spec.name}: not a known family, so not planned; everything resident",),
    )
