"""One image from a loaded pipeline and a validated request, with its metadata and stats."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .loader import LoadedModel
from .metadata import format_parameters, png_info
from .requests import GenerationRequest


@dataclass
class Result:
    image: object  # PIL.Image.Image
    request: GenerationRequest
    parameters: str
    stats: dict
    images: list = field(default_factory=list)  # every image of a batch; `image` is the first

    def save_png(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image.save(path, format="PNG", pnginfo=png_info(self.parameters))
        return path


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
        "Model": loaded.name,
        "Precision": loaded.options.precision,
        "Sampler": "Euler flow-matching",
        "Shift": loaded.pipe.scheduler.config.shift,
    }
    return format_parameters(request.prompt, request.negative_prompt, settings)


@torch.inference_mode()
def generate(loaded: LoadedModel, request: GenerationRequest, progress: bool = False, **pipe_kwargs) -> Result:
    """Run the pipeline once. The seed drives a CPU generator, so a seed gives the same
    starting noise on every device."""
    pipe, device = loaded.pipe, loaded.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    pipe.set_progress_bar_config(disable=not progress, leave=True)
    start = time.perf_counter()
    output = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        width=request.width,
        height=request.height,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        max_sequence_length=loaded.spec.max_sequence_length,
        output_type="pil",
        **pipe_kwargs,
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    latency = time.perf_counter() - start
    peak, peak_kind = peak_memory_bytes(device)
    stats = {
        "latency_s": round(latency, 4),
        "steps": request.steps,
        "guidance": request.guidance,
        "seed": request.seed,
        "width": request.width,
        "height": request.height,
        "model": loaded.name,
        "precision": loaded.options.precision,
        "fp8_path": loaded.fp8_path,
        "t5": loaded.dtypes.get("t5"),
        "device": str(device),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "random_weights": loaded.random_weights,
    }
    return Result(image=output.images[0], request=request, parameters=parameters_text(loaded, request), stats=stats)
