"""Train the demo model: a tiny SD3 (VAE, then flow-matching transformer) on shapes/data.py.

Two stages, one process, seeded:
1. the AutoencoderKL learns to reconstruct the pictures (L1 + MSE, a small KL term);
   the latents' mean and std become its shift_factor and scaling_factor, as in SD3;
2. the SD3 transformer learns rectified flow on those latents: x_t = (1 - t) x0 + t noise,
   target v = noise - x0, t logit-normal and then shifted like the scheduler's sigmas.

The text encoders (CLIP-L, CLIP-G, T5 roles) stay frozen at their seeded random weights: with
a word-level vocabulary their outputs are fixed, distinct codes for each caption, and the
transformer learns to read them. Every caption's embeddings are computed once, up front.

    python -m fp8pipe.demo train --out fp8pipe/demo/model
"""

from __future__ import annotations

import copy
import json
import os
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import specs, tiny
from . import data

MODEL_DIR = Path(__file__).resolve().parent / "model"


@dataclass
class TrainConfig:
    out: str = str(MODEL_DIR)
    work: str = "runs/demo"  # checkpoints and logs (not shipped)
    seed: int = 0
    images: int = 12000
    # VAE: trained on random crops (it is convolutional), which is 4x cheaper than whole pictures
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 1e-3
    vae_kl: float = 1e-5
    vae_max_minutes: float = 0.0  # stop the VAE stage early after this long (0: never)
    # transformer
    steps: int = 4000
    batch: int = 64
    lr: float = 6e-4
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float = 0.998
    drop_caption: float = 0.1  # trains the empty prompt, which classifier-free guidance needs
    max_minutes: float = 50.0  # stop the transformer stage early after this long (0: never)
    log_every: int = 25
    save_every: int = 500
    threads: int = 1  # on a 2-core machine shared with other work, one thread ran faster than two
    stage: str = "all"  # all | vae | transformer


# ---- tokenizers: whole words of the caption grammar ------------------------------------


def _word_tokenizer(specials: list[str], template: str, max_length: int, **special_tokens):
    """A word-level fast tokenizer over data.vocabulary(), lower-casing, built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*specials, *data.vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", model_max_length=max_length, **special_tokens)


def word_tokenizers(spec: specs.ModelSpec):
    """(CLIP-role, T5-role) tokenizers. CLIP pads with its end token, as CLIP does, so the pooled
    output (taken at the first end token) sits right after the last word."""
    bos, eos = tiny.CLIP_BOS, tiny.CLIP_EOS
    clip = _word_tokenizer([bos, eos, "<unk>"], f"{bos} $A {eos}", CLIP_LENGTH, bos_token=bos, eos_token=eos, pad_token=eos)
    t5 = _word_tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", spec.max_sequence_length, eos_token="</s>", pad_token="<pad>")
    return clip, t5


CLIP_LENGTH = 24  # tokens; the longest caption has 17 with its start and end tokens


# ---- helpers ---------------------------------------------------------------------------


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1], as the VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def lr_at(step: int, cfg: TrainConfig, total: int, base: float) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return base * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_sigmas(n: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Logit-normal t (SD3), then the scheduler's shift: sigma = s t / (1 + (s - 1) t)."""
    t = torch.sigmoid(torch.randn(n, generator=generator))
    return shift * t / (1 + (shift - 1) * t)


class Log:
    def __init__(self, path: Path):
        self.file = path.open("a")

    def __call__(self, **row):
        line = json.dumps({"time": time.strftime("%H:%M:%S"), **row})
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


# ---- stage 1: the VAE ------------------------------------------------------------------


def train_vae(vae, images: torch.Tensor, cfg: TrainConfig, log: Log) -> None:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, fused=True)
    vae.train()
    side = images.shape[-1]
    start = time.perf_counter()
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, cfg.vae_steps, cfg.vae_lr)
        idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=g)
        # crops start on the VAE's 4-pixel grid, so latents line up with whole pictures
        y0, x0 = (torch.randint(0, (side - cfg.vae_crop) // 4 + 1, (2,), generator=g) * 4).tolist()
        x = images[idx, :, y0 : y0 + cfg.vae_crop, x0 : x0 + cfg.vae_crop]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec + cfg.vae_kl * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        minutes = (time.perf_counter() - start) / 60
        last = step == cfg.vae_steps - 1 or (cfg.vae_max_minutes and minutes >= cfg.vae_max_minutes)
        if step % cfg.log_every == 0 or last:
            log(stage="vae", step=step, loss=round(loss.item(), 5), rec=round(rec.item(), 5), minutes=round(minutes, 2))
        if last:
            break
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of every picture (deterministic latents, in the VAE's raw scale)."""
    return torch.cat([vae.encode(images[i : i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


# ---- stage 2: the transformer ----------------------------------------------------------


@torch.no_grad()
def encode_captions(pipe, captions: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence embeddings, pooled embeddings) of each caption, exactly as the pipeline makes them."""
    seqs, pooled = [], []
    for i in range(0, len(captions), 256):
        chunk = captions[i : i + 256]
        s, _, p, _ = pipe.encode_prompt(chunk, chunk, chunk, do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
        seqs.append(s)
        pooled.append(p)
    return torch.cat(seqs), torch.cat(pooled)


def train_transformer(transformer, latents, caption_ids, text_seq, text_pooled, cfg: TrainConfig, shift: float, log: Log, save) -> int:
    """Rectified flow on the latents; returns the number of steps taken. `save(ema, step)` checkpoints."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    decay, no_decay = [], []
    for name, p in transformer.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        fused=True,
    )
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    empty = len(text_seq) - 1  # the last caption is the empty prompt
    start = time.perf_counter()
    transformer.train()
    step = 0
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg, cfg.steps, cfg.lr)
        idx = torch.randint(0, len(latents), (cfg.batch,), generator=g)
        text = caption_ids[idx].clone()
        text[torch.rand(cfg.batch, generator=g) < cfg.drop_caption] = empty
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(cfg.batch, shift, g)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = transformer(
            hidden_states=xt,
            encoder_hidden_states=text_seq[text],
            pooled_projections=text_pooled[text],
            timestep=sigma * 1000,  # the pipeline passes the scheduler's timesteps, sigma * 1000
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # EMA weights make the sampled pictures much steadier than the raw ones
            d = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), transformer.parameters()):
                pe.lerp_(p, 1 - d)
        minutes = (time.perf_counter() - start) / 60
        last = step == cfg.steps - 1 or (cfg.max_minutes and minutes >= cfg.max_minutes)
        if step % cfg.log_every == 0 or last:
            log(stage="transformer", step=step, loss=round(loss.item(), 5), lr=round(group["lr"], 6), minutes=round(minutes, 2))
        if (step + 1) % cfg.save_every == 0 or last:
            save(ema, step + 1)
        if last:
            break
    transformer.eval()
    return step + 1


# ---- the whole run ---------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = specs.SPECS["demo"]
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    log = Log(work / "train.log.jsonl")
    log(event="start", config=asdict(cfg), torch=torch.__version__, machine=platform.machine(), threads=torch.get_num_threads())
    clock = time.perf_counter()

    images_np, captions, _ = data.training_set(cfg.images, seed=cfg.seed, resolution=spec.resolution)
    images = to_tensor(images_np)
    clip_tok, t5_tok = word_tokenizers(spec)
    pipe = tiny.build_tiny_pipeline(spec, seed=cfg.seed, with_t5=True, clip_tokenizer=clip_tok, t5_tokenizer=t5_tok)
    vae = pipe.vae.float()

    vae_path = work / "vae"
    if cfg.stage in ("all", "vae"):
        t0 = time.perf_counter()
        train_vae(vae, images, cfg, log)
        vae.save_pretrained(vae_path, safe_serialization=True)
        log(event="vae_done", minutes=round((time.perf_counter() - t0) / 60, 2))
        if cfg.stage == "vae":
            return vae_path
    else:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_path).eval()
    # SD3's latent normalisation: (z - shift_factor) * scaling_factor has zero mean, unit std
    raw = encode_latents(vae, images)
    shift_factor, scaling_factor = raw.mean().item(), 1.0 / raw.std().item()
    vae.register_to_config(shift_factor=round(shift_factor, 4), scaling_factor=round(scaling_factor, 4))
    latents = (raw - vae.config.shift_factor) * vae.config.scaling_factor
    log(event="latents", shape=list(latents.shape), shift_factor=vae.config.shift_factor, scaling_factor=vae.config.scaling_factor)

    unique = sorted(set(captions))
    index = {c: i for i, c in enumerate(unique)}
    caption_ids = torch.tensor([index[c] for c in captions])
    text_seq, text_pooled = encode_captions(pipe, [*unique, ""], spec.max_sequence_length)
    log(event="captions", unique=len(unique), seq=list(text_seq.shape))

    transformer = pipe.transformer.float()
    out = Path(cfg.out)

    def save(ema, step):
        pipe.transformer, pipe.vae = ema, vae
        write_model(pipe, out, step=step, cfg=cfg, minutes=(time.perf_counter() - clock) / 60)
        log(event="saved", step=step, out=str(out))

    steps = train_transformer(transformer, latents, caption_ids, text_seq, text_pooled, cfg, spec.shift, log, save)
    log(event="done", steps=steps, minutes=round((time.perf_counter() - clock) / 60, 2))
    return out


def write_model(pipe, out: Path, step: int, cfg: TrainConfig, minutes: float) -> None:
    """The pipeline as a diffusers folder of safetensors, weights rounded to bf16 (lossless in 16 bits),
    and a small training record beside the model card."""
    pipe = copy.deepcopy(pipe)
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        tiny.round_to_bf16_(module)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    # Paths as the command line gave them, never this machine's absolute ones.
    config = {k: (v if k not in ("out", "work") else os.path.relpath(v) if os.path.isabs(str(v)) else v) for k, v in asdict(cfg).items()}
    record = {"steps": step, "config": config, "minutes": round(minutes, 2), "torch": torch.__version__,
              "device": "cpu", "threads": torch.get_num_threads()}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    from .card import model_card

    (out / "MODEL_CARD.md").write_text(model_card(pipe, out, record))
