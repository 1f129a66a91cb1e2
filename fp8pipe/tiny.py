"""Tiny SD3 pipelines made in code: the untrained demo model and the test fixture.

Tokenizers are built offline (a byte-level CLIP BPE with no merges, a character-level T5
unigram), so nothing here touches the network.
"""

from __future__ import annotations

import string

import torch

from .specs import ModelSpec

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_CHARACTERS = string.ascii_letters + string.digits + " .,!?'-:;()&"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which CLIP's BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def clip_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary: every byte, alone and word-final, plus BOS/EOS."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [CLIP_BOS, CLIP_EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def build_clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=clip_vocab(), merges=[], model_max_length=77)


def t5_unigram_vocab() -> list[tuple[str, float]]:
    """A character-level T5 unigram vocabulary (pad, eos, unk first, as T5 expects)."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    chars = [c for c in T5_CHARACTERS if c != " "]
    return specials + [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]


def build_t5_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=t5_unigram_vocab(), extra_ids=0, model_max_length=512)


def build_tiny_pipeline(spec: ModelSpec, seed: int = 0, with_t5: bool = True, clip_tokenizer=None, t5_tokenizer=None):
    """A StableDiffusion3Pipeline of `spec`'s tiny configs with seeded random weights (fp32, CPU).

    Tokenizers default to the ones built here; tests pass their own, read from files they wrote.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_tok = clip_tokenizer or build_clip_tokenizer()
    t5_tok = t5_tokenizer or build_t5_tokenizer()
    clip_ids = {
        "vocab_size": len(clip_tok),
        "bos_token_id": clip_tok.bos_token_id,
        "eos_token_id": clip_tok.eos_token_id,
        "pad_token_id": clip_tok.pad_token_id,
    }
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel.from_config(spec.transformer_config)
        vae = AutoencoderKL.from_config(spec.vae_config)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**spec.clip_l_config, **clip_ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**spec.clip_g_config, **clip_ids))
        text_encoder_3 = None
        if with_t5:
            t5_config = T5Config(**spec.t5_config, vocab_size=len(t5_tok), pad_token_id=0, eos_token_id=1)
            text_encoder_3 = T5EncoderModel(t5_config)
    for module in (transformer, vae, text_encoder, text_encoder_2, text_encoder_3):
        if module is not None:
            round_to_bf16_(module)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=clip_tok,
        text_encoder_3=text_encoder_3.eval() if text_encoder_3 is not None else None,
        tokenizer_3=t5_tok if with_t5 else None,
    )
    return pipe


@torch.no_grad()
def round_to_bf16_(module: torch.nn.Module) -> None:
    """Make every weight exactly representable in bf16 (as SD3.5's are), so 16-bit storage is lossless."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            t.copy_(t.to(torch.bfloat16).to(t.dtype))
