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
    """FLOPs of one transformer pass for one image (batch 1), split by how each op runs.

    `block_linear_flops` are the transformer blocks' linears that hold FP8 weights (q, k, v,
    out, MLP); `adaln_flops` the blocks' AdaLN modulation linears (one conditioning row each);
    the rest of `linear_flops` are the embeddings and the output layers (always 16-bit).
    `block_linear_in`/`_out` count the elements those FP8 linears read and write (per image),
    which sets the activation quantizer's traffic.
    """

    linear_flops: float
    attention_flops: float
    image_tokens: int
    text_tokens: int
    block_linear_flops: float = 0.0
    adaln_flops: float = 0.0
    block_linear_in: float = 0.0
    block_linear_out: float = 0.0

    @property
    def flops(self) -> float:
        return self.linear_flops + self.attention_flops


def text_tokens(max_sequence_length: int, with_t5: bool = True, clip_tokens: int = CLIP_TOKENS) -> int:
    """Text tokens the transformer sees: CLIP's (its tokenizer's length, 77) plus T5's `max_sequence_length`.

    The same with T5 dropped: diffusers' SD3 pipeline then pads zeros of T5's full length
    (`_get_t5_prompt_embeds` returns max_sequence_length zero rows), so the transformer still
    runs on 77 + 256 = 333 tokens for SD3.5 (tests/test_latency.py checks this with a hook).
    `with_t5` is accepted for the callers that know it and changes nothing.
    """
    del with_t5
    return clip_tokens + max_sequence_length


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
    block_mac = adaln_mac = 0.0
    lin_in = lin_out = 0.0  # elements read / written by the blocks' FP8 linears

    # Embeddings: patchify conv, timestep + pooled text MLPs, text projection.
    mac += img * (c_in * p * p) * d
    mac += 256 * d + d * d + config["pooled_projection_dim"] * d + d * d
    mac += txt * config["joint_attention_dim"] * d
    for i in range(layers):
        last = i == layers - 1  # SD3's last block only reads the text (context_pre_only)
        chunks = DUAL_ADALN_CHUNKS if i in dual else ADALN_CHUNKS
        adaln_mac += d * chunks * d  # image AdaLN modulation (one conditioning vector)
        adaln_mac += d * (2 if last else ADALN_CHUNKS) * d  # text AdaLN modulation
        block_mac += img * (4 * d * d + 2 * FF_MULT * d * d)  # image q, k, v, out + MLP
        block_mac += txt * (3 * d * d if last else 4 * d * d + 2 * FF_MULT * d * d)  # text q, k, v (+ out, MLP)
        # Each linear reads its own input: q, k, v 3d, out d, MLP d and 4d; writes 3d, d, 4d, d.
        per_token = 9 * d
        lin_in += img * per_token + txt * (3 * d if last else per_token)
        lin_out += img * per_token + txt * (3 * d if last else per_token)
        n = img + txt
        attn_mac += 2 * n * n * d  # Q K^T and A V over the joint sequence
        if i in dual:
            block_mac += img * 4 * d * d  # second attention: q, k, v, out on image tokens
            lin_in += img * 4 * d
            lin_out += img * 4 * d
            attn_mac += 2 * img * img * d
    mac += block_mac + adaln_mac
    mac += d * 2 * d  # final AdaLN
    mac += img * d * (p * p * c_out)  # proj_out
    return PassWork(
        linear_flops=2 * mac,
        attention_flops=2 * attn_mac,
        image_tokens=img,
        text_tokens=txt,
        block_linear_flops=2 * block_mac,
        adaln_flops=2 * (adaln_mac + d * 2 * d),  # the blocks' and the final AdaLN
        block_linear_in=lin_in,
        block_linear_out=lin_out,
    )


def passes_per_step(guidance: float) -> int:
    """Classifier-free guidance runs the transformer on a conditional and an unconditional batch."""
    return 2 if guidance > 1.0 else 1


def vae_decode_flops(vae_config: dict, height: int, width: int) -> float:
    """FLOPs of diffusers' AutoencoderKL decoder for one image (convolutions and the mid-block
    attention; norms and activations left out), counted from the config.

    Decoder: conv_in (latent -> top channels), a mid block (2 resnets + single-head attention
    at the latent size), then up blocks from the top channels down, each with
    layers_per_block + 1 resnets and (all but the last) a 2x nearest upsample and a 3x3 conv;
    conv_out to RGB. SD3.5's VAE at 1024 px: about 10.5 TFLOP.
    """
    chans = list(reversed(vae_config["block_out_channels"]))
    factor = 2 ** (len(chans) - 1)
    h, w = height // factor, width // factor
    conv = lambda cin, cout, k, px: 2.0 * cin * cout * k * k * px  # noqa: E731

    def resnet(cin, cout, px):
        return conv(cin, cout, 3, px) + conv(cout, cout, 3, px) + (conv(cin, cout, 1, px) if cin != cout else 0.0)

    px = h * w
    total = conv(vae_config["latent_channels"], chans[0], 3, px)
    c = chans[0]
    total += 2 * resnet(c, c, px)
    total += 4 * 2.0 * px * c * c + 2 * 2.0 * px * px * c  # mid attention: q, k, v, out and the two matmuls
    for i, cout in enumerate(chans):
        for j in range(vae_config["layers_per_block"] + 1):
            total += resnet(c if j == 0 else cout, cout, px)
        c = cout
        if i < len(chans) - 1:
            px *= 4
            total += conv(c, c, 3, px)
    total += conv(c, vae_config["out_channels"], 3, px)
    return total


def encoder_flops(parameters: float, tokens: int) -> float:
    """A text encoder's forward FLOPs: 2 per parameter per token (its attention is small at 77
    or 256 tokens next to its linears)."""
    return 2.0 * parameters * tokens


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
