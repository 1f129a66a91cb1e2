"""Projected latency floors on named cards from counted work and bytes: a projection, never a measurement.

The floor of one transformer pass is the largest of: its FLOPs at the card's dense tensor
rate, its weight bytes at the card's memory bandwidth, and (when the weights do not fit in
VRAM) its weight bytes over PCIe. Real runs are slower (kernel efficiency, attention,
text encoders, VAE, launch overheads); the ratio measured/floor is what the benchmark reports.
"""

from __future__ import annotations

from dataclasses import asdict

from .cards import CARDS, Card  # noqa: F401  (CARDS re-exported: the cards live in fp8pipe/cards.py)
from .flops import image_flops, passes_per_step, text_tokens, transformer_pass_work, transformer_weight_bytes
from .specs import ModelSpec

GIB = 2**30
VRAM_USABLE = 0.9  # CUDA context, allocator slack and activations take the rest
# Weights of the other components, counted from the public configs (parameters x 2 bytes in 16-bit):
# CLIP-L 123.7 M + CLIP-G 694.7 M parameters, VAE 83.7 M, T5-XXL encoder 4.76 B of which
# 3.62 B (attention q/k/v/o and the gated MLP's wi_0/wi_1) are FP8 under fp8.T5_POLICY.
CLIP_BYTES = int((123.7e6 + 694.7e6) * 2)
VAE_BYTES = int(83.7e6 * 2)
T5_BYTES = {"16bit": int(4.76e9 * 2), "fp8": int(3.62e9 * 1 + (4.76e9 - 3.62e9) * 2), "drop": 0}




def project(
    spec: ModelSpec,
    card: Card,
    precision: str,
    resolution: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    t5: str = "16bit",
    weight_bytes: int | None = None,
) -> dict:
    """The projected floor (seconds) of the transformer loop for one image on `card`.

    Placement follows from the bytes: everything resident if it fits in VRAM_USABLE; else
    the transformer resident and the encoders moved in per image (model offload); else the
    transformer's weights streamed over PCIe every pass. Text encoders and VAE FLOPs are not
    counted. `weight_bytes` skips the meta-device count when the caller has it.
    """
    resolution = resolution or spec.resolution
    steps = steps or spec.steps
    guidance = spec.guidance if guidance is None else guidance
    config = spec.transformer_config
    txt = text_tokens(spec.max_sequence_length, clip_tokens=spec.clip_tokens)
    pass_flops = transformer_pass_work(config, resolution, resolution, txt, spec.vae_scale_factor).flops
    passes = passes_per_step(guidance)
    weights = weight_bytes if weight_bytes is not None else transformer_weight_bytes(config, precision)
    others = CLIP_BYTES + VAE_BYTES + T5_BYTES[t5]
    usable = card.vram_gib * GIB * VRAM_USABLE
    fp8_matmul = precision == "fp8" and card.fp8_tflops is not None
    rate = (card.fp8_tflops if fp8_matmul else card.bf16_tflops) * 1e12
    compute_s = passes * pass_flops / rate  # a CFG step is one batch-2 pass: weights read once
    memory_s = weights / (card.memory_gbps * 1e9)
    if weights + others <= usable:
        placement, per_image_transfer, stream_s = "resident", 0.0, 0.0
    elif weights <= usable:
        placement, per_image_transfer, stream_s = "model_offload", (weights + others) / (card.pcie_gbps * 1e9), 0.0
    else:
        placement, per_image_transfer, stream_s = "stream_weights", others / (card.pcie_gbps * 1e9), weights / (card.pcie_gbps * 1e9)
    step_s = max(compute_s, memory_s, stream_s)
    predicted = _latency_prediction(spec, card, precision, resolution, steps, guidance, t5, placement)
    return {
        "kind": "projection",
        "card": card.name,
        "model": spec.name,
        "precision": precision,
        "matmul": "fp8" if fp8_matmul else ("upcast to 16-bit" if precision == "fp8" else precision),
        "resolution": resolution,
        "steps": steps,
        "guidance": guidance,
        "t5": t5,
        "tflop_per_image": image_flops(config, resolution, resolution, steps, guidance, txt, spec.vae_scale_factor) / 1e12,
        "transformer_bytes": weights,
        "other_bytes": others,
        "placement": placement,
        "step_floor_s": step_s,
        "bound": "compute" if step_s == compute_s else ("memory" if step_s == memory_s else "pcie"),
        "latency_floor_s": steps * step_s + per_image_transfer,
        "card_constants": asdict(card),
        # The latency model's whole-pipeline prediction for the same case (fp8pipe/latency.py),
        # with its floor: what the planner ranks by. The floor fields above are the old bound.
        "predicted_latency_s": predicted.latency_s if predicted else None,
        "predicted_floor_s": predicted.floor_s if predicted else None,
    }


def _latency_prediction(spec: ModelSpec, card: Card, precision: str, resolution: int, steps: int, guidance: float, t5: str, placement: str):
    """fp8pipe.latency's prediction for a known family, in the placement the projection chose."""
    from . import latency
    from .sizes import component_sizes
    from .specs import SPECS

    if spec.name not in SPECS or precision not in ("fp8", "bf16", "fp16", "fp32"):
        return None
    sizes = component_sizes(spec.name, precision)
    where = {"resident": "resident", "model_offload": "model_offload", "stream_weights": "group_offload"}[placement]
    job = latency.Job(
        spec=spec, width=resolution, height=resolution, steps=steps, guidance=guidance, precision=precision, t5=t5,
        block_bytes=sizes.transformer_block_bytes, rest_bytes=sizes.transformer - sizes.transformer_blocks,
        clip_bytes=sizes.clip_l + sizes.clip_g, t5_bytes={"16bit": sizes.t5_16bit, "fp8": sizes.t5_fp8}.get(t5, 0),
        vae_bytes=sizes.vae, placement=where, resident_blocks=0 if where == "group_offload" else None,
    )
    return latency.predict(job, card)
