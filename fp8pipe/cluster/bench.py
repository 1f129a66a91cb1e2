"""Throughput of the Ray Serve replicas: images/s and p50/p95 latency per replica count.

One run, one local cluster: for each replica count the deployment is (re)deployed, warmed up
(two uncounted images per replica), then `clients` threads send `images` requests through the
app's one request path (fp8pipe.serving over a RayBackend) as fast as they come back. Latency
is per request at the client (queue wait included). Written as JSON (a `rows` list) and a
markdown twin, with the command, versions and machine. Not a test: nothing is asserted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def drive(backend, make_request, model: str, precision: str, clients: int, images: int) -> dict:
    """Send `images` requests from `clients` threads; returns images/s, p50/p95 and the replicas used."""
    from ..serving import run_to_result

    tickets = iter(range(images))
    lock = threading.Lock()
    latencies: list[float] = []
    on_replica: list[float] = []  # the engine's own latency_s: a replica's time per image, without the wait
    replicas: dict[str, int] = {}
    errors: list[str] = []

    def client() -> None:
        while True:
            with lock:
                seed = next(tickets, None)
            if seed is None:
                return
            start = time.perf_counter()
            try:
                result = run_to_result(backend, make_request(seed), model, precision)
            except Exception as e:  # counted, reported, not fatal to the run
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                on_replica.append(result.stats["latency_s"])
                name = str(result.stats.get("replica"))
                replicas[name] = replicas.get(name, 0) + 1

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(clients)]
    cpu_before = time.process_time()
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    front_cpu = time.process_time() - cpu_before
    return {
        "images": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "images_per_s": round(len(latencies) / wall, 3),
        "p50_s": round(percentile(latencies, 0.5), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "mean_s": round(statistics.fmean(latencies), 3),
        "replica_p50_s": round(percentile(on_replica, 0.5), 3),  # rises when the replicas compete for cores
        "per_replica_images": sorted(replicas.values(), reverse=True),
        "front_cpu_s": round(front_cpu, 3),  # CPU time this process (clients, handle, router) spent: taken from the replicas' cores
    }


def _versions() -> dict:
    import diffusers
    import ray
    import torch

    return {"ray": ray.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def _machine() -> dict:
    from ..bench.measure import _cpu_name

    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "niceness": os.nice(0),  # run under `nice -n 10` beside other programs
    }


def run_bench(
    counts: list[int], clients: int = 8, images: int = 48, model: str = "demo", preset: str = "cpu-demo", threads: int = 1, out: str = "bench/results/serve-cpu", size: int | None = None, steps: int | None = None
) -> int:
    from ..presets import load_preset
    from ..service import build_request
    from ..specs import find_spec
    from .backend import RayBackend, quiet_ray_environment

    quiet_ray_environment()  # before Ray is imported
    from .options import ServeOptions
    from .replica import deploy

    if not counts or min(counts) < 1 or clients < 1 or images < 1:
        raise ValueError("--bench-replicas, --clients and --images: must be at least 1")
    chosen = load_preset(preset)
    spec = find_spec(model)
    if spec is None:
        raise ValueError(f"--model: the bench needs a known family (demo, sd3.5-medium, ...); got {model!r}")
    defaults = {**chosen.defaults_for(spec), **({"width": size, "height": size} if size else {}), **({"steps": steps} if steps else {})}

    def make_request(seed: int):
        return build_request(chosen, spec, "a red circle on a white background", seed=seed, steps=defaults["steps"], width=defaults["width"], height=defaults["height"])

    machine, rows = _machine(), []
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=max(counts) * threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for count in counts:
            print(f"bench: {count} replica(s), {clients} clients, {images} images ...", file=sys.stderr)
            handle = deploy(ServeOptions(replicas=count, threads=threads, max_queued_requests=max(clients, 1)), model=model, preset=preset, device="cpu")
            backend = RayBackend(handle, "local")
            drive(backend, make_request, model, chosen.precision, clients, 2 * count)  # warm-up, uncounted
            row = {"replicas": count, "threads_per_replica": threads, "clients": clients, **drive(backend, make_request, model, chosen.precision, clients, images)}
            rows.append(row)
            print(f"bench: {count} replica(s): {row['images_per_s']} images/s, p50 {row['p50_s']} s, p95 {row['p95_s']} s", file=sys.stderr)
            serve.delete("fp8pipe")
    finally:
        serve.shutdown()
        ray.shutdown()
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    base = next((r["images_per_s"] for r in rows if r["replicas"] == 1), None)
    for r in rows:
        r["speedup_vs_1"] = round(r["images_per_s"] / base, 3) if base else None
    report = {
        "command": " ".join(["python -m fp8pipe serve --bench", *(sys.argv[sys.argv.index("--bench") + 1 :] if "--bench" in sys.argv else [])]),
        "what": f"{model} via preset {preset}: {defaults['steps']} steps, {defaults['width']}x{defaults['height']} px, batch 1, Ray Serve handle, streaming progress",
        "versions": _versions(),
        "machine": machine,
        "rows": rows,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')}", file=sys.stderr)
    return 0


def markdown(report: dict) -> str:
    lines = [
        "# Ray Serve replicas on the CPU",
        "",
        f"{report['what']}.",
        "",
        "| replicas | torch threads each | clients | images | images/s | x of 1 replica | p50 s | p95 s | s per image on a replica (p50) | front CPU s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['replicas']} | {r['threads_per_replica']} | {r['clients']} | {r['images']} | {r['images_per_s']} | {r['speedup_vs_1']} | {r['p50_s']} | {r['p95_s']} | {r['replica_p50_s']} | {r['front_cpu_s']} |"
        )
    m, v = report["machine"], report["versions"]
    lines += [
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, load average {m['load_average_at_start']} at the start and {m['load_average_at_end']} at the end "
        f"(other programs shared these cores; this run at niceness {m.get('niceness')}).",
        "",
        f"Versions: ray {v['ray']}, torch {v['torch']}, diffusers {v['diffusers']}, Python {v['python']}.",
        "",
    ]
    return "\n".join(lines)
