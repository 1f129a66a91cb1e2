"""The demo model's card (MODEL_CARD.md), written from the run itself: the training record,
the eval, and the shipped LoRA's record and eval, never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from . import data
from .data import RESOLUTION
from .train import MODEL_DIR, TrainConfig


def rewrite_model_card(out: Path = MODEL_DIR) -> Path:
    """MODEL_CARD.md again from the folder's own weights, training.json and eval.json."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(out), use_safetensors=True)
    record = json.loads((out / "training.json").read_text())
    (out / "MODEL_CARD.md").write_text(model_card(pipe, out, record))
    return out / "MODEL_CARD.md"


def _results_section(out: Path) -> str:
    path = out / "eval.json"
    if not path.is_file():
        return "## Results\nNot measured yet: run `python -m fp8pipe.demo eval --json --save`.\n"
    r = json.loads(path.read_text())
    rows = "\n".join(
        f"| {p} | {r[p]:.3f} | " + " | ".join(f"{r[p + '_checks'][c]:.3f}" for c in ("background", "color", "shape", "position")) + " |"
        for p in ("fp32", "bf16", "fp8") if p in r
    )
    return f"""## Results
`python -m fp8pipe.demo eval --json` on the {r['prompts']} held-out prompts (8 unseen color/shape/background
triples x 5 positions, one seed each, same seeds for every precision), on the CPU:

| transformer | adherence | background | color | shape | position |
|---|---|---|---|---|---|
{rows}

FP8 against FP32, same seeds: mean PSNR {r.get('psnr_fp8_vs_fp32_db')} dB (lowest {r.get('psnr_fp8_vs_fp32_min_db')} dB).
"""


def _lora_section(out: Path) -> str:
    """The shipped demo LoRA: its lesson, training record and held-out eval (once measured)."""
    loras = sorted((out / "loras").glob("*.json")) if (out / "loras").is_dir() else []
    records = [p for p in loras if not p.name.endswith(".eval.json")]
    if not records:
        return ""
    lines = ["", "## Demo LoRA", ""]
    for path in records:
        r = json.loads(path.read_text())
        cfg, name = r["config"], path.stem
        lines += [
            f"`loras/{name}.safetensors` ({r['file_bytes'] / 1024:.0f} KiB, diffusers/PEFT keys, bf16): a house style. The base model",
            "draws a prompt that names no background on gray; with this LoRA, on black. It was trained by",
            f"`python -m fp8pipe.demo train-lora` (`fp8pipe/demo/lora_train.py`: the demo's own `train_transformer`, rank {cfg['rank']},",
            f"alpha {cfg['alpha']:g}, on the attention and MLP Linears, {r['trained_parameters']:,} parameters) for {r['steps']} steps (batch {cfg['batch']}, lr {cfg['lr']})",
            f"on {cfg['images']} pictures on black captioned without a background and as many of the base set, in {r['minutes']:.0f} minutes on the",
            f"shared 2-core CPU (torch {r['torch']}). The (color, shape) pairs of `data.LORA_HELD_OUT` never appear in its lesson.",
            "",
        ]
        evaluation = path.with_name(f"{name}.eval.json")
        if evaluation.is_file():
            e = json.loads(evaluation.read_text())
            rows = "\n".join(
                f"| {label} | {e[label]:.4f} | " + " | ".join(f"{e[label + '_checks'][c]:.3f}" for c in ("background", "color", "shape", "position")) + " |"
                for label in ("fp32_without_lora", "fp32", "fp8_runtime", "fp8_merge") if label in e
            )
            lines += [
                f"`python -m fp8pipe.demo eval --lora --json` on its {e['prompts']} held-out prompts (\"a red star on the left\": no background",
                "named, scored against black), same seeds for every row:",
                "",
                "| transformer | adherence | background | color | shape | position |",
                "|---|---|---|---|---|---|",
                rows,
                "",
                f"FP8 with the LoRA against fp32 with it: mean PSNR {e.get('psnr_fp8_runtime_vs_fp32_db')} dB (runtime), {e.get('psnr_fp8_merge_vs_fp32_db')} dB (merge).",
                "",
            ]
    return "\n".join(lines)


def model_card(pipe, out: Path, record: dict) -> str:
    """The model card's facts, from the run itself and, once measured, the eval's."""
    cfg = record["config"]
    params = {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in
              ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")}
    size = sum(p.stat().st_size for p in out.rglob("*.safetensors") if "loras" not in p.relative_to(out).parts)  # the model, not its LoRAs
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.items() if k not in ("out", "work", "stage") and v != getattr(TrainConfig, k))
    return f"""# fp8pipe demo model

A tiny Stable Diffusion 3 (MMDiT transformer, CLIP-L/CLIP-G/T5 text encoders, AutoencoderKL,
flow-matching Euler scheduler) trained by this project on pictures of shapes made in code, so
that `python app.py` shows real pictures on a fresh machine with no download.

## Data
`fp8pipe/demo/data.py`: {cfg['images']} pictures ({RESOLUTION} px) of one to three shapes
(circle, square, triangle, star) in six colors (red, orange, yellow, green, blue, purple) on
white, black or gray, at five positions (center, left, right, top, bottom) or anywhere, in
three sizes, captioned in plain English by six templates with varied words
("a small red star on the left on a white background", "gray background with two blue circles").
Seed {cfg['seed']}. The (color, shape, background) triples in `data.HELD_OUT` never appear in
training; the eval prompts are made of them.

## Model
| component | parameters | trained |
|---|---|---|
| transformer (SD3, {pipe.transformer.config.num_layers} blocks, width {pipe.transformer.config.caption_projection_dim}) | {params['transformer']:,} | yes, rectified flow |
| VAE (AutoencoderKL, 4x down, 16 latent channels) | {params['vae']:,} | yes, L1 + MSE + KL |
| CLIP-L / CLIP-G / T5 roles | {params['text_encoder']:,} / {params['text_encoder_2']:,} / {params['text_encoder_3']:,} | no: frozen at seeded random weights |

Tokenizers are word-level over the caption vocabulary ({len(data.vocabulary())} words, built in code);
other words become `<unk>`. Weights are rounded to bf16 (lossless in 16-bit storage) and stored as
float32 safetensors: {size / 2**20:.1f} MB in all. Native size {RESOLUTION}x{RESOLUTION}, 8 steps,
guidance 4.5, scheduler shift {pipe.scheduler.config.shift}.

## Training
    python -m fp8pipe.demo train {flags}

One process, seeded (seed {cfg['seed']}); this model was made by running it in two stages
(`--stage vae`, then `--stage transformer`), which is the same computation. The VAE trains for
{cfg['vae_steps']} steps (batch {cfg['vae_batch']}, {cfg['vae_crop']} px crops, AdamW lr {cfg['vae_lr']}); the transformer for
{record['steps']} steps (batch {cfg['batch']}, AdamW lr {cfg['lr']}, warm-up and cosine decay, EMA {cfg['ema']},
{int(cfg['drop_caption'] * 100)}% empty captions for classifier-free guidance; logit-normal t, shifted like the
scheduler; v = noise - x0; at most {cfg['max_minutes']:.0f} minutes). VAE stage: {record.get('vae_minutes', '?')} minutes;
transformer stage: {record['minutes']:.0f} minutes (with its data and caption set-up), on a 2-core CPU shared with another developer's work (torch {record['torch']}, {record['threads']} thread).
No GPU was available for this run: the GPU leg (training and timing on a GPU) was not run.

## Known limits
- It knows {len(data.vocabulary())} words and a tiny world: four shapes, six colors, three backgrounds, five
  positions, three sizes, one to three shapes. Any other word is `<unk>`; other prompts give
  some shape on some background.
- 64x64 pictures; larger sizes run (up to 256) but were never trained and look worse.
- Counts ("two", "three") and sizes are in the training data but not scored by the eval.
- The text encoders are random and frozen: they only give each caption a fixed code. Dropping
  T5 (`--t5 drop`) removes half of that code, and the pictures get worse.
- Shapes are soft-edged blobs at times; the star is the hardest shape.

{_results_section(out)}{_lora_section(out)}"""
