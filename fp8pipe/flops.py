"""Work per image counted from an SD3 transformer config: FLOPs and weight bytes.

FLOPs count every linear layer on the tokens it sees (image patches, text tokens, or the one
conditioning vector of the AdaLN modulation) plus the two attention matmuls (Q K^T and
A V) over image + text tokens; softmax, norms and element-wise ops are left out (they are a
few percent). A multiply-add is 2 FLOPs. This is the floor a benchmark is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_TOKENS = 77  # CLIP-L and CLIP-G share one 77-token sequence in SD3
FF_MULT = 4  # SD3's FeedForward: dim -> 4 dim -> dim
ADALN_CHUNKS = 6  # shift/scale/gate for attention and MLP
DUAL_ADALN_CHUNKS = 9  # ... plus shift/scale/gate of the second (image-only) attention


@dataclass(frozen=True)
class PassWork:
    """FLOPs of one transformer pass for one image (batch 1)."""

    linear_flops: float
    attention_flops: float
    image_tokens: int
    text_tokens: int

    @property
    def flops(self) -> float:
        return self.linear_flops + self.attention_flops


def text_tokens(max_sequence_length: int, with_t5: bool = True) -> int:
    """Text tokens the transformer sees: CLIP's 77 plus T5's (77 zeros when T5 is dropped)."""
    return CLIP_TOKENS + (max_sequence_length if with_t5 else CLIP_TOKENS)


def image_tokens(config: dict, height: int, width: int, vae_scale_factor: int = 8) -> int:
    p = config["patch_size"]
    return (height // vae_scale_factor // p) * (width // vae_scale_factor // p)


def transformer_pass_work(config: dict, height: int, width: int, txt: int = 333, vae_scale_factor: int = 8) -> PassWork:
    """FLOPs of one SD3 transformer pass at `height` x `width` px with `txt` text tokens."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    layers = config["num_layers"]
    dual = set(config.get("dual_attention_layers") or ())
    p, c_in, c_out = config["patch_size"], config["in_channels"], config["out_channels"]
    img = image_tokens(config, height, width, vae_scale_factor)
    mac = 0.0  # multiply-adds of linear layers
    attn_mac = 0.0

    # Embeddings: patchify conv, timestep + pooled text MLPs, text projection.
    mac += img * (c_in * p * p) * d
    mac += 256 * d + d * d + config["pooled_projection_dim"] * d + d * d
    mac += txt * config["joint_attention_dim"] * d
    for i in range(layers):
        last = i == layers - 1  # SD3's last block only reads the text (context_pre_only)
        chunks = DUAL_ADALN_CHUNKS if i in dual else ADALN_CHUNKS
        mac += d * chunks * d  # image AdaLN modulation (one conditioning vector)
        mac += d * (2 if last else ADALN_CHUNKS) * d  # text AdaLN modulation
        mac += img * (4 * d * d + 2 * FF_MULT * d * d)  # image q, k, v, out + MLP
        mac += txt * (3 * d * d if last else 4 * d * d + 2 * FF_MULT * d * d)  # text q, k, v (+ out, MLP)
        n = img + txt
        attn_mac += 2 * n * n * d  # Q K^T and A V over the joint sequence
        if i in dual:
            mac += img * 4 * d * d  # second attention: q, k, v, out on image tokens
            attn_mac += 2 * img * img * d
    mac += d * 2 * d  # final AdaLN
    mac += img * d * (p * p * c_out)  # proj_out
    return PassWork(linear_flops=2 * mac, attention_flops=2 * attn_mac, image_tokens=img, text_tokens=txt)


def passes_per_step(guidance: float) -> int:
    """Classifier-free guidance runs the transformer on a conditional and an unconditional batch."""
    return 2 if guidance > 1.0 else 1


def image_flops(config: dict, height: int, width: int, steps: int, guidance: float, txt: int = 333, vae_scale_factor: int = 8) -> float:
    """Transformer FLOPs for one image: passes x steps x one pass."""
    return steps * passes_per_step(guidance) * transformer_pass_work(config, height, width, txt, vae_scale_factor).flops


def transformer_weight_bytes(config: dict, precision: str) -> int:
    """Exact bytes of the transformer's weights at `precision`: fp32, 16-bit, or fp8 (E4M3 weights
    with float32 row scales, the rest 16-bit); counted on a meta-device build (allocates nothing)."""
    import torch

    from .fp8 import TRANSFORMER_POLICY, FP8Linear, swap_linears_to_fp8
    from .loader import _empty_transformer

    model = _empty_transformer(config)
    if precision == "fp32":
        return sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()])
    if precision != "fp8":
        return sum(t.numel() * 2 for t in [*model.parameters(), *model.buffers()])
    swap_linears_to_fp8(model, TRANSFORMER_POLICY, "upcast", torch.bfloat16, quantize_weights=False)
    scales = {id(m.scale) for m in model.modules() if isinstance(m, FP8Linear)}
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        width = 1 if t.dtype == torch.float8_e4m3fn else 4 if id(t) in scales else 2
        total += t.numel() * width
    return total
