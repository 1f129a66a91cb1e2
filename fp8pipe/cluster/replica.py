"""The Ray Serve deployment: one warm engine per replica, one job at a time.

`EngineReplica(model, preset, ...)` loads and warms the preset's model when the replica
starts. `generate` is an async generator (call it through `handle.options(stream=True)`):
it yields `{"replica": id}` first, then each `Progress` (with its preview when asked), then
the `Result`. A client that cancels the stream (`response.cancel()`, or a dead connection)
cancels the engine's job at its next step, and the replica is free when the stream ends.
`check_health` fails when the engine's worker has stopped or a job has stalled, so Serve
replaces the replica.

`build_app(args)` is the application builder that `serve deploy` / `serve run` use
(deploy/serve.yaml), and `deploy()` what `python -m fp8pipe serve` and the tests call.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from ray import serve

from .options import APP_NAME, DEPLOYMENT_NAME, STALL_SECONDS, ServeOptions, deployment_options, wedged


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=1)
class EngineReplica:
    def __init__(
        self, model: str | None = None, preset: str = "cpu-demo", device: str = "auto", threads: int | None = 1, warmup: bool = True, stall_s: float = STALL_SECONDS, serving: dict | None = None
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        from ..cli import _quiet_libraries
        from ..engine import Engine
        from ..lora import LoraSpec
        from ..presets import load_preset

        _quiet_libraries()
        chosen = load_preset(preset)
        self.model, self.precision, self.stall_s = model or chosen.model, chosen.precision, stall_s
        self.serving = serving or {}  # the deployment's ServeOptions, for the front's concurrency
        loras = [LoraSpec(x.file, x.strength) for x in chosen.loras]
        self.engine = Engine(device=device, vram_budget=chosen.vram, warmup=warmup, t5=chosen.t5, compile=chosen.compile, loras=loras, lora_mode=chosen.lora_mode)
        self.engine.start(models=[(self.model, self.precision)])
        try:
            self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        except Exception:  # constructed outside Serve (a unit test)
            self.replica = "local"
        self.served = self.cancelled = 0
        self._running = False
        self._last_step = time.monotonic()

    def spec(self, model: str | None = None):
        """The ModelSpec that validates requests for `model` (the front builds requests with it)."""
        return self.engine.spec_for(model or self.model)

    def describe(self) -> dict:
        return {**self.engine.describe(), "replica": self.replica, "model": self.model, "precision": self.precision, "served": self.served, "cancelled": self.cancelled, "serving": self.serving}

    def _beat(self, _progress=None) -> None:
        self._last_step = time.monotonic()

    async def generate(self, request, model: str | None = None, precision: str | None = None, preview: bool = False, t5: str | None = None):
        """Stream {"replica": id}, each Progress, then the Result (see the module docstring)."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()

        def on_progress(progress) -> None:  # the engine's worker thread
            self._beat()
            loop.call_soon_threadsafe(updates.put_nowait, progress)

        job = self.engine.submit(request, model or self.model, precision or self.precision, on_progress=on_progress, preview=preview, t5=t5)
        done = asyncio.wrap_future(job.future)
        self._running = True
        self._beat()
        try:
            yield {"replica": self.replica}
            while not done.done():
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            while not updates.empty():
                yield updates.get_nowait()
            result = await done
            self.served += 1
            result.stats["replica"] = self.replica
            result.stats["replica_jobs"] = {"served": self.served, "cancelled": self.cancelled, "serving": self.serving}
            yield result
        finally:
            if not job.done():  # the client cancelled or went away: stop at the next step
                job.cancel()
                self.cancelled += 1
                try:
                    await asyncio.shield(done)
                except BaseException:  # Cancelled, as asked
                    pass
            self._running = False

    def check_health(self) -> None:
        problem = wedged(self.engine.worker_alive(), self._running, time.monotonic() - self._last_step, self.stall_s)
        if problem:
            raise RuntimeError(f"replica {self.replica}: {problem}")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close(timeout=5, cancel_running=True)


def application(options: ServeOptions, model: str | None = None, preset: str = "cpu-demo", device: str = "auto", warmup: bool = True):
    """The bound Serve application: `options` for the deployment, the rest for each replica."""
    return EngineReplica.options(**deployment_options(options)).bind(model, preset, device, options.threads, warmup, options.stall_s, asdict(options))


def build_app(args: dict):
    """Application builder for `serve deploy deploy/serve.yaml` (its `args:`): model, preset,
    device, replicas, min_replicas, max_replicas, target_ongoing_requests, max_queued_requests,
    threads, gpus."""
    args = dict(args or {})
    runtime = {k: args.pop(k) for k in ("model", "preset", "device", "warmup") if k in args}
    known = set(ServeOptions.__dataclass_fields__)
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown args {sorted(unknown)}; allowed: model, preset, device, warmup, {', '.join(sorted(known))}")
    return application(ServeOptions(**args), **runtime)


def deploy(options: ServeOptions, model: str | None = None, preset: str = "cpu-demo", device: str = "auto", warmup: bool = True, name: str = APP_NAME):
    """Deploy (or update) the application on the connected cluster; returns its handle once
    every replica is up and warm."""
    serve.start(proxy_location="Disabled")  # the front talks to handles; no HTTP proxy needed
    return serve.run(application(options, model, preset, device, warmup), name=name, route_prefix=None, blocking=False)
