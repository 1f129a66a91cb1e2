"""How bench results are written: the markdown table, the plot, and the projection report."""

from __future__ import annotations

from pathlib import Path

from ..specs import ModelSpec
from .weights import GIB

BENCH_PRECISIONS = ("bf16", "fp8")


def _fmt(value, scale=1.0, digits=2):
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def markdown_report(report: dict) -> str:
    """The run as markdown: header (command, versions, cap), one row per case, fidelity, to-measure."""
    from tabulate import tabulate

    env = report["environment"]
    lines = [
        f"# fp8pipe bench: {env['device_name']}",
        "",
        f"- command: `{report['command']}`",
        f"- device: {env['device']} ({env['device_name']}), driver {env['driver'] or 'n/a'}, CUDA {env['cuda_runtime'] or 'n/a'}",
        f"- torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}, Python {env['python']}, {env['cpu_threads']} CPU threads",
        f"- VRAM cap: {report['vram_limit']['note']}",
        f"- weights: {report['weights']}; date {report['created_utc']}",
        f"- options: {', '.join(f'{k}={v}' for k, v in report['options'].items())}",
        "",
    ]
    headers = [
        "model", "prec", "px", "steps", "cfg", "placement", "compile", "status", "step ms", "TFLOP/img", "TFLOP/s",
        "latency s", "VRAM alloc GiB", "VRAM rsv GiB", "host peak GiB", "load s", "FP8/BF16 step", "FP8/BF16 mem", "FP8/BF16 latency", "rel L2 final",
    ]  # fmt: skip
    table = []
    for r in report["rows"]:
        ratio = r.get("fp8_vs_bf16") or {}
        ok = r["status"] == "ok"
        table.append([
            r["model"], r["precision"] + (f" ({r['fp8_path']})" if r.get("fp8_path") else ""), r["resolution"], r["steps"], r["guidance"],
            r["placement"], "on" if r["compile"] else "off", r["status"],
            _fmt(r.get("step_time_s"), 1000, 1), _fmt(r["tflop_per_image"], 1, 4 if r["tflop_per_image"] < 1 else 1),
            _fmt(r.get("achieved_tflops"), 1, 4 if ok and r["achieved_tflops"] < 1 else 1), _fmt(r.get("latency_s"), 1, 3),
            _fmt(r.get("peak_vram_allocated_bytes"), 1 / GIB), _fmt(r.get("peak_vram_reserved_bytes"), 1 / GIB),
            _fmt(r.get("peak_host_bytes"), 1 / GIB), _fmt(r.get("load_s"), 1, 2),
            _fmt(ratio.get("step_time_s")), _fmt(ratio.get("peak_memory_bytes")), _fmt(ratio.get("latency_s")),
            _fmt((r.get("fidelity") or {}).get("final_latent_rel_l2"), 1, 4),
        ])  # fmt: skip
    lines += [tabulate(table, headers=headers, tablefmt="pipe"), ""]
    lines.append(
        "Step time: median transformer call (CFG = one batch-2 call) over the counted images after "
        f"at least {report['options']['warmup']} uncounted warm-up image(s) and {report['options']['min_warmup_s']:g} s of warm-up. Latency: prompt to PIL image, median. "
        "Memory ratio uses VRAM allocated on a GPU, the host peak RSS on the CPU. n/a: not applicable or not measured."
    )
    if report["fidelity"]:
        lines += ["", "## Fidelity proxy (FP8 vs the BF16 weights it was quantized from, same inputs)", ""]
        fid_rows = [
            [f["model"], f["resolution"], f["steps"], f["guidance"], f.get("fp8_path", "n/a"), _fmt(f.get("max_step_rel_l2"), 1, 4), _fmt(f.get("final_latent_rel_l2"), 1, 4), {True: "yes", False: "NO"}.get(f.get("finite"), "n/a"), f.get("error", "")]
            for f in report["fidelity"]
        ]
        lines.append(tabulate(fid_rows, headers=["model", "px", "steps", "cfg", "path", "max per-step rel L2", "final latent rel L2", "finite", "error"], tablefmt="pipe"))
    if report["still_to_measure"]:
        lines += ["", "## Still to be measured", ""] + [f"- {item}" for item in report["still_to_measure"]]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path: Path) -> Path:
    """Bars per case: transformer step time, peak memory, and latency, BF16 and FP8 side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["status"] == "ok"]
    labels = sorted({(r["model"], r["resolution"], r["steps"], r["placement"], r["compile"]) for r in rows}, key=str)
    panels = [("step_time_s", "transformer step (ms)", 1000), ("peak_memory_bytes", "peak memory (GiB)", 1 / GIB), ("latency_s", "latency per image (s)", 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    width = 0.38
    for ax, (key, title, scale) in zip(axes, panels):
        for j, precision in enumerate(BENCH_PRECISIONS):
            values = []
            for label in labels:
                match = [r for r in rows if r["precision"] == precision and (r["model"], r["resolution"], r["steps"], r["placement"], r["compile"]) == label]
                values.append(match[0][key] * scale if match else 0)
            ax.bar([i + (j - 0.5) * width for i in range(len(labels))], values, width, label=precision)
        ax.set_xticks(range(len(labels)), [f"{m}\n{res}px {s} st{' c' if c else ''}" for m, res, s, _, c in labels], fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    kind = rows[0]["peak_memory_kind"] if rows else ""
    fig.suptitle(f"fp8pipe bench on {report['environment']['device_name']} (random weights; memory = {kind})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def projection_report(specs: list[ModelSpec], precisions, resolutions, steps, guidance, t5: str, cards: list[str]) -> dict:
    from ..flops import transformer_weight_bytes
    from ..projection import CARDS, project

    rows = []
    for spec in specs:
        weights = {p: transformer_weight_bytes(spec.transformer_config, p) for p in precisions}
        for res in resolutions or [spec.resolution]:
            for name in cards:
                for p in precisions:
                    rows.append(project(spec, CARDS[name], p, res, steps, guidance, t5, weights[p]))
    return {"schema": 1, "kind": "projection", "note": "projection from counted work and bytes; not a measurement", "rows": rows}


def projection_markdown(report: dict) -> str:
    from tabulate import tabulate

    from ..projection import VRAM_USABLE

    table = [
        [r["card"], r["model"], r["precision"], r["matmul"], r["resolution"], r["steps"], r["guidance"], f"{r['tflop_per_image']:.0f}",
         f"{r['transformer_bytes'] / GIB:.1f}", r["placement"], r["bound"], f"{r['latency_floor_s']:.2f}"]
        for r in report["rows"]
    ]  # fmt: skip
    headers = ["card", "model", "prec", "matmul", "px", "steps", "cfg", "TFLOP/img", "transformer GiB", "placement", "bound", "projected floor s"]
    return (
        "# Projection (not a measurement)\n\nThe transformer loop's floor on each card from counted FLOPs and bytes at the "
        "card's published dense tensor rate, memory and PCIe bandwidth (fp8pipe/projection.py names the sources). "
        "Text encoders, VAE and kernel efficiency are not included: real latency is higher.\n\n"
        f"- command: `{report['command']}`\n- placement: resident if all weights fit in {VRAM_USABLE:.0%} of VRAM, else model offload "
        "(weights moved in per image), else the transformer's weights streamed over PCIe every step\n\n" + tabulate(table, headers=headers, tablefmt="pipe") + "\n"
    )
