"""Soak and load runs: many requests, then what memory and latency did.

- `python -m fp8pipe soak --requests 1000`: one engine in this process; every 10th job is
  cancelled mid-run and every 25th request is invalid, so the error paths run too. Resident
  memory (and GPU memory, on a GPU) is sampled after the warm-up and at the end.
- `python -m fp8pipe load --url URL --clients 50 --requests 20`: concurrent gradio_client
  clients against a running app; each request completes or gets the explicit queue-full
  error; none may hang.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

PROMPTS = ("a red circle", "a blue square on yellow", "two green triangles", "a white star at the top")
REQUEST_TIMEOUT_S = 600


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def run_soak(requests: int = 1000, warmup: int = 50, model: str = "demo", steps: int = 2, device: str = "auto") -> dict:
    """Run `requests` jobs through one engine; memory growth is measured from after `warmup`."""
    import psutil
    import torch

    from .engine import Cancelled, Engine
    from .requests import RequestError

    process = psutil.Process()
    engine = Engine(device=device).start(models=[(model, "fp8")])
    on_gpu = engine.device.type == "cuda"
    latencies, counts = [], {"ok": 0, "cancelled": 0, "invalid": 0, "failed": 0}
    rss_after_warmup = gpu_after_warmup = None
    rss_max = 0
    start = time.perf_counter()
    for i in range(requests):
        if i == warmup:
            rss_after_warmup = process.memory_info().rss
            gpu_after_warmup = torch.cuda.memory_allocated(engine.device) if on_gpu else None
        try:
            if i % 25 == 24:
                engine.request(model, prompt=PROMPTS[i % len(PROMPTS)], steps=0)  # invalid on purpose
            request = engine.request(model, prompt=PROMPTS[i % len(PROMPTS)], seed=i, steps=steps)
            submitted, handed_over = {}, threading.Event()

            def on_progress(progress, submitted=submitted, handed_over=handed_over, cancel_this=i % 10 == 9):
                if cancel_this and handed_over.wait(5):  # the worker may call before submit() returned
                    submitted["job"].cancel()  # takes effect at the next step boundary

            submitted["job"] = job = engine.submit(request, model=model, on_progress=on_progress)
            handed_over.set()
            result = job.result(timeout=REQUEST_TIMEOUT_S)
            latencies.append(result.stats["latency_s"])
            counts["ok"] += 1
        except RequestError:
            counts["invalid"] += 1
        except Cancelled:
            counts["cancelled"] += 1
        except Exception:  # counted, and the soak goes on: that is what it measures
            counts["failed"] += 1
        rss_max = max(rss_max, process.memory_info().rss)
    rss_end = process.memory_info().rss
    gpu_end = torch.cuda.memory_allocated(engine.device) if on_gpu else None
    engine.close()
    growth = (rss_end - rss_after_warmup) / rss_after_warmup if rss_after_warmup else None
    return {
        "requests": requests,
        "warmup": warmup,
        "model": model,
        "steps": steps,
        "device": str(engine.device),
        **counts,
        "duration_s": round(time.perf_counter() - start, 1),
        "latency_p50_s": _percentile(latencies, 0.5),
        "latency_p95_s": _percentile(latencies, 0.95),
        "rss_after_warmup_bytes": rss_after_warmup,
        "rss_end_bytes": rss_end,
        "rss_max_bytes": rss_max,
        "rss_growth_pct": round(100 * growth, 2) if growth is not None else None,
        "gpu_allocated_after_warmup_bytes": gpu_after_warmup,
        "gpu_allocated_end_bytes": gpu_end,
        "gpu_growth_pct": round(100 * (gpu_end - gpu_after_warmup) / gpu_after_warmup, 2) if gpu_after_warmup else None,
    }


def run_load(url: str, clients: int = 50, requests: int = 20, steps: int = 2) -> dict:
    """`clients` concurrent gradio_client clients, `requests` each; every outcome is counted."""
    from gradio_client import Client

    outcomes: list[tuple[str, float, str]] = []
    lock = threading.Lock()

    def visitor(index: int) -> None:
        client = Client(url, verbose=False)
        for j in range(requests):
            began = time.perf_counter()
            try:
                job = client.submit(prompt=PROMPTS[(index + j) % len(PROMPTS)], seed=index * 1000 + j, steps=steps, api_name="/generate")
                job.result(timeout=REQUEST_TIMEOUT_S)
                kind, detail = "ok", ""
            except TimeoutError:
                kind, detail = "hung", ""
            except Exception as e:
                detail = str(e)
                kind = "queue_full" if "queue is full" in detail.lower() else "error"
            with lock:
                outcomes.append((kind, time.perf_counter() - began, detail[:200]))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(visitor, range(clients)))
    ok = [t for kind, t, _ in outcomes if kind == "ok"]
    errors = sorted({d for kind, _, d in outcomes if kind == "error"})
    return {
        "url": url,
        "clients": clients,
        "requests_per_client": requests,
        "total": len(outcomes),
        "completed": len(ok),
        "queue_full": sum(kind == "queue_full" for kind, _, _ in outcomes),
        "hung": sum(kind == "hung" for kind, _, _ in outcomes),
        "errors": sum(kind == "error" for kind, _, _ in outcomes),
        "error_messages": errors[:10],
        "duration_s": round(time.perf_counter() - start, 1),
        "latency_p50_s": _percentile(ok, 0.5),
        "latency_p95_s": _percentile(ok, 0.95),
        "latency_mean_s": round(statistics.fmean(ok), 4) if ok else None,
    }


def _count(low: int, high: int):
    """An argparse type: a whole number from low to high, else argparse's usage error (exit 2)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}; got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}; got {value}")
        return value

    return parse


def add_soak_commands(subparsers) -> None:
    s = subparsers.add_parser("soak", help="many requests through one engine; memory growth after warm-up")
    s.add_argument("--requests", type=_count(1, 1_000_000), default=1000, help="how many requests in all, 1 to 1000000 (default 1000); every 10th is cancelled, every 25th invalid")
    s.add_argument("--warmup", type=_count(0, 1_000_000), default=50, help="requests before memory is first sampled, 0 to 1000000 (default 50)")
    s.add_argument("--model", default="demo", help="the model to serve (default demo)")
    s.add_argument("--steps", type=_count(1, 150), default=2, help="denoising steps per request, 1 to 150 (default 2)")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    s.add_argument("--out", default=None, help="also write the JSON here (default: print only)")
    s.set_defaults(func=lambda a: _report(run_soak(a.requests, a.warmup, a.model, a.steps, a.device), a.out))

    ld = subparsers.add_parser("load", help="concurrent gradio_client clients against a running app")
    ld.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:7860/")
    ld.add_argument("--clients", type=_count(1, 10_000), default=50, help="concurrent clients, 1 to 10000 (default 50)")
    ld.add_argument("--requests", type=_count(1, 1_000_000), default=20, help="requests per client, one after another, 1 to 1000000 (default 20)")
    ld.add_argument("--steps", type=_count(1, 150), default=2, help="denoising steps per request, 1 to 150 (default 2)")
    ld.add_argument("--out", default=None, help="also write the JSON here (default: print only)")
    ld.set_defaults(func=lambda a: _report(run_load(a.url, a.clients, a.requests, a.steps), a.out))


def run_facts(command: str | None = None) -> dict:
    """What a reader needs to rerun and compare: the command, the machine, the versions."""
    import platform
    import shlex
    import sys
    from datetime import datetime, timezone

    import diffusers
    import gradio
    import torch

    return {
        "command": command or "python -m fp8pipe " + shlex.join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "gradio": gradio.__version__, "python": platform.python_version()},
    }


def _report(result: dict, out: str | None) -> int:
    text = json.dumps({**run_facts(), **result}, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0
