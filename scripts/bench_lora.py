"""What a LoRA costs on the demo model, FP8, per mode: the bytes it adds, the time to apply it,
and the latency of a generation without a LoRA, in runtime mode and merged.

The LoRA is synthetic (random, kohya key names, rank 16 on every joint-block Linear): the
costs depend on its shapes, not on what it learned.

    PYTHONPATH=. python scripts/bench_lora.py --out bench/results/lora-cpu.json

Latencies on a shared host are noisy: the rounds are interleaved and the fastest kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch


def synthetic_lora(pipe, rank: int, path: Path) -> Path:
    from safetensors.torch import save_file

    from fp8pipe.lora_keys import name_table

    g = torch.Generator().manual_seed(0)
    state = {}
    for alias, (layout, targets) in name_table(pipe).items():
        if layout != "kohya sd-scripts" or not alias.startswith("lora_unet_joint_blocks"):
            continue
        layer = getattr(pipe, targets[0].component).get_submodule(targets[0].module)
        out = layer.out_features * targets[0].chunks
        state[f"{alias}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=g) * 0.01
        state[f"{alias}.lora_up.weight"] = torch.randn(out, rank, generator=g) * 0.01
        state[f"{alias}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.lora import LoraSet, LoraSpec, lora_bytes
    from fp8pipe.requests import GenerationRequest

    loaded = load_model("demo", LoadOptions(device="cpu", precision="fp8"))
    request = GenerationRequest.create(loaded.spec, "a red circle", seed=1)
    loras = LoraSet(loaded.pipe)
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic_lora(loaded.pipe, args.rank, Path(tmp) / "synthetic.safetensors")
        spec = LoraSpec(str(path), 1.0)
        start = time.perf_counter()
        lora = loras.read(spec)
        read_s = time.perf_counter() - start

        loras.apply([], "merge")
        t = time.perf_counter()
        loras.apply([spec], "merge")
        merge_s = time.perf_counter() - t
        t = time.perf_counter()
        loras.apply([], "merge")
        undo_s = time.perf_counter() - t
        # Interleaved rounds, fastest of each: the host is shared, so one slow round says little.
        modes = {"none": ("runtime", []), "runtime": ("runtime", [spec]), "merge": ("merge", [spec])}
        times = {name: [] for name in modes}
        for round_ in range(args.repeats + 1):
            for name, (mode, specs) in modes.items():
                loras.apply(specs, mode)
                t = time.perf_counter()
                generate(loaded, request)
                if round_:  # round 0 warms up
                    times[name].append(time.perf_counter() - t)
        results = {name: min(v) for name, v in times.items()}
    fp8_bytes = loaded.fp8.fp8_bytes
    # Runtime mode's extra multiply-adds per token, against the targeted layers' own.
    lora_macs = sum(a.shape[0] * (a.shape[1] + b.shape[0]) for a, b, _ in lora.layers.values())
    layer_macs = sum(a.shape[1] * b.shape[0] for a, b, _ in lora.layers.values())
    report = {
        "model": "demo", "precision": "fp8", "device": "cpu", "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "rank": args.rank, "layers": len(lora.layers), "steps": request.steps,
        "size": f"{request.width}x{request.height}", "repeats": args.repeats, "latency": "fastest of interleaved rounds",
        "lora_bytes_16bit": lora_bytes([lora], 2), "transformer_fp8_weight_bytes": fp8_bytes,
        "runtime_extra_macs_fraction": round(lora_macs / layer_macs, 4),
        "read_s": round(read_s, 4), "merge_s": round(merge_s, 4), "undo_s": round(undo_s, 4),
        "latency_s": {k: round(v, 4) for k, v in results.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
