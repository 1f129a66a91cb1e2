"""How long one image takes on a card: the one latency model (pure: numbers in, seconds out; no torch).

Per stage (text encoders, each denoise step, VAE decode), a roofline per op class, summed over
the classes because their kernels run one after another:

- linears: FLOPs at the rate of the path they take (FP8 `scaled_mm` at the FP8 rate only where
  the card has FP8 matmul and the plan gives the layer that path; everything else, AdaLN
  modulation included, at the 16-bit rate), or their weight and input/output bytes at the
  memory bandwidth, whichever is longer;
- attention: 16-bit SDPA FLOPs at the 16-bit rate (never the FP8 rate);
- memory-bound kernels: elementwise work (norms, modulation, GELU, residuals; per execution
  path, eager or compiled), the FP8 activation quantizer (eager ~33 bytes per element, fused
  ~3) and the upcast path's dequantization, at the memory bandwidth;
- streaming: blocks not resident cross PCIe every transformer call at the rate group-offload
  hooks reach, overlapped with the streamed blocks' compute (the first one is not).

Each term is divided by the card class's efficiency (fp8pipe/cards.py); the floor is the same
sum at 100 % of every peak with no fixed overheads. Every number here is a prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .cards import EFFICIENCY, PEAK, Card, Efficiency
from .flops import encoder_flops, passes_per_step, text_tokens, transformer_pass_work, vae_decode_flops
from .specs import ModelSpec

# Bytes each FP8 linear's activation quantizer moves per input element: eager (abs, amax, float
# copy, divide, clamp, cast, each a kernel over the input) or fused by torch.compile (read 16-bit,
# write E4M3).
QUANTIZER_BYTES = {"eager": 33.0, "compiled": 3.0}
# Upcast (weight-only) path, per weight element per call: eager q.to(float32) * scale -> 16-bit,
# then the matmul reads it (1 + 4 + 4 + 4 + 4 + 2 + 2); fused: read 1, write 2, read 2.
DEQUANT_BYTES = {"eager": 21.0, "compiled": 5.0}
# Weight-only layers fed a few rows (AdaLN modulation: fp8.FEW_ROWS) cast the weight and scale
# the output instead (read 1, write 2, the matmul reads 2), eager or compiled alike.
FEW_ROWS_DEQUANT_BYTES = 5.0
# Elementwise traffic of one block per token, in 16-bit tensors of the block's width (reads and
# writes of norms, modulation, GELU, residuals, q/k norms, layout copies). Fitted to the H100
# runs: compiled BF16 vs the GEMM and attention time leaves ~26 widths; eager ~99 (the eager
# figure also carries kernel-launch gaps, which behave like traffic at this size).
ELEMENTWISE_WIDTHS = {"eager": 99.0, "compiled": 26.0}
# Of those, the q/k RMSNorms of SD3.5 (qk_norm "rms_norm"; SD3 Medium v1 has none). Eager,
# diffusers' RMSNorm upcasts to float32 and runs ~6 kernels over q and k: ~34 bytes per element,
# i.e. 17 widths per tensor, 34 for q and k; compiled, one read and one write of each.
QK_NORM_WIDTHS = {"eager": 34.0, "compiled": 4.0}
# What a prompt-to-image run spends outside the kernels counted here (scheduler, latents to PIL,
# Python): from the H100 kiosk runs (click-to-image minus its stages, ~0.05-0.1 s).
PIPELINE_OVERHEAD_S = 0.05
HOST_TFLOPS = 1.0  # a desktop CPU's bf16/fp32 matmul rate, for T5 kept on the host (assumed)
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


@dataclass(frozen=True)
class Job:
    """One image's work and where its weights live: everything the model needs, as numbers."""

    spec: ModelSpec
    width: int
    height: int
    steps: int
    guidance: float
    precision: str = "fp8"
    execution: str = "eager"  # "eager" or "compiled"
    t5: str = "drop"  # 16bit | fp8 | cpu | drop
    batch: int = 1
    block_bytes: tuple[int, ...] = ()  # each transformer block at `precision`
    rest_bytes: int = 0  # the transformer outside its blocks
    clip_bytes: int = 0
    t5_bytes: int = 0  # at its mode (16-bit on the host for "cpu")
    vae_bytes: int = 0
    placement: str = "resident"  # resident | partial | group_offload | model_offload | sequential
    resident_blocks: int | None = None  # partial / group_offload: blocks kept on the GPU
    vae_tiled: bool = False

    @property
    def rows(self) -> int:
        return self.batch * passes_per_step(self.guidance)


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    floor_seconds: float
    bound: str
    terms: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds per stage and in all, beside the floor (100 % of peak, no overheads)."""

    card: str
    latency_s: float
    floor_s: float
    step_s: float
    step_floor_s: float
    streamed_bytes_per_step: int
    fp8_matmul: bool
    stages: tuple[Stage, ...]
    kind: str = "prediction"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d


def pass_work(spec: ModelSpec, width: int, height: int):
    """FLOPs of one transformer pass for one image, on the text tokens the pipeline really feeds."""
    return transformer_pass_work(spec.transformer_config, height, width, text_tokens(spec.max_sequence_length, clip_tokens=spec.clip_tokens), spec.vae_scale_factor)


def fp8_matmul_runs(job: Job, card: Card) -> bool:
    """FP8 scaled_mm only where the weights are FP8 and the card has FP8 matmul."""
    return job.precision == "fp8" and card.fp8_tflops is not None


def streamed_blocks(job: Job) -> int:
    layers = len(job.block_bytes) or job.spec.transformer_config["num_layers"]
    if job.placement in ("partial", "group_offload"):
        return layers - (job.resident_blocks or 0)
    return 0


def streamed_bytes_per_step(job: Job) -> int:
    """Bytes crossing PCIe every transformer call (the blocks not resident)."""
    if job.placement == "sequential":
        return sum(job.block_bytes) + job.rest_bytes
    n = streamed_blocks(job)
    return sum(job.block_bytes[len(job.block_bytes) - n :]) if n else 0


def _transformer_call(job: Job, card: Card, eff: Efficiency) -> tuple[float, dict]:
    """Seconds of one transformer call (one step; CFG is one batch-2 call) on the GPU, no PCIe."""
    config = job.spec.transformer_config
    work = pass_work(job.spec, job.width, job.height)
    rows, mode = job.rows, job.execution
    d = config["num_attention_heads"] * config["attention_head_dim"]
    layers = config["num_layers"]
    fp8_weights = job.precision == "fp8"
    scaled = fp8_matmul_runs(job, card)
    lin8 = work.block_linear_flops * rows if scaled else 0.0
    lin16 = work.linear_flops * rows - lin8
    value = 4 if job.precision == "fp32" else 2
    weights = sum(job.block_bytes) + job.rest_bytes
    io = rows * (work.block_linear_in * (1 if scaled else value) + work.block_linear_out * value)
    rate16 = card.bf16_tflops * 1e12 * (0.5 if job.precision == "fp32" else 1.0)
    compute = lin16 / (rate16 * eff.matmul) + (lin8 / (card.fp8_tflops * 1e12 * eff.matmul) if scaled else 0.0)
    bandwidth = card.memory_gbps * 1e9 * eff.memory
    linears = max(compute, (weights + io) / bandwidth)
    attention = work.attention_flops * rows / (rate16 * eff.attention)
    tokens = work.image_tokens + work.text_tokens
    widths = ELEMENTWISE_WIDTHS[mode] - (0.0 if config.get("qk_norm") else QK_NORM_WIDTHS[mode])
    elementwise = rows * tokens * d * value * widths * layers
    quantizer = rows * work.block_linear_in * QUANTIZER_BYTES[mode] if scaled else 0.0
    # Weight-only layers dequantize once per call: all block linears on the upcast path, and the
    # AdaLN modulation linears (one row each: FP8 compute there cannot be faster) always.
    adaln_weights = work.adaln_flops / 2
    block_weights = max(0.0, _block_weight_elements(job) - adaln_weights)
    dequant = 0.0
    if fp8_weights:
        dequant = adaln_weights * FEW_ROWS_DEQUANT_BYTES + (0.0 if scaled else block_weights) * DEQUANT_BYTES[mode]
    memory_bound = (elementwise + quantizer + dequant) / bandwidth
    seconds = linears + attention + memory_bound
    terms = {"linears_s": linears, "attention_s": attention, "memory_bound_s": memory_bound, "quantizer_bytes": quantizer, "elementwise_bytes": elementwise}
    return seconds, terms


def _block_weight_elements(job: Job) -> float:
    return sum(job.block_bytes) / (1 if job.precision == "fp8" else WEIGHT_BYTES.get(job.precision, 2))


def _stream_rate(job: Job, card: Card, eff: Efficiency) -> float:
    share = eff.stream_fp8 if job.precision == "fp8" else eff.stream_16bit
    return card.pcie_gbps * 1e9 * eff.pinned_h2d * share


def _denoise_step(job: Job, card: Card, eff: Efficiency) -> tuple[float, dict]:
    device, terms = _transformer_call(job, card, eff)
    streamed = streamed_bytes_per_step(job)
    if job.placement == "sequential":
        stream = streamed / (card.pcie_gbps * 1e9 * eff.pageable_h2d)
        terms.update(stream_s=stream)
        return device + stream, terms  # one leaf at a time: nothing overlaps
    if not streamed:
        return device, terms
    total_blocks = sum(job.block_bytes) or 1
    share = streamed / total_blocks
    rate = _stream_rate(job, card, eff)
    stream = streamed / rate
    first = job.block_bytes[-streamed_blocks(job)] / rate  # the first streamed block waits for its copy
    seconds = device * (1 - share) + first + max(device * share, stream - first)
    terms.update(stream_s=stream, streamed_bytes=streamed)
    return seconds, terms


def _encode(job: Job, card: Card, eff: Efficiency) -> float:
    prompts = job.rows  # the negative prompt is encoded too under guidance
    bandwidth = card.memory_gbps * 1e9 * eff.memory
    clip = max(encoder_flops(job.clip_bytes / 2, 77 * prompts) / (card.bf16_tflops * 1e12 * eff.matmul), job.clip_bytes / bandwidth)
    t5 = 0.0
    if job.t5 in ("16bit", "fp8"):
        params = job.spec.t5_config["d_model"] * job.spec.t5_config["d_ff"] * 3 * job.spec.t5_config["num_layers"]
        params += 4 * job.spec.t5_config["d_model"] ** 2 * job.spec.t5_config["num_layers"]
        t5 = max(encoder_flops(params, job.spec.max_sequence_length * prompts) / (card.bf16_tflops * 1e12 * eff.matmul), job.t5_bytes / bandwidth)
        if job.t5 == "fp8":
            t5 += params * DEQUANT_BYTES["eager"] / bandwidth
    elif job.t5 == "cpu":
        params = job.t5_bytes / 2
        t5 = encoder_flops(params, job.spec.max_sequence_length * prompts) / (HOST_TFLOPS * 1e12 * (eff.matmul if eff is not PEAK else 1.0))
    return clip + t5


def _decode(job: Job, card: Card, eff: Efficiency) -> float:
    flops = vae_decode_flops(job.spec.vae_config, job.height, job.width) * job.batch
    if job.vae_tiled:
        flops *= 1.25  # overlapping tiles decode their shared borders twice (VAE_TILE_OVERLAP)
    return flops / (card.bf16_tflops * 1e12 * eff.conv)


def _offload_per_image(job: Job, card: Card, eff: Efficiency) -> float:
    """Model offload moves every component in once per image from pageable memory; sequential
    offload moves the encoders and the VAE layer by layer (the transformer is counted per step)."""
    encoders = job.clip_bytes + job.vae_bytes + (job.t5_bytes if job.t5 in ("16bit", "fp8") else 0)
    if job.placement == "model_offload":
        moved = sum(job.block_bytes) + job.rest_bytes + encoders
    elif job.placement == "sequential":
        moved = encoders
    else:
        return 0.0
    return moved / (card.pcie_gbps * 1e9 * eff.pageable_h2d)


def predict(job: Job, card: Card, efficiency: Efficiency | None = None) -> Prediction:
    """The predicted latency of one image on `card`, with its floor, per stage."""
    eff = efficiency or card.efficiency or EFFICIENCY[card.card_class]
    stages = []
    for name, fn in (("encode", _encode), ("offload", _offload_per_image), ("decode", _decode)):
        stages.append((name, fn(job, card, eff), fn(job, card, PEAK)))
    step, terms = _denoise_step(job, card, eff)
    step_floor, _ = _denoise_step(job, card, PEAK)
    stages.insert(1, ("denoise", job.steps * step, job.steps * step_floor))
    out = []
    for name, seconds, floor in stages:
        bound = ""
        if name == "denoise":
            bound = "pcie" if terms.get("stream_s", 0) > terms["linears_s"] + terms["attention_s"] + terms["memory_bound_s"] else "gpu"
        out.append(Stage(name, seconds, floor, bound, terms if name == "denoise" else {}))
    latency = sum(s.seconds for s in out) + PIPELINE_OVERHEAD_S
    floor = sum(s.floor_seconds for s in out)
    return Prediction(
        card=card.name,
        latency_s=latency,
        floor_s=floor,
        step_s=step,
        step_floor_s=step_floor,
        streamed_bytes_per_step=streamed_bytes_per_step(job),
        fp8_matmul=fp8_matmul_runs(job, card),
        stages=tuple(out),
    )
