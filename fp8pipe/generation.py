"""One image from a loaded pipeline and a validated request, with its metadata and stats."""

from __future__ import annotations

import resource
import time

import torch

from .fp8 import path_counts as fp8_path_counts
from .loader import LoadedModel
from .sizes import VAE_TILE_OVERLAP, VAE_TILE_PIXELS
from .metadata import format_parameters
from .requests import GenerationRequest
from .seam import Cancelled, Result


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what they count): CUDA's peak allocation, or the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host_peak_rss"


def parameters_text(loaded: LoadedModel, request: GenerationRequest) -> str:
    settings = {
        "Steps": request.steps,
        "CFG scale": request.guidance,
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model": loaded.display_name,
        "Precision": loaded.options.precision,
        "Sampler": "Euler flow-matching",
        "Shift": request.shift,
    }
    return format_parameters(request.prompt, request.negative_prompt, settings)


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rounded(timings: dict) -> dict:
    """Stage timings to 0.1 ms; other entries (such as a decode fallback) as they are."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()}


def use_shift(pipe, shift: float) -> None:
    """Give the scheduler this request's timestep shift (a fresh scheduler: no state carries over)."""
    if pipe.scheduler.config.shift != shift:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift=shift)


def run_stages(loaded: LoadedModel, request: GenerationRequest, on_step=None, enter_stage=None) -> tuple[list, dict]:
    """Encode, denoise, decode, each timed; returns (PIL images, seconds per stage).

    The seed drives a CPU generator, so a seed gives the same starting noise on every device.
    `on_step(pipe, step, timestep, latents)` runs after each step and may set
    `pipe._interrupt`; `enter_stage(name)` is called as each stage starts.
    """
    pipe, spec = loaded.pipe, loaded.spec
    use_shift(pipe, request.shift)
    enter_stage = enter_stage or (lambda name: None)
    timings = {}
    guided = request.guidance > 1.0  # the pipeline's own rule for classifier-free guidance
    with torch.inference_mode():
        enter_stage("encode")
        start = time.perf_counter()
        embeds = pipe.encode_prompt(
            prompt=request.prompt,
            prompt_2=None,
            prompt_3=None,
            negative_prompt=request.negative_prompt or None,
            do_classifier_free_guidance=guided,
            device=pipe._execution_device,
            num_images_per_prompt=request.batch,
            max_sequence_length=spec.max_sequence_length,
        )
        timings["text_encode_s"] = time.perf_counter() - start

        enter_stage("denoise")
        start = time.perf_counter()

        def callback(pipe_, i, t, kwargs):
            if on_step is not None:
                on_step(pipe_, i, t, kwargs["latents"])
            return {}

        latents = pipe(
            prompt_embeds=embeds[0],
            negative_prompt_embeds=embeds[1],
            pooled_prompt_embeds=embeds[2],
            negative_pooled_prompt_embeds=embeds[3],
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            width=request.width,
            height=request.height,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            max_sequence_length=spec.max_sequence_length,
            output_type="latent",
            callback_on_step_end=callback,
        ).images
        timings["denoise_s"] = time.perf_counter() - start
        if pipe.interrupt:
            raise Cancelled("cancelled between steps")

        enter_stage("decode")
        start = time.perf_counter()
        decoded = decode_latents(pipe.vae, latents, timings)
        images = pipe.image_processor.postprocess(decoded, output_type="pil")
        pipe.maybe_free_model_hooks()
        timings["decode_s"] = time.perf_counter() - start
    return images, timings


def enable_vae_tiling(vae, tile_pixels: int = VAE_TILE_PIXELS) -> None:
    """Decode in tiles of `tile_pixels`. SD3.5's VAE config says sample_size 1024, so diffusers'
    default tiles would never split a 1024 px decode (found on a GPU: the fallback ran out of
    memory again): set the tile size explicitly."""
    vae.enable_tiling()
    vae.tile_sample_min_size = tile_pixels
    vae.tile_latent_min_size = tile_pixels // (2 ** (len(vae.config.block_out_channels) - 1))
    vae.tile_overlap_factor = VAE_TILE_OVERLAP


def decode_latents(vae, latents: torch.Tensor, timings: dict) -> torch.Tensor:
    """The VAE decode of denoised latents; on out-of-memory, free what it held and decode in
    tiles (kept on for later requests), noting `decode_fallback: tiled` in `timings`."""
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    try:
        return vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    except torch.OutOfMemoryError:
        if getattr(vae, "use_tiling", False):
            raise
    # Outside the except block, so the failed decode's frames (and their tensors) are gone
    # before memory is freed; the denoised latents are kept.
    free_memory(latents.device)
    enable_vae_tiling(vae)
    timings["decode_fallback"] = "tiled"
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]


def generate(loaded: LoadedModel, request: GenerationRequest, progress: bool = False) -> Result:
    """Run the pipeline once (encode, denoise, decode). The seed drives a CPU generator, so a
    seed gives the same starting noise on every device."""
    device = loaded.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    loaded.pipe.set_progress_bar_config(disable=not progress, leave=True)
    start = time.perf_counter()
    images, timings = run_stages(loaded, request)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    latency = time.perf_counter() - start
    peak, peak_kind = peak_memory_bytes(device)
    stats = {
        "latency_s": round(latency, 4),
        **rounded(timings),
        "steps": request.steps,
        "guidance": request.guidance,
        "shift": request.shift,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "model": loaded.display_name,
        "precision": loaded.options.precision,
        "fp8_path": loaded.fp8_path,
        "fp8_layer_paths": fp8_path_counts(loaded.pipe.transformer) if loaded.options.precision == "fp8" else None,
        "t5": loaded.dtypes.get("t5"),
        "device": str(device),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "random_weights": loaded.random_weights,
    }
    return Result(image=images[0], request=request, parameters=parameters_text(loaded, request), stats=stats, images=images)
