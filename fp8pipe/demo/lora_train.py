"""Train the demo LoRA: the shipped demo model learns a house style (no background named: black).

The demo's own training code (train.train_transformer: rectified flow, EMA, caption dropout)
runs on the shipped model with a PEFT LoRA on its transformer's attention and MLP Linears;
only the LoRA's A and B matrices learn. Half of the pictures are the lesson (data.lora_set:
shapes on black, captioned without a background), half the base training set, so a prompt
that names its background keeps it. (The lesson is one the demo's VAE can draw: it decodes
only its six colors on its three backgrounds, so a new color or background is out of reach
of a transformer LoRA.) The file is written by diffusers' `save_lora_weights` (diffusers/PEFT keys), in
bf16, beside the demo model:

    python -m fp8pipe.demo train-lora          # fp8pipe/demo/model/loras/house_black.safetensors
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import specs
from . import data
from .train import MODEL_DIR, Log, TrainConfig, encode_captions, encode_latents, to_tensor, train_transformer

LORA_DIR = MODEL_DIR / "loras"
LORA_NAME = "house_black"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


@dataclass
class LoraTrainConfig:
    out: str = str(LORA_DIR / f"{LORA_NAME}.safetensors")
    work: str = "runs/demo-lora"  # logs (not shipped)
    seed: int = 0
    images: int = 3000  # LoRA pictures; as many again from the base training set
    rank: int = 4
    alpha: float = 4.0
    steps: int = 800
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 30
    ema: float = 0.99
    max_minutes: float = 30.0
    threads: int = 1


def _latents(vae, images) -> torch.Tensor:
    raw = encode_latents(vae, to_tensor(images))
    return (raw - vae.config.shift_factor) * vae.config.scaling_factor


def train_lora(cfg: LoraTrainConfig) -> Path:
    """Train, then write the LoRA file and its record (`<out>.json`); returns the file."""
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    log = Log(work / "train.log.jsonl")
    log(event="start", config=asdict(cfg), torch=torch.__version__)
    clock = time.perf_counter()
    pipe = StableDiffusion3Pipeline.from_pretrained(str(MODEL_DIR), use_safetensors=True, torch_dtype=torch.float32)
    lora_images, lora_captions, _ = data.lora_set(cfg.images, seed=cfg.seed + 10)
    base_images, base_captions, _ = data.training_set(cfg.images, seed=cfg.seed + 11)
    captions = lora_captions + base_captions
    with torch.no_grad():
        latents = torch.cat([_latents(pipe.vae, lora_images), _latents(pipe.vae, base_images)])
    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    caption_ids = torch.tensor([index[c] for c in captions])
    text_seq, text_pooled = encode_captions(pipe, [*unique, ""], specs.SPECS["demo"].max_sequence_length)
    log(event="data", pictures=len(captions), captions=len(unique), minutes=round((time.perf_counter() - clock) / 60, 2))

    transformer = pipe.transformer.float().requires_grad_(False)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=TARGETS, init_lora_weights=True)
    transformer.add_adapter(config)
    trained = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    base = TrainConfig(seed=cfg.seed, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, warmup=cfg.warmup, ema=cfg.ema,
                       max_minutes=cfg.max_minutes, save_every=10**9, weight_decay=0.0)
    best = {}

    def keep(ema, step):
        best["ema"], best["step"] = ema, step

    steps = train_transformer(transformer, latents, caption_ids, text_seq, text_pooled, base, pipe.scheduler.config.shift, log, keep)
    layers = {k: v.to(torch.bfloat16).contiguous() for k, v in get_peft_model_state_dict(best["ema"]).items()}
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusion3Pipeline.save_lora_weights(out.parent, transformer_lora_layers=layers, weight_name=out.name,
                                               transformer_lora_adapter_metadata=config.to_dict())
    minutes = round((time.perf_counter() - clock) / 60, 2)
    work_name = cfg.work if not Path(cfg.work).is_absolute() else Path(cfg.work).name  # never this machine's absolute paths
    record = {"steps": steps, "config": {**asdict(cfg), "out": out.name, "work": work_name}, "trained_parameters": trained,
              "file_bytes": out.stat().st_size, "minutes": minutes, "torch": torch.__version__, "device": "cpu", "threads": cfg.threads}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    log(event="done", steps=steps, minutes=minutes, bytes=out.stat().st_size)
    return out
