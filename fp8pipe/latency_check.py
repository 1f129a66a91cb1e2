"""The latency model against measurements: predicted vs measured for every committed H100 run
and every published timing in docs/published_timings.toml.

Reads bench/results/gpu-check/bench.json (transformer step and prompt-to-image latency of
full-size Medium, Large and Large Turbo, resident and group-offloaded under an 8 GiB cap) and
kiosk.json (the kiosk preset through the engine under the cap), and the published timings (other
people's runs on other cards, each with its source). `python -m fp8pipe.latency_check` prints the
table that docs/latency_validation.md holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import latency
from .cards import CARDS
from .sizes import component_sizes
from .specs import SPECS

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu-check"
PUBLISHED = Path(__file__).resolve().parents[1] / "docs" / "published_timings.toml"
# SD3 Medium v1 (stabilityai/stable-diffusion-3-medium-diffusers' transformer config): Medium's
# width without SD3.5's dual attention or q/k norms. Only published timings use it.
SD3_MEDIUM_TRANSFORMER = {**SPECS["sd3.5-medium"].transformer_config, "pos_embed_max_size": 192, "qk_norm": None, "dual_attention_layers": []}
CARD = "H100 SXM"  # the runs' card: NVIDIA H100 80GB HBM3 (SXM)
BAND = (0.67, 1.5)  # the realism target: prediction / measurement within this band


def _job(model: str, precision: str, px: int, steps: int, guidance: float, compiled: bool, placement: str) -> latency.Job:
    spec, sizes = SPECS[model], component_sizes(model, precision)
    return latency.Job(
        spec=spec,
        width=px,
        height=px,
        steps=steps,
        guidance=guidance,
        precision=precision,
        execution="compiled" if compiled else "eager",
        t5="drop",
        block_bytes=sizes.transformer_block_bytes,
        rest_bytes=sizes.transformer - sizes.transformer_blocks,
        clip_bytes=sizes.clip_l + sizes.clip_g,
        vae_bytes=sizes.vae,
        placement=placement,
        resident_blocks=0 if placement == "group_offload" else None,
    )


def validation_rows(results: Path = RESULTS) -> list[dict]:
    """One row per measured configuration: what was measured, what the model predicts, the ratio."""
    card = CARDS[CARD]
    rows = []
    bench = json.loads((results / "bench.json").read_text())["data"]
    for group in ("uncapped", "capped"):
        for r in bench[group]["rows"]:
            if r.get("status") != "ok":
                continue
            placement = (r.get("plan") or {}).get("placement", "resident") if r["placement"] == "planned" else r["placement"]
            job = _job(r["model"], r["precision"], r["resolution"], r["steps"], r["guidance"], r["compile"], placement)
            pred = latency.predict(job, card)
            where = f"{placement}, cap 8 GiB" if group == "capped" else placement
            what = f"{r['model']} {r['precision']} {'compiled' if r['compile'] else 'eager'}, {where}"
            rows.append(_row("bench", what, r["resolution"], "step", r["step_time_s"], pred.step_s, pred.step_floor_s))
            rows.append(_row("bench", what, r["resolution"], "image", r["latency_s"], pred.latency_s, pred.floor_s))
    kiosk = json.loads((results / "kiosk.json").read_text())["data"]
    by_size: dict[int, list[dict]] = {}
    for c in kiosk["clicks"]:
        if c["kind"] == "warm":
            by_size.setdefault(c["size"], []).append(c)
    for px, clicks in sorted(by_size.items(), reverse=True):
        spec = SPECS[kiosk["model"]]
        plan = clicks[0]["plan"]
        job = _job(kiosk["model"], "fp8", px, spec.steps, spec.guidance, False, plan["placement"])
        pred = latency.predict(job, card)
        step = sorted(c["step_s"] for c in clicks)[len(clicks) // 2]
        image = sorted(c["click_to_image_s"] for c in clicks)[len(clicks) // 2]
        what = f"kiosk preset ({kiosk['model']} fp8 eager, {plan['placement']}, cap 8 GiB), engine"
        rows.append(_row("kiosk", what, px, "step", step, pred.step_s, pred.step_floor_s))
        rows.append(_row("kiosk", what, px, "image", image, pred.latency_s, pred.floor_s))
        h2d = sorted(c["h2d_bytes_per_step"] for c in clicks)[len(clicks) // 2]
        rows.append(_row("kiosk", what, px, "H2D bytes/step", h2d, pred.streamed_bytes_per_step, pred.streamed_bytes_per_step))
    return rows + published_rows()


def published_rows(path: Path = PUBLISHED) -> list[dict]:
    """One row per published timing: the prompt-to-image time its source states, and the prediction."""
    import tomllib

    rows = []
    for t in tomllib.loads(path.read_text())["timing"]:
        job = _published_job(t)
        pred = latency.predict(job, CARDS[t["card"]])
        what = f"{t['model']} {t['precision']} {t['execution']}, T5 {t['t5']}, {t['steps']} steps, guidance {t['guidance']:g} on the {t['card']} ({t['source']})"
        if t.get("quantity", "image") == "step":  # the source's it/s: one denoise step (both CFG halves)
            rows.append(_row("published", what, t["px"], "step", t["seconds"], pred.step_s, pred.step_floor_s))
        else:
            rows.append(_row("published", what, t["px"], "image", t["seconds"], pred.latency_s, pred.floor_s))
    return rows


def _published_job(t: dict) -> latency.Job:
    import dataclasses

    from .loader import _empty_transformer
    from .sizes import _module_bytes

    if t["model"] == "sd3-medium":
        spec = dataclasses.replace(SPECS["sd3.5-medium"], name="sd3-medium", transformer_config=SD3_MEDIUM_TRANSFORMER)
    else:
        spec = SPECS[t["model"]]
    value = {"fp32": 4, "bf16": 2, "fp16": 2}[t["precision"]]
    transformer = _empty_transformer(spec.transformer_config)
    blocks = tuple(_module_bytes(b, value) for b in transformer.transformer_blocks)
    encoders = component_sizes("sd3.5-medium", "bf16")  # CLIP, T5 and the VAE: one set for the family
    return latency.Job(
        spec=spec,
        width=t["px"],
        height=t["px"],
        steps=t["steps"],
        guidance=t["guidance"],
        precision="bf16" if t["precision"] == "fp16" else t["precision"],
        execution=t["execution"],
        t5=t["t5"],
        block_bytes=blocks,
        rest_bytes=_module_bytes(transformer, value) - sum(blocks),
        clip_bytes=encoders.clip_l + encoders.clip_g,
        t5_bytes=encoders.t5_16bit if t["t5"] == "16bit" else 0,
        vae_bytes=encoders.vae,
    )


def _row(source: str, what: str, px: int, quantity: str, measured: float, predicted: float, floor: float) -> dict:
    return {"source": source, "configuration": what, "px": px, "quantity": quantity, "measured": measured, "predicted": predicted, "floor": floor, "ratio": predicted / measured}


def validation_markdown(rows: list[dict]) -> str:
    def fmt(row, key):
        v = row[key]
        return f"{v / 2**30:.2f} GiB" if row["quantity"].startswith("H2D") else f"{v:.3f} s"

    lines = [
        "# Latency model against measurements",
        "",
        "Generated by `python -m fp8pipe.latency_check > docs/latency_validation.md`; do not edit by hand.",
        "Measured (bench, kiosk): bench/results/gpu-check/ (NVIDIA H100 80GB HBM3, torch 2.11, diffusers 0.42.1; T5 dropped).",
        f"Predicted: `fp8pipe/latency.py` for the {CARD} with the Hopper efficiencies of `fp8pipe/cards.py`;",
        "floor: the same at 100 % of every peak. Ratio = predicted / measured; the target band is",
        f"{BAND[0]}-{BAND[1]}. The Hopper efficiencies were fitted to these same runs, so those rows show the",
        "model can describe them with one set of constants; they are not an independent test. The H100",
        "runs predate the few-rows AdaLN path (`fp8.FEW_ROWS`), which the model now counts: their eager",
        "FP8 rows ran the older, slower dequantization, so those predictions lean low by up to ~8 %.",
        "",
        "Published (other people's runs, other cards; docs/published_timings.toml gives each source and",
        "setting; quantity `step` is one denoise step, 1 / the source's it/s): the A100 rows are the",
        "independent check; the GeForce Ada shares were refitted to the RTX 4090 rows (docs/latency_model.md).",
        "",
        "| source | configuration | px | quantity | measured | predicted | floor | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['source']} | {r['configuration']} | {r['px']} | {r['quantity']} | {fmt(r, 'measured')} | {fmt(r, 'predicted')} | {fmt(r, 'floor')} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(validation_markdown(validation_rows()), end="")
