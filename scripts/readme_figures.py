"""The README's figures, generated from the committed results (never typed by hand).

Each generated part of README.md sits between `<!-- figures:NAME -->` and
`<!-- /figures:NAME -->`; this script rewrites what is between them from:

- fp8pipe/demo/model/eval.json and bench/results/demo-eval-reruns.json: the demo eval table,
  its spread over reruns, the fidelity line;
- fp8pipe/demo/model/loras/house_black.json and .eval.json: the demo LoRA's size and eval;
- bench/results/cpu-tiny.json: the CPU benchmark table and the demo's latency;
- the FP8 policy on the meta device (what `python -m fp8pipe policy` prints): the weight bytes;
- fp8pipe/vocabulary.py: the words the demo model knows;
- bench/results/gpu-check/: the GPU check's bench, kiosk and probe runs (`python -m fp8pipe check`).

    python scripts/readme_figures.py           rewrite README.md
    python scripts/readme_figures.py --check   exit 1 (and say which part) if README.md differs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

README = ROOT / "README.md"
EVAL = ROOT / "fp8pipe" / "demo" / "model" / "eval.json"
RERUNS = ROOT / "bench" / "results" / "demo-eval-reruns.json"
BENCH = ROOT / "bench" / "results" / "cpu-tiny.json"
GPU_CHECK = ROOT / "bench" / "results" / "gpu-check"
LORA = ROOT / "fp8pipe" / "demo" / "model" / "loras" / "house_black"
GIB = 2**30
PRECISIONS = ("fp32", "bf16", "fp8")
BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def policy_bytes(model: str) -> dict:
    """What `python -m fp8pipe policy --model MODEL --json` reports (meta device: no memory)."""
    from fp8pipe.loader import transformer_report_on_meta
    from fp8pipe.specs import find_spec

    spec = find_spec(model)
    return {"model": spec.name, **transformer_report_on_meta(spec.transformer_config)}


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def policy_text() -> str:
    large, medium = policy_bytes("sd3.5-large"), policy_bytes("sd3.5-medium")
    return (
        "- **The policy is data** (`fp8pipe/fp8.py`, `FP8Policy`): every `nn.Linear` under\n"
        "  `transformer_blocks.*` (attention, MLPs and the AdaLN modulation, which holds a third of the\n"
        "  bytes) is quantized; the timestep and pooled-text embeddings, `context_embedder`, the final\n"
        "  `norm_out` modulation and `proj_out` stay 16-bit. A layer whose width is not a multiple of\n"
        f"  16 runs the upcast path, said in a log line. SD3.5 Large: {large['quantized_layers']} layers quantized, "
        f"{len(large['kept_linear_layers'])} kept,\n"
        f"  **{gib(large['fp8_bytes'])} in FP8 against {gib(large['bf16_bytes'])} in BF16 ({large['fp8_over_bf16']:.3f}x)**; "
        f"Medium {gib(medium['fp8_bytes'])} against {gib(medium['bf16_bytes'])}\n"
        f"  ({medium['fp8_over_bf16']:.3f}x), as `python -m fp8pipe policy` prints them.\n"
    )


def _bench_rows() -> tuple[dict, dict, dict]:
    report = _load(BENCH)
    rows = {r["precision"]: r for r in report["rows"] if r.get("status") == "ok"}
    return report, rows["bf16"], rows["fp8"]


def demo_latency_text() -> str:
    report, bf16, fp8 = _bench_rows()
    env = report["environment"]
    return (
        "It answers prompts such as \"a red star on the left on a white background\" or \"a yellow square at the\n"
        f"top on a black background\" at {fp8['resolution']}x{fp8['resolution']}, {fp8['steps']} steps: {fp8['latency_s']:.2f} s in FP8 and "
        f"{bf16['latency_s']:.2f} s in BF16 from prompt to picture in\n"
        f"the tiny CPU benchmark ({env['cpu']}, {env['cpu_threads']} threads, [bench/results/cpu-tiny.json](bench/results/cpu-tiny.json));\n"
        "the app adds its web round trip and previews, and a busy or slower CPU takes longer.\n"
    )


def fidelity_text() -> str:
    ev = _load(EVAL)
    final = _load(BENCH)["fidelity"][0]["final_latent_rel_l2"]
    return (
        "- **Fidelity** on the tiny test model: FP8 transformer output within 5% relative L2 of\n"
        f"  fp32 on both paths (a test); in the tiny benchmark run, {100 * final:.1f}% on the final latent; on the\n"
        f"  trained demo model, held-out prompt adherence {ev['fp8']:.3f} in FP8 against {ev['fp32']:.3f} in fp32 and "
        f"{ev['psnr_fp8_vs_fp32_db']:.1f} dB\n  mean PSNR between them (see [Demo model](#demo-model)).\n"
    )


def bench_text() -> str:
    report, bf16, fp8 = _bench_rows()
    env = report["environment"]
    ratio = fp8.get("fp8_vs_bf16") or {}
    final = report["fidelity"][0]["final_latent_rel_l2"]
    head = "| model | prec | px | steps | cfg | step ms | TFLOP/img | latency s | host peak GiB | FP8/BF16 step | FP8/BF16 latency | rel L2 final |"
    lines = [
        "CPU run of the tiny (demo) architecture, from [bench/results/cpu-tiny.md](bench/results/cpu-tiny.md)",
        f"({env['cpu']}, {env['cpu_threads']} shared threads, torch {env['torch']}, diffusers {env['diffusers']}). It proves the harness and",
        "says nothing about GPU speed. The FP8/BF16 ratio on a CPU depends on the CPU's FP8 support: where",
        "`torch._scaled_mm` has no fast FP8 kernel it is slower than a plain matmul (a ratio above 1, as here),",
        "and the same run on another CPU gives another ratio.",
        "",
        head,
        "|:--|:--|--:|--:|--:|--:|--:|--:|--:|:--|:--|:--|",
    ]
    for r in (bf16, fp8):
        fp8_row = r is fp8
        name = f"{r['precision']} ({r['fp8_path']})" if fp8_row else r["precision"]
        ratios = [f"{ratio['step_time_s']:.2f}", f"{ratio['latency_s']:.2f}", f"{final:.4f}"] if fp8_row else ["n/a"] * 3
        cells = [r["model"], name, r["resolution"], r["steps"], r["guidance"], f"{1000 * r['step_time_s']:.1f}", f"{r['tflop_per_image']:.4f}",
                 f"{r['latency_s']:.3f}", f"{r['peak_host_bytes'] / GIB:.2f}", *ratios]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def eval_runs() -> list[dict]:
    """The committed eval first, then every rerun on record."""
    reruns = _load(RERUNS)["runs"] if RERUNS.is_file() else []
    return [{"source": "eval.json", **_load(EVAL)}, *reruns]


def eval_text() -> str:
    from fp8pipe.demo import data

    ev, runs = _load(EVAL), eval_runs()
    step = 1 / (len(("background", "color", "shape", "position")) * ev["prompts"])
    lines = [
        f"Held-out eval ({ev['prompts']} prompts: the {len(data.HELD_OUT)} color/shape/background triples never seen in training, "
        f"x {len(data.POSITIONS)}",
        "positions; same seeds per precision), `python -m fp8pipe.demo eval --json`, from",
        "[fp8pipe/demo/model/eval.json](fp8pipe/demo/model/eval.json):",
        "",
        "| transformer | adherence | background | color | shape | position | over all runs on record |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in PRECISIONS:
        checks = ev[f"{p}_checks"]
        values = [r[p] for r in runs if p in r]
        spread = f"{min(values):.4f} to {max(values):.4f} ({len(values)} runs)" if len(values) > 1 else "one run"
        lines.append(f"| {p} | {ev[p]:.4f} | " + " | ".join(f"{checks[c]:.3f}" for c in ("background", "color", "shape", "position")) + f" | {spread} |")
    lines += [
        "",
        f"Each check is right or wrong for one picture, so one picture coming out differently moves the mean by {step:.5f}",
        "(and its column by " + f"{1 / ev['prompts']:.3f}). The eval is deterministic on one machine, but float rounding differs",
        "between CPUs, so a rerun elsewhere moves a few pictures: the last column gives the range over the runs in",
        "[bench/results/demo-eval-reruns.json](bench/results/demo-eval-reruns.json). Differences between precisions smaller than",
        "that range are noise.",
        "",
        f"FP8 against FP32 with the same seed: mean PSNR {ev['psnr_fp8_vs_fp32_db']:.1f} dB; the lowest single picture is "
        f"{ev['psnr_fp8_vs_fp32_min_db']:.1f} dB.",
    ]
    return "\n".join(lines) + "\n"


def demo_lora_text() -> str:
    from fp8pipe.demo import data

    record, ev = _load(LORA.with_suffix(".json")), _load(LORA.with_name(LORA.name + ".eval.json"))
    rows = [("fp32, no LoRA", "fp32_without_lora"), ("fp32 + LoRA", "fp32"), ("fp8 + LoRA, runtime", "fp8_runtime"), ("fp8 + LoRA, merge", "fp8_merge")]
    lines = [
        f"The demo LoRA, `fp8pipe/demo/model/loras/{LORA.name}.safetensors` ({record['file_bytes'] / 1024:.0f} KiB, rank {record['config']['rank']}, "
        f"diffusers/PEFT keys), teaches the demo a house style: a prompt that names no background is drawn on {ev['house_background']}",
        "(the base model draws it on gray). Held-out eval (`python -m fp8pipe.demo eval --lora --json`: the "
        f"{ev['prompts']} prompts of the {len(data.LORA_HELD_OUT)}",
        "held-out color/shape pairs x 5 positions with no background named, scored against the house background; same seeds), from",
        f"[{LORA.name}.eval.json](fp8pipe/demo/model/loras/{LORA.name}.eval.json):",
        "",
        "| transformer | adherence | background | color | shape | position |",
        "|---|---|---|---|---|---|",
    ]
    for label, key in rows:
        checks = ev[f"{key}_checks"]
        lines.append(f"| {label} | {ev[key]:.4f} | " + " | ".join(f"{checks[c]:.3f}" for c in ("background", "color", "shape", "position")) + " |")
    lines += [
        "",
        f"FP8 with the LoRA against fp32 with it, same seeds: mean PSNR {ev['psnr_fp8_runtime_vs_fp32_db']:.1f} dB in runtime mode, "
        f"{ev['psnr_fp8_merge_vs_fp32_db']:.1f} dB merged.",
    ]
    return "\n".join(lines) + "\n"


def vocabulary_text() -> str:
    from fp8pipe.vocabulary import demo_word_groups

    return "\n".join(f"- {name}: {', '.join(words)}" for name, words in demo_word_groups().items()) + "\n"


def _gpu_env(report: dict) -> str:
    env = report["environment"]
    return f"{env['device']}, driver {env['driver']}, CUDA {env['cuda_runtime']}, torch {env['torch']}, diffusers {env['diffusers']}, {env['created_utc'][:10]}"


def gpu_bench_text() -> str:
    """The GPU check's bench stage: BF16 against FP8 without a cap and under the 8 GiB cap."""
    report = _load(GPU_CHECK / "bench.json")
    lines = [
        f"Measured by `python -m fp8pipe check` ([bench/results/gpu-check/bench.md](bench/results/gpu-check/bench.md); {_gpu_env(report)}).",
        "Full-size architectures with random weights, 1024 px, 4 steps, T5 dropped (333 text tokens), median of 3 images",
        "after a warm-up; compiled = each MMDiT block compiled (`fp8pipe/compiling.py`). Under the cap the memory is capped",
        "with `torch.cuda.set_per_process_memory_fraction` and the placement is the planner's.",
        "",
        "| model | cap | compile | placement | BF16 step ms | FP8 step ms | FP8/BF16 step | BF16 peak GiB | FP8 peak GiB | FP8/BF16 peak | FP8 image s |",
        "|:--|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for cap, part in (("none", report["data"]["uncapped"]), ("8 GiB", report["data"]["capped"])):
        rows = part["rows"]
        for fp8 in (r for r in rows if r["precision"] == "fp8"):
            twin = next((r for r in rows if r["precision"] == "bf16" and (r["model"], r["compile"]) == (fp8["model"], fp8["compile"])), None)
            ok = fp8["status"] == "ok" and twin is not None and twin["status"] == "ok"
            ms = lambda r: f"{r['step_time_s'] * 1000:.0f}" if r and r["status"] == "ok" else r["status"] if r else "n/a"  # noqa: E731
            peak = lambda r: f"{r['peak_vram_allocated_bytes'] / GIB:.2f}" if r and r["status"] == "ok" else "n/a"  # noqa: E731
            placement = (fp8.get("plan") or {}).get("placement") or (twin or {}).get("plan", {}).get("placement") or fp8["placement"]
            lines.append(
                f"| {fp8['model']} | {cap} | {'on' if fp8['compile'] else 'off'} | {placement} | {ms(twin)} | {ms(fp8)} | "
                f"{fp8['step_time_s'] / twin['step_time_s']:.2f} | {peak(twin)} | {peak(fp8)} | "
                f"{fp8['peak_vram_allocated_bytes'] / twin['peak_vram_allocated_bytes']:.2f} | {fp8['latency_s']:.2f} |"
                if ok
                else f"| {fp8['model']} | {cap} | {'on' if fp8['compile'] else 'off'} | {placement} | {ms(twin)} | {ms(fp8)} | n/a | {peak(twin)} | {peak(fp8)} | n/a | n/a |"
            )
    fid = report["data"]["uncapped"]["fidelity"]
    lines += ["", "Fidelity proxy (FP8 against the BF16 weights it was quantized from, same inputs, final latent relative L2): "
              + ", ".join(f"{f['model']} {f['final_latent_rel_l2']:.3f}" for f in fid if "final_latent_rel_l2" in f) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def gpu_kiosk_text() -> str:
    """The GPU check's kiosk stage: click-to-image through the engine's service path under the cap."""
    report = _load(GPU_CHECK / "kiosk.json")
    probe = _load(GPU_CHECK / "probe.json")["data"]
    data = report["data"]
    clicks = data["clicks"]
    lines = [
        f"The kiosk preset ({data['model']}, FP8, T5 dropped, 4 steps) through the engine's service path under an 8 GiB cap "
        f"([bench/results/gpu-check/kiosk.md](bench/results/gpu-check/kiosk.md); {_gpu_env(report)}); engine start (load + warm-up) {data['startup_s']:.1f} s:",
        "",
        "| px | clicks | click-to-image s (median) | step s | decode s | peak GiB | placement | streamed GiB per step |",
        "|--:|:--|--:|--:|--:|--:|:--|--:|",
    ]
    for size in dict.fromkeys(c["size"] for c in clicks):
        mine = [c for c in clicks if c["size"] == size]
        med = lambda key: sorted(c[key] for c in mine)[len(mine) // 2]  # noqa: E731
        kinds = ", ".join(sorted({c["kind"] for c in mine}))
        lines.append(
            f"| {size} | {len(mine)} ({kinds}) | {med('click_to_image_s'):.2f} | {med('step_s'):.3f} | {med('decode_s'):.3f} | "
            f"{max(c['peak_vram_bytes'] for c in mine) / GIB:.2f} | {mine[0]['plan']['placement']} | {mine[0]['h2d_bytes_per_step'] / GIB:.2f} |"
        )
    lines += [
        "",
        f"Device probe: BF16 matmul {probe['bf16_matmul_tflops']:.0f} TFLOP/s, FP8 row-wise `_scaled_mm` {probe['fp8_rowwise_scaled_mm_tflops']:.0f} TFLOP/s, "
        f"device copy {probe['device_copy_gbps']:.0f} GB/s, host to device {probe['h2d_pinned_gbps']:.0f} GB/s pinned / {probe['h2d_pageable_gbps']:.0f} GB/s pageable.",
    ]
    return "\n".join(lines) + "\n"



GENERATORS = {
    "policy": policy_text,
    "demo-latency": demo_latency_text,
    "fidelity": fidelity_text,
    "bench": bench_text,
    "eval": eval_text,
    "vocabulary": vocabulary_text,
    "demo-lora": demo_lora_text,
    "gpu-bench": gpu_bench_text,
    "gpu-kiosk": gpu_kiosk_text,
}


def render(text: str) -> str:
    """README text with every figures block regenerated."""

    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"README.md: unknown figures block {name!r}; known: {', '.join(GENERATORS)}")
        return m.group(1) + GENERATORS[name]() + m.group(4)

    return BLOCK.sub(fill, text)


def stale_blocks(text: str) -> list[str]:
    """The names of the blocks whose text differs from what the committed results give."""
    fresh = {m.group("name"): m.group("body") for m in BLOCK.finditer(render(text))}
    return [m.group("name") for m in BLOCK.finditer(text) if m.group("body") != fresh[m.group("name")]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md is stale (default: rewrite it)")
    args = parser.parse_args(argv)
    text = README.read_text()
    missing = sorted(set(GENERATORS) - {m.group("name") for m in BLOCK.finditer(text)})
    if missing:
        print(f"README.md lacks figures blocks: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.check:
        stale = stale_blocks(text)
        if stale:
            print(f"README.md figures differ from the committed results in: {', '.join(stale)} (run python scripts/readme_figures.py)", file=sys.stderr)
            return 1
        print("README.md figures match the committed results")
        return 0
    README.write_text(render(text))
    print(f"rewrote {len(GENERATORS)} figures blocks in README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
