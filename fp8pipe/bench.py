"""Benchmark harness: BF16 against FP8 on full-size SD3.5 with random weights, side by side in one run.

Every model is built on the meta device and each tensor is then made once, on the target
device, in its final dtype (FP8 weights as random E4M3 bytes with plausible row scales), so a
host with less RAM than the model can still run it. Each case (architecture x precision x
resolution x steps x guidance x placement x compile) gets a fresh pipeline, one uncounted
warm-up image, then `repeats` counted images. Rows carry the counted work (flops.py), and the
FP8/BF16 ratios are taken between rows of the same run. A fidelity proxy compares the FP8
transformer with the BF16 one it was quantized from, on identical inputs.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from . import fp8 as fp8_mod
from .flops import passes_per_step, text_tokens, transformer_pass_work
from .fp8 import FP8_DTYPE, T5_POLICY, TRANSFORMER_POLICY, FP8Linear, choose_path, relative_l2, swap_linears_to_fp8
from .generation import free_memory
from .loader import _empty_transformer, cast_io_to, component_dtype, resolve_device, transformer_compute_dtype
from .memory import parse_size  # one reading of sizes project-wide: binary units, 8GB == 8GiB
from .specs import SPECS, ModelSpec, find_spec

GIB = 2**30
ARCHS = {"large": "sd3.5-large", "large-turbo": "sd3.5-large-turbo", "medium": "sd3.5-medium", "tiny": "demo"}
BENCH_PRECISIONS = ("bf16", "fp8")
PLACEMENTS = ("resident", "model_offload")
COMPILE_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
BENCH_T5 = ("16bit", "fp8", "drop")
PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, golden hour"
HOST_USABLE = 0.8  # a CPU case runs only when its weights fit in this share of the available RAM
RATIO_KEYS = ("step_time_s", "peak_memory_bytes", "latency_s")  # fp8 / bf16 of these, per matching pair

# Random E4M3 weights: codes 0x40..0x7E are the magnitudes 2 .. 448 (0x7F is NaN), drawn
# uniformly, which spreads a row over the top of the range as quantized weights do (amax -> 448).
FP8_CODE_LOW, FP8_CODE_HIGH = 0x40, 0x7F


# ---- random weights, made in their final dtype ------------------------------------------


def resolve_arch(name: str) -> ModelSpec:
    spec = SPECS.get(ARCHS.get(name.strip().lower(), "")) or find_spec(name)
    if spec is None:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHS)}")
    return spec


def _fp8_code_rms() -> float:
    codes = torch.arange(FP8_CODE_LOW, FP8_CODE_HIGH, dtype=torch.uint8).view(FP8_DTYPE).float()
    return codes.pow(2).mean().sqrt().item()


def random_e4m3(shape, device, generator) -> torch.Tensor:
    """Random E4M3 values drawn as bytes (sign bit + code), never through a 16-bit tensor."""
    codes = torch.randint(FP8_CODE_LOW, FP8_CODE_HIGH, shape, dtype=torch.uint8, device=device, generator=generator)
    signs = torch.randint(0, 2, shape, dtype=torch.uint8, device=device, generator=generator) * 0x80
    return (codes | signs).view(FP8_DTYPE)


def _random_param(module: nn.Module, attr: str, t: torch.Tensor, device, dtype, gen) -> torch.Tensor:
    if isinstance(module, FP8Linear):
        if attr == "weight":
            return random_e4m3(t.shape, device, gen)
        if attr == "scale":  # row scales so that q * scale has std ~ 1/sqrt(fan_in), +-10% per row
            jitter = 1 + 0.1 * torch.randn(t.shape, device=device, generator=gen, dtype=torch.float32)
            return jitter / (math.sqrt(module.in_features) * _fp8_code_rms())
        return torch.zeros(t.shape, device=device, dtype=module.compute_dtype)
    if not t.is_floating_point():
        raise ValueError(f"no random rule for the integer parameter {attr} of {type(module).__name__}")
    if t.dim() >= 2:  # Linear, Conv, Embedding: std 1/sqrt(fan_in)
        fan_in = math.prod(t.shape[1:])
        return torch.randn(t.shape, device=device, dtype=dtype, generator=gen).mul_(1 / math.sqrt(fan_in))
    if attr == "weight":  # norm scales
        return torch.ones(t.shape, device=device, dtype=dtype)
    return torch.zeros(t.shape, device=device, dtype=dtype)  # biases


def _computed_buffer(module: nn.Module, attr: str, t: torch.Tensor, device, dtype) -> torch.Tensor:
    """Buffers hold facts, not weights: compute them as the module's constructor does."""
    from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed

    if isinstance(module, PatchEmbed) and attr == "pos_embed":
        grid = module.pos_embed_max_size or int(math.sqrt(t.shape[1]))
        table = get_2d_sincos_pos_embed(
            module.proj.out_channels, grid, base_size=module.base_size, interpolation_scale=module.interpolation_scale, device=device, output_type="pt"
        )
        return table.float().unsqueeze(0).to(dtype)
    if attr == "position_ids":
        return torch.arange(t.shape[-1], device=device).expand(t.shape).clone()
    raise ValueError(f"no rule to compute the buffer {attr} of {type(module).__name__}")


@torch.no_grad()
def materialize_random_(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Replace every meta tensor of `model` by a random one made on `device` in its final dtype.

    Tied parameters stay tied; buffers are computed (position tables, position ids).
    """
    gen = torch.Generator(device).manual_seed(seed)
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for attr, t in list(module._parameters.items()):
            if t is None or not t.is_meta:
                continue
            if id(t) not in made:
                made[id(t)] = nn.Parameter(_random_param(module, attr, t, device, dtype, gen), requires_grad=False)
            module._parameters[attr] = made[id(t)]
        for attr, t in list(module._buffers.items()):
            if t is not None and t.is_meta:
                module._buffers[attr] = _computed_buffer(module, attr, t, device, dtype)
    return model


def _meta_transformer(config: dict, precision: str, compute: torch.dtype, fp8_path: str) -> nn.Module:
    model = _empty_transformer(config)
    if precision == "fp8":
        swap_linears_to_fp8(model, TRANSFORMER_POLICY, fp8_path, compute, quantize_weights=False)
    return model


def random_transformer(
    config: dict, precision: str, device: torch.device, seed: int, fp8_path: str = "upcast", dtype=None, make_on: torch.device | None = None
) -> nn.Module:
    """An SD3 transformer with random weights at `precision` for `device` (compute dtype as the
    loader's, or `dtype` when given), made on `make_on` (default `device`; the CPU for offload),
    never holding a second copy of any tensor."""
    compute = dtype or transformer_compute_dtype(precision, device)
    model = _meta_transformer(config, precision, compute, fp8_path)
    materialize_random_(model, make_on or device, compute, seed)
    if dtype is None and compute != component_dtype(device):
        cast_io_to(model, compute)
    return model.eval()


def _meta_components(spec: ModelSpec, t5: str, dtype: torch.dtype):
    """(CLIP tokenizer, T5 tokenizer, {name: model on the meta device}) for the text encoders and VAE."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from .tiny import build_clip_tokenizer, build_t5_tokenizer

    clip_tok, t5_tok = build_clip_tokenizer(), build_t5_tokenizer()
    ids = {"bos_token_id": clip_tok.bos_token_id, "eos_token_id": clip_tok.eos_token_id, "pad_token_id": clip_tok.pad_token_id}
    with torch.device("meta"):
        parts = {
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**{"vocab_size": len(clip_tok), **spec.clip_l_config, **ids})),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**{"vocab_size": len(clip_tok), **spec.clip_g_config, **ids})),
            "text_encoder_3": None
            if t5 == "drop"
            else T5EncoderModel(T5Config(**{"vocab_size": len(t5_tok), **spec.t5_config, "pad_token_id": 0, "eos_token_id": 1})),
            "vae": AutoencoderKL.from_config(spec.vae_config),
        }
    if parts["text_encoder_3"] is not None and t5 == "fp8":
        swap_linears_to_fp8(parts["text_encoder_3"], T5_POLICY, "upcast", dtype, quantize_weights=False)
    return clip_tok, t5_tok, parts


def made_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Bytes a meta-device `model` takes once made in `dtype` (FP8 weights 1 byte, row scales 4)."""
    scales = {id(m.scale) for m in model.modules() if isinstance(m, FP8Linear)}
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype == FP8_DTYPE or not t.is_floating_point():
            width = t.element_size()
        else:
            width = 4 if id(t) in scales else dtype.itemsize
        total += t.numel() * width
    return total


def pipeline_weight_bytes(spec: ModelSpec, precision: str, device: torch.device, t5: str = "16bit") -> dict[str, int]:
    """Bytes of each component's weights as `random_pipeline` makes them for `device` (meta build only)."""
    dtype = component_dtype(device)
    compute = transformer_compute_dtype(precision, device)
    _, _, parts = _meta_components(spec, t5, dtype)
    sizes = {name: made_bytes(model, dtype) for name, model in parts.items() if model is not None}
    sizes["transformer"] = made_bytes(_meta_transformer(spec.transformer_config, precision, compute, "upcast"), compute)
    return sizes


def random_pipeline(
    spec: ModelSpec, precision: str, device: torch.device, seed: int = 0, t5: str = "16bit", fp8_path: str = "upcast", make_on: torch.device | None = None
):
    """A StableDiffusion3Pipeline of `spec` with random weights in `device`'s dtypes, every component
    made on `make_on` (default `device`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    dtype = component_dtype(device)
    clip_tok, t5_tok, parts = _meta_components(spec, t5, dtype)
    for i, name in enumerate(("text_encoder", "text_encoder_2", "text_encoder_3", "vae")):
        if parts[name] is not None:
            parts[name] = materialize_random_(parts[name], make_on or device, dtype, seed + 1 + i).eval()
    transformer = random_transformer(spec.transformer_config, precision, device, seed, fp8_path, make_on=make_on)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift),
        tokenizer=clip_tok,
        tokenizer_2=clip_tok,
        tokenizer_3=t5_tok if parts["text_encoder_3"] is not None else None,
        **parts,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cpu_refusal(spec: ModelSpec, device: torch.device, options: "BenchOptions") -> str | None:
    """Why a full-size model will not run on the CPU (None where it may)."""
    if device.type == "cpu" and spec.hub_id is not None and not options.cpu_full_size:  # the SD3.5 families, not the demo
        return f"{spec.name} is full-size and the device is the CPU (use a GPU, --arch tiny, or --cpu-full-size)"
    return None


def host_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---- speed switches -------------------------------------------------------------------


def fuse_activation_quant_(model: nn.Module) -> int:
    """Give every FP8Linear one compiled activation quantizer (amax, scale, clamp and cast in one
    kernel instead of four); returns how many layers got it."""
    fused = torch.compile(fp8_mod._quantize_activation_rows, dynamic=True)
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for m in layers:
        m.quantize_activation = fused
    return len(layers)


def compile_transformer_(model: nn.Module, mode: str = "default") -> None:
    """Compile the transformer's forward in place; hooks (step timing, dtype casts) stay outside
    the graph. mode "reduce-overhead" adds CUDA graphs on a GPU."""
    model.forward = torch.compile(model.forward, mode=None if mode == "default" else mode, dynamic=False)


# ---- measurement -----------------------------------------------------------------------


class StepTimer:
    """Times each transformer forward: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list = []
        self._start = None
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _pre(self, *_):
        self._start = self._now()

    def _post(self, *_):
        self._marks.append((self._start, self._now()))

    def reset(self) -> None:
        self._marks = []

    def seconds(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in self._marks]
        return [b - a for a, b in self._marks]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def reset_host_peak() -> bool:
    """Reset the process's peak resident set (Linux clear_refs 5); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def apply_vram_limit(limit: int | None, device: torch.device) -> dict:
    """Cap this process's CUDA allocations at `limit` bytes, so a large card behaves like a small one."""
    if limit is None:
        return {"requested_bytes": None, "applied": False, "note": "no cap"}
    if device.type != "cuda":
        return {"requested_bytes": limit, "applied": False, "note": f"not applied: {device.type} device has no VRAM"}
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
    return {"requested_bytes": limit, "applied": True, "note": f"cap {limit / GIB:.2f} GiB of {total / GIB:.2f} GiB (set_per_process_memory_fraction)"}


@dataclass(frozen=True)
class Case:
    arch: str
    precision: str
    resolution: int
    steps: int
    guidance: float
    placement: str = "resident"
    compile: bool = False


@dataclass(frozen=True)
class BenchOptions:
    device: str = "auto"
    t5: str = "16bit"
    fp8_path: str = "auto"
    compile_mode: str = "default"
    fuse_quant: bool = False
    repeats: int = 3
    warmup: int = 1
    min_warmup_s: float = 10.0
    cpu_full_size: bool = False  # full-size models on the CPU take minutes per image and all the RAM
    seed: int = 0


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_pipe(pipe, case: Case, spec: ModelSpec, seed: int):
    return pipe(
        prompt=PROMPT,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        height=case.resolution,
        width=case.resolution,
        generator=torch.Generator("cpu").manual_seed(seed),
        max_sequence_length=spec.max_sequence_length,
        output_type="pil",
    ).images[0]


def case_work(case: Case, spec: ModelSpec, t5: str) -> dict:
    txt = text_tokens(spec.max_sequence_length, with_t5=t5 != "drop")
    work = transformer_pass_work(spec.transformer_config, case.resolution, case.resolution, txt, spec.vae_scale_factor)
    per_step = passes_per_step(case.guidance) * work.flops
    return {"image_tokens": work.image_tokens, "text_tokens": txt, "tflop_per_step": per_step / 1e12, "tflop_per_image": case.steps * per_step / 1e12}


@torch.inference_mode()
def run_case(case: Case, options: BenchOptions) -> dict:
    """Build a fresh random-weight pipeline for `case`, warm it up, and measure it."""
    spec = resolve_arch(case.arch)
    device = resolve_device(options.device)
    fp8_path = choose_path(device, options.fp8_path) if case.precision == "fp8" else None
    row = {**asdict(case), "model": spec.name, "fp8_path": fp8_path, "t5": options.t5, "device": str(device), **case_work(case, spec, options.t5)}
    if case.placement == "model_offload" and device.type != "cuda":
        return {**row, "status": "skipped", "error": "model_offload needs a CUDA device"}
    refusal = cpu_refusal(spec, device, options)
    if refusal:
        return {**row, "status": "skipped", "error": refusal}
    make_on = torch.device("cpu") if case.placement == "model_offload" else device
    row["weight_bytes"] = pipeline_weight_bytes(spec, case.precision, device, options.t5)
    available = host_available_bytes() if make_on.type == "cpu" else None
    if available is not None and sum(row["weight_bytes"].values()) > HOST_USABLE * available:
        need = sum(row["weight_bytes"].values()) / GIB
        return {**row, "status": "skipped", "error": f"the weights need {need:.1f} GiB of host RAM; {available / GIB:.1f} GiB is available"}
    free_memory(device)
    host_resettable = reset_host_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe = transformer = timer = None
    try:
        start = time.perf_counter()
        pipe = random_pipeline(spec, case.precision, device, options.seed, options.t5, fp8_path or "upcast", make_on)
        if case.placement == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
        _synchronize(device)
        row["load_s"] = time.perf_counter() - start
        transformer = pipe.transformer
        row["transformer_weight_bytes"] = sum(t.numel() * t.element_size() for t in [*transformer.parameters(), *transformer.buffers()])
        if case.precision == "fp8" and options.fuse_quant:
            fuse_activation_quant_(transformer)
        if case.compile:
            torch._dynamo.reset()  # each case compiles a new model: stay clear of the recompile limit
            compile_transformer_(transformer, options.compile_mode)
        timer = StepTimer(transformer, device)
        start = time.perf_counter()
        warmed = 0  # at least `warmup` images and `min_warmup_s` seconds: a busy or cold machine settles first
        while warmed < options.warmup or (warmed and time.perf_counter() - start < options.min_warmup_s):
            _run_pipe(pipe, case, spec, options.seed + warmed)
            _synchronize(device)
            warmed += 1
        row["warmup_s"] = time.perf_counter() - start  # includes compilation when compiling
        row["warmup_images"] = warmed
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timer.reset()
        latencies = []
        for i in range(options.repeats):
            start = time.perf_counter()
            image = _run_pipe(pipe, case, spec, options.seed + i)
            _synchronize(device)
            latencies.append(time.perf_counter() - start)
        steps = timer.seconds()
        row.update(
            status="ok",
            latencies_s=latencies,
            latency_s=statistics.median(latencies),
            step_times_s=steps,
            step_time_s=statistics.median(steps),
            transformer_calls=len(steps),
            image_size=list(image.size),
        )
        row["achieved_tflops"] = row["tflop_per_step"] / row["step_time_s"]
        if device.type == "cuda":
            row["peak_vram_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            row["peak_vram_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        else:
            row["peak_vram_allocated_bytes"] = row["peak_vram_reserved_bytes"] = None
    except Exception as e:  # one failing case (an OOM under the cap) must not end the run
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        row.update(status="oom" if oom else "error", error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
    finally:
        if timer is not None:
            timer.remove()
        pipe = transformer = timer = None
        free_memory(device)
    row["peak_host_bytes"] = host_peak_bytes()
    row["peak_host_kind"] = "case (VmHWM reset per case)" if host_resettable else "process lifetime (VmHWM could not be reset)"
    if row.get("status") == "ok":
        on_gpu = device.type == "cuda"
        row["peak_memory_bytes"] = row["peak_vram_allocated_bytes"] if on_gpu else row["peak_host_bytes"]
        row["peak_memory_kind"] = "vram_allocated" if on_gpu else "host_rss"
    return row


def _pair_key(row: dict) -> tuple:
    return tuple(row[k] for k in ("arch", "resolution", "steps", "guidance", "placement", "compile"))


def add_ratios(rows: list[dict]) -> None:
    """Put `fp8_vs_bf16` (fp8 / bf16 of step time, peak memory, latency) on each FP8 row whose BF16
    twin (same case otherwise) ran in this run; None where there is no twin."""
    bf16 = {_pair_key(r): r for r in rows if r["precision"] == "bf16" and r.get("status") == "ok"}
    for row in rows:
        if row["precision"] != "fp8":
            row["fp8_vs_bf16"] = None
            continue
        twin = bf16.get(_pair_key(row))
        if twin is None or row.get("status") != "ok":
            row["fp8_vs_bf16"] = None
            continue
        row["fp8_vs_bf16"] = {k: row[k] / twin[k] if twin[k] else None for k in RATIO_KEYS}


# ---- fidelity ----------------------------------------------------------------------------


@torch.inference_mode()
def fidelity(spec: ModelSpec, resolution: int, steps: int, guidance: float, device: torch.device, seed: int = 0, fp8_path: str = "auto") -> dict:
    """Relative L2 of the FP8 transformer against the BF16 one it is quantized from.

    One random BF16 transformer runs a denoising loop on random text embeddings; its Linear
    weights are then quantized in place (FP8 = quantization of those BF16 weights, all else
    unchanged, bf16 compute for both). `per_step_rel_l2`: the FP8 output on the BF16 loop's
    own inputs, step by step (no accumulation); `final_latent_rel_l2`: the FP8 loop run on its
    own from the same noise, against the BF16 final latent.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = spec.transformer_config
    path = choose_path(device, fp8_path)
    dtype = torch.bfloat16
    model = random_transformer(config, "bf16", device, seed, dtype=dtype)
    gen = torch.Generator("cpu").manual_seed(seed)
    batch = passes_per_step(guidance)
    txt = text_tokens(spec.max_sequence_length)
    text = torch.randn(batch, txt, config["joint_attention_dim"], generator=gen).to(device, dtype)
    pooled = torch.randn(batch, config["pooled_projection_dim"], generator=gen).to(device, dtype)
    size = resolution // spec.vae_scale_factor
    noise = torch.randn(1, config["in_channels"], size, size, generator=gen).to(device)

    def predict(latents, t):
        out = model(
            hidden_states=latents.repeat(batch, 1, 1, 1).to(dtype),
            timestep=t.expand(batch),
            encoder_hidden_states=text,
            pooled_projections=pooled,
            return_dict=False,
        )[0].float()
        if batch == 2:
            uncond, cond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        return out

    def denoise():
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.shift)
        scheduler.set_timesteps(steps, device=device)
        latents, record = noise.clone(), []
        for t in scheduler.timesteps:
            pred = predict(latents, t)
            record.append((latents, t, pred))
            latents = scheduler.step(pred, t, latents, return_dict=False)[0]
        return record, latents

    reference, final_bf16 = denoise()
    quantized = swap_linears_to_fp8(model, TRANSFORMER_POLICY, path, dtype, quantize_weights=True)
    per_step = [relative_l2(predict(latents, t), pred) for latents, t, pred in reference]
    _, final_fp8 = denoise()
    del model
    free_memory(device)
    return {
        "model": spec.name,
        "resolution": resolution,
        "steps": steps,
        "guidance": guidance,
        "fp8_path": path,
        "quantized_layers": len(quantized),
        "per_step_rel_l2": per_step,
        "max_step_rel_l2": max(per_step),
        "final_latent_rel_l2": relative_l2(final_fp8, final_bf16),
        "finite": bool(torch.isfinite(final_bf16).all() and torch.isfinite(final_fp8).all()),  # random weights can overflow
    }


# ---- the run -----------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    import diffusers
    import transformers

    env = {
        "device": str(device),
        "device_name": None,
        "driver": None,
        "cuda_runtime": torch.version.cuda,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "host_ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, vram_bytes=props.total_memory, compute_capability=f"{props.major}.{props.minor}", driver=_nvidia_driver())
    else:
        env["device_name"] = env["cpu"]
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nvidia_driver() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def still_to_measure(device: torch.device, rows: list[dict]) -> list[str]:
    """What this run could not measure, said in the report instead of left blank."""
    if device.type == "cuda":
        return [f"{r['model']} {r['precision']} {r['resolution']}px: {r['status']} ({r.get('error', '')})" for r in rows if r.get("status") != "ok"]
    return [
        "GPU step time and achieved TFLOP/s, BF16 and FP8 (scaled_mm), for sd3.5-large, sd3.5-large-turbo and sd3.5-medium at 512/768/1024 px",
        "peak VRAM (allocated and reserved) per case, and which cases fit under --vram-limit 8GiB",
        "end-to-end latency with full-size CLIP-L/G, T5-XXL (16-bit, fp8, dropped) and VAE on a GPU",
        "speed-up of --compile, --compile-mode reduce-overhead (CUDA graphs) and --fuse-quant on a GPU",
        "model_offload placement (needs CUDA)",
        "fidelity (relative L2 FP8 vs BF16) at full size",
    ]


def make_cases(archs, precisions, resolutions, steps, guidance, placements, compiles) -> list[Case]:
    cases = []
    for arch in archs:
        spec = resolve_arch(arch)
        for res in resolutions or [spec.resolution]:
            if res % spec.size_multiple:
                raise ValueError(f"resolution {res} is not a multiple of {spec.size_multiple} for {spec.name}")
            for placement in placements:
                for compiled in compiles:
                    for precision in precisions:
                        cases.append(
                            Case(
                                arch=arch,
                                precision=precision,
                                resolution=res,
                                steps=steps or spec.steps,
                                guidance=spec.guidance if guidance is None else guidance,
                                placement=placement,
                                compile=compiled,
                            )
                        )
    return cases


def run_bench(cases: list[Case], options: BenchOptions, vram_limit: int | None = None, with_fidelity: bool = True, command: str = "", log=print) -> dict:
    """Measure every case and the fidelity proxy; returns the report (JSON-ready dict)."""
    device = resolve_device(options.device)
    fid = []
    if with_fidelity and {"bf16", "fp8"} <= {c.precision for c in cases}:
        seen = set()
        for c in cases:  # fidelity runs before the VRAM cap: the BF16 master must fit
            key = (c.arch, c.resolution, c.steps, c.guidance)
            if key in seen:
                continue
            seen.add(key)
            log(f"fidelity {c.arch} {c.resolution}px {c.steps} steps ...")
            spec = resolve_arch(c.arch)
            refusal = cpu_refusal(spec, device, options)
            if refusal:
                fid.append({"model": spec.name, "resolution": c.resolution, "steps": c.steps, "guidance": c.guidance, "error": "skipped: " + refusal})
                continue
            need = made_bytes(_meta_transformer(spec.transformer_config, "bf16", torch.bfloat16, "upcast"), torch.bfloat16)
            available = host_available_bytes() if device.type == "cpu" else None
            if available is not None and need > HOST_USABLE * available:
                error = f"skipped: the BF16 transformer needs {need / GIB:.1f} GiB of host RAM; {available / GIB:.1f} GiB is available"
                fid.append({"model": spec.name, "resolution": c.resolution, "steps": c.steps, "guidance": c.guidance, "error": error})
                continue
            try:
                fid.append(fidelity(resolve_arch(c.arch), c.resolution, c.steps, c.guidance, device, options.seed, options.fp8_path))
            except Exception as e:
                fid.append({"model": resolve_arch(c.arch).name, "resolution": c.resolution, "steps": c.steps, "guidance": c.guidance, "error": f"{type(e).__name__}: {e}"[:300]})
            free_memory(device)
    limit = apply_vram_limit(vram_limit, device)
    rows = []
    for i, case in enumerate(cases, 1):
        log(f"[{i}/{len(cases)}] {case.arch} {case.precision} {case.resolution}px {case.steps} steps cfg {case.guidance} {case.placement} compile={case.compile} ...")
        row = run_case(case, options)
        log(f"    {row['status']}" + (f": step {row['step_time_s'] * 1000:.1f} ms, image {row['latency_s']:.2f} s" if row["status"] == "ok" else f": {row.get('error', '')}"))
        rows.append(row)
    add_ratios(rows)
    by_key = {(f["model"], f["resolution"], f["steps"], f["guidance"]): f for f in fid}
    for row in rows:
        f = by_key.get((row["model"], row["resolution"], row["steps"], row["guidance"])) if row["precision"] == "fp8" else None
        row["fidelity"] = {k: f[k] for k in ("max_step_rel_l2", "final_latent_rel_l2")} if f and "error" not in f else None
    return {
        "schema": 1,
        "kind": "measurement",
        "weights": "random (full-size architectures from fp8pipe.specs; FP8 weights random E4M3 bytes)",
        "command": command,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": environment(device),
        "vram_limit": limit,
        "options": asdict(options),
        "prompt": PROMPT,
        "rows": rows,
        "fidelity": fid,
        "still_to_measure": still_to_measure(device, rows),
    }


# ---- output ----------------------------------------------------------------------------


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
    from .flops import transformer_weight_bytes
    from .projection import CARDS, project

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

    from .projection import VRAM_USABLE

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


# ---- command line ------------------------------------------------------------------------


def _csv(kind):
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def add_bench_command(subparsers) -> None:
    from .projection import CARDS

    b = subparsers.add_parser("bench", help="BF16 against FP8 on full-size SD3.5 (random weights) in one run, or --project")
    b.add_argument("--arch", type=_csv(str), default=["tiny"], help=f"comma list of {', '.join(ARCHS)} (default tiny, which runs on the CPU)")
    b.add_argument("--precision", type=_csv(str), default=list(BENCH_PRECISIONS), help="comma list of bf16, fp8 (default both)")
    b.add_argument("--resolution", type=_csv(int), default=None, help="comma list of square sizes in px (default: the model's)")
    b.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    b.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's; <= 1 runs one pass per step)")
    b.add_argument("--placement", type=_csv(str), default=["resident"], help=f"comma list of {', '.join(PLACEMENTS)}")
    b.add_argument("--compile", nargs="?", const="on", default="off", choices=list(COMPILE_CHOICES), help="torch.compile the transformer: off (default), on, both")
    b.add_argument("--compile-mode", default="default", choices=COMPILE_MODES, help="reduce-overhead adds CUDA graphs on a GPU")
    b.add_argument("--fuse-quant", action="store_true", help="FP8: one compiled kernel for the activation quantization")
    b.add_argument("--t5", default="16bit", choices=BENCH_T5)
    b.add_argument("--fp8-path", default="auto", choices=("auto", "scaled_mm", "upcast"))
    b.add_argument("--device", default="auto")
    b.add_argument("--vram-limit", default=None, help="cap GPU memory, e.g. 8GiB (torch.cuda.set_per_process_memory_fraction)")
    b.add_argument("--repeats", type=int, default=3, help="counted images per case (default 3)")
    b.add_argument("--warmup", type=int, default=1, help="uncounted images per case, at least (default 1)")
    b.add_argument("--min-warmup-s", type=float, default=10.0, help="keep warming up until this many seconds have passed (default 10)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cpu-full-size", action="store_true", help="allow full-size models on the CPU (slow, and needs the RAM)")
    b.add_argument("--no-fidelity", action="store_true", help="skip the FP8-vs-BF16 relative L2")
    b.add_argument("--json", default=None, help="write the report as JSON here")
    b.add_argument("--markdown", default=None, help="write the report as a markdown table here")
    b.add_argument("--plot", default=None, help="write a PNG plot here")
    b.add_argument("--project", action="store_true", help="no measurement: projected floors on named cards (a projection)")
    b.add_argument("--cards", type=_csv(str), default=list(CARDS), help=f"for --project: comma list of {', '.join(CARDS)}")
    b.set_defaults(func=cmd_bench)


def command_line(args) -> str:
    """The exact command that reproduces this run, written from the parsed options."""
    import shlex

    parts = ["python -m fp8pipe bench", f"--arch {','.join(args.arch)}", f"--precision {','.join(args.precision)}"]
    if args.resolution:
        parts.append(f"--resolution {','.join(map(str, args.resolution))}")
    for flag, value in (("--steps", args.steps), ("--guidance", args.guidance), ("--vram-limit", None if args.project else args.vram_limit)):
        if value is not None:
            parts.append(f"{flag} {value}")
    parts.append(f"--t5 {args.t5}")
    if args.project:
        parts += ["--project", f"--cards {shlex.quote(','.join(args.cards))}"]
    else:
        parts += [f"--placement {','.join(args.placement)}", f"--compile {args.compile}", f"--compile-mode {args.compile_mode}"]
        parts += [f"--fp8-path {args.fp8_path}", f"--device {args.device}", f"--repeats {args.repeats}", f"--warmup {args.warmup}", f"--min-warmup-s {args.min_warmup_s:g}", f"--seed {args.seed}"]
        parts += [flag for flag, on in (("--fuse-quant", args.fuse_quant), ("--no-fidelity", args.no_fidelity), ("--cpu-full-size", args.cpu_full_size)) if on]
    for flag in ("json", "markdown", "plot"):
        if getattr(args, flag):
            parts.append(f"--{flag} {shlex.quote(getattr(args, flag))}")
    return " ".join(parts)


def cmd_bench(args) -> int:
    for p in args.precision:
        if p not in BENCH_PRECISIONS:
            raise ValueError(f"--precision takes {', '.join(BENCH_PRECISIONS)}; got {p!r}")
    for p in args.placement:
        if p not in PLACEMENTS:
            raise ValueError(f"--placement takes {', '.join(PLACEMENTS)}; got {p!r}")
    if args.repeats < 1 or args.warmup < 0 or args.min_warmup_s < 0:
        raise ValueError("--repeats must be >= 1, --warmup and --min-warmup-s >= 0")
    specs = [resolve_arch(a) for a in args.arch]
    if args.project:
        from .projection import CARDS

        unknown = [c for c in args.cards if c not in CARDS]
        if unknown:
            raise ValueError(f"unknown card(s) {', '.join(unknown)}; known: {', '.join(CARDS)}")
        report = {"command": command_line(args), **projection_report(specs, args.precision, args.resolution, args.steps, args.guidance, args.t5, args.cards)}
        text = projection_markdown(report)
    else:
        vram_limit = parse_size(args.vram_limit) if args.vram_limit else None
        cases = make_cases(args.arch, args.precision, args.resolution, args.steps, args.guidance, args.placement, COMPILE_CHOICES[args.compile])
        options = BenchOptions(
            device=args.device,
            t5=args.t5,
            fp8_path=args.fp8_path,
            compile_mode=args.compile_mode,
            fuse_quant=args.fuse_quant,
            repeats=args.repeats,
            warmup=args.warmup,
            min_warmup_s=args.min_warmup_s,
            cpu_full_size=args.cpu_full_size,
            seed=args.seed,
        )
        report = run_bench(cases, options, vram_limit, not args.no_fidelity, command_line(args), log=lambda m: print(m, file=sys.stderr))
        text = markdown_report(report)
        if args.plot:
            plot_report(report, Path(args.plot))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    print(text)
    return 0


__all__ = ["Case", "BenchOptions", "run_bench", "run_case", "fidelity", "random_pipeline", "random_transformer", "materialize_random_"]
