"""The start-up probe: what this device really reaches (matmul TFLOP/s per dtype, FP8 row-wise
`scaled_mm` where it runs, device memory GB/s, pinned and pageable host-to-device GB/s), cached
per device in a JSON file, and the Card the latency model predicts with from it.

A few hundred milliseconds on a GPU at the default sizes (`python -m fp8pipe check` runs it larger).
The probed card's efficiencies are the pipeline-to-probe ratios measured on the H100
(bench/results/gpu-check/: the pipeline's GEMMs reached 0.79 of the probed matmul rate, its
memory-bound kernels 0.68 of the probed copy rate), assumed to carry over to other devices.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
import time
from pathlib import Path

from .cards import EFFICIENCY, Card, Efficiency, card_for_device_name

MiB = 2**20
# The H100 check: probe bf16 773 TFLOP/s and copy 2955 GB/s against the fitted Hopper shares of
# peak (matmul 0.62, attention 0.40, conv 0.10 of 989.5; memory 0.60 of 3350 GB/s).
_H100_PROBE_OF_PEAK = {"matmul": 773 / 989.5, "memory": 2955 / 3350}


def probe_device(size: int = 4096, copy_bytes: int = 256 * MiB, device: str = "cuda") -> dict:
    """Measured rates of `device`: bf16 matmul and FP8 row-wise scaled_mm TFLOP/s (None where
    `_scaled_mm` does not run), device copy GB/s (bytes read + written) and, on CUDA, pinned and
    pageable host-to-device and pinned device-to-host GB/s. Each figure is a median of a few runs."""
    import torch

    from .fp8 import FP8_DTYPE

    dev = torch.device(device)
    gen = torch.Generator(dev).manual_seed(0)
    a = torch.randn(size, size, device=dev, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(size, size, device=dev, dtype=torch.bfloat16, generator=gen)
    flops = 2 * size**3
    rates = {"bf16_matmul_tflops": flops / _time(lambda: a @ b, dev, 5) / 1e12}
    try:
        a8, b8 = a.to(FP8_DTYPE), b.to(FP8_DTYPE)
        sa = torch.ones(size, 1, device=dev, dtype=torch.float32)
        sb = torch.ones(1, size, device=dev, dtype=torch.float32)
        rates["fp8_rowwise_scaled_mm_tflops"] = flops / _time(lambda: torch._scaled_mm(a8, b8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16), dev, 5) / 1e12
    except (RuntimeError, NotImplementedError):  # no FP8 matmul on this device
        rates["fp8_rowwise_scaled_mm_tflops"] = None
    del a, b
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    rates["device_copy_gbps"] = 2 * copy_bytes / _time(lambda: dst.copy_(src), dev, 5) / 1e9
    rates.update(h2d_pinned_gbps=None, h2d_pageable_gbps=None, d2h_pinned_gbps=None)
    if dev.type == "cuda":
        pinned = torch.empty(copy_bytes, dtype=torch.uint8).pin_memory()
        pageable = torch.empty(copy_bytes, dtype=torch.uint8)
        rates["h2d_pinned_gbps"] = copy_bytes / _time(lambda: dst.copy_(pinned, non_blocking=True), dev, 5) / 1e9
        rates["h2d_pageable_gbps"] = copy_bytes / _time(lambda: dst.copy_(pageable), dev, 3) / 1e9
        rates["d2h_pinned_gbps"] = copy_bytes / _time(lambda: pinned.copy_(dst, non_blocking=True), dev, 5) / 1e9
        del pinned, pageable
    del src, dst
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {k: (float(f"{v:.4g}") if v is not None else None) for k, v in rates.items()}  # 4 significant digits


def _time(fn, dev, repeats: int) -> float:
    """Median seconds of `fn` after a warm-up: CUDA events on a GPU, the wall clock elsewhere."""
    import torch

    fn()
    if dev.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return max(statistics.median(times), 1e-9)
    torch.cuda.synchronize(dev)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return max(statistics.median(times), 1e-9)


# ---- the cache ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where probe results live: $FP8PIPE_CACHE, else the user's cache folder (XDG_CACHE_HOME,
    LOCALAPPDATA on Windows, ~/.cache) under fp8pipe/probe."""
    if os.environ.get("FP8PIPE_CACHE"):
        return Path(os.environ["FP8PIPE_CACHE"]) / "probe"
    base = os.environ.get("XDG_CACHE_HOME") or os.environ.get("LOCALAPPDATA") or str(Path.home() / ".cache")
    return Path(base) / "fp8pipe" / "probe"


def device_name(device: str = "cuda") -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores)"


def probed(device: str = "cuda", refresh: bool = False, folder: Path | None = None, **sizes) -> dict:
    """The probe of `device`, from the cache when it holds one for this device and torch version;
    measured (and cached) otherwise. Returns {"device", "torch", "measured_at", "rates"}."""
    import torch

    name = device_name(device)
    path = (folder or cache_dir()) / (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".json")
    if not refresh and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("device") == name and cached.get("torch") == torch.__version__ and isinstance(cached.get("rates"), dict):
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache is measured again
    result = {"device": name, "torch": torch.__version__, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rates": probe_device(device=device, **sizes)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    except OSError:  # a read-only home still gets its probe, just not cached
        pass
    return result


# ---- the card -----------------------------------------------------------------------------------


def card_from_probe(probe: dict, vram_gib: float) -> Card:
    """A Card whose peaks are the probed rates and whose efficiencies are the pipeline-to-probe
    ratios (see the module docstring). FP8 matmul counts only where scaled_mm beat bf16."""
    r = probe["rates"]
    named = card_for_device_name(probe["device"])
    base = EFFICIENCY["hopper"]
    fp8 = r.get("fp8_rowwise_scaled_mm_tflops")
    pinned = r.get("h2d_pinned_gbps")
    eff = Efficiency(
        matmul=min(1.0, base.matmul / _H100_PROBE_OF_PEAK["matmul"]),
        attention=min(1.0, base.attention / _H100_PROBE_OF_PEAK["matmul"]),
        conv=min(1.0, base.conv / _H100_PROBE_OF_PEAK["matmul"]),
        memory=min(1.0, base.memory / _H100_PROBE_OF_PEAK["memory"]),
        pinned_h2d=1.0,  # the link's rate is the probed pinned rate
        stream_16bit=base.stream_16bit,
        stream_fp8=base.stream_fp8,
        pageable_h2d=min(1.0, (r.get("h2d_pageable_gbps") or 0) / pinned) if pinned else base.pageable_h2d,
    )
    return Card(
        name=f"probed {probe['device']}",
        vram_gib=vram_gib,
        fp8_tflops=fp8 if fp8 and fp8 > r["bf16_matmul_tflops"] else None,
        bf16_tflops=r["bf16_matmul_tflops"],
        memory_gbps=r["device_copy_gbps"],
        pcie_gbps=pinned or (named.pcie_gbps if named else 31.5),
        card_class=named.card_class if named else "probed",
        efficiency=eff,
    )


@functools.lru_cache(maxsize=4)
def probed_card(device: str = "cuda") -> Card | None:
    """The probed Card of this machine's GPU (cached per device, on disk and for this process),
    or None without CUDA or when probing fails (the caller falls back to a named card)."""
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return card_from_probe(probed(device), total / 2**30)
    except Exception as e:  # noqa: BLE001 - a probe must never stop the app
        import logging

        logging.getLogger(__name__).warning("device probe failed (%s): using the named card", e)
        return None
