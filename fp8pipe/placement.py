"""Applying a plan to a loaded pipeline: diffusers' offload hooks, VAE tiling, attention backend,
and the T5-on-the-host wrapper the hooks cannot see.
"""

from __future__ import annotations

import functools

from .planner import Plan
from .sizes import VAE_TILE_PIXELS


@functools.lru_cache(maxsize=1)
def xformers_usable() -> bool:
    """xformers imports AND runs its attention kernel on this GPU. A wheel built for another
    torch imports fine but has no CUDA kernels (seen on an H100: xformers 0.0.35, built for
    torch 2.10 cu128, under torch 2.11 cu130), so importing is not enough."""
    import importlib.util

    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import torch
        import xformers.ops

        q = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
        xformers.ops.memory_efficient_attention(q, q, q)
        return True
    except Exception:
        return False


def choose_attention(device: str = "cuda", dtype_bits: int = 16) -> str:
    """xformers when importable on a GPU, else SDPA (flash / memory-efficient kernels choose
    themselves); 'sdpa-math' only where no fused kernel runs (fp32 on old cards)."""
    if device.startswith("cuda") and xformers_usable():
        return "xformers"
    if device.startswith("cuda") and dtype_bits == 32:
        return "sdpa-math"
    return "sdpa"


# ---- applying a plan ------------------------------------------------------------------------


def load_options_for(plan: Plan, device: str, fp8_path: str = "auto"):
    """The LoadOptions that build `plan`: offload placements keep weights on the host."""
    from .loader import LoadOptions

    on_gpu = device.startswith("cuda")
    storage = "cpu" if on_gpu and plan.placement != "resident" else None
    return LoadOptions(precision=plan.precision, t5=plan.t5, fp8_path=fp8_path, device=device, storage=storage)


def apply_plan(loaded, plan: Plan) -> dict:
    """Install `plan`'s offload hooks, VAE tiling and attention backend on a freshly loaded
    pipeline (loaded with `load_options_for(plan, ...)`); returns what was applied.

    Only diffusers' own hooks: they move FP8Linear's E4M3 weight and float32 scale as
    ordinary parameters, so nothing FP8-specific is needed here.
    """
    import torch

    pipe, device = loaded.pipe, loaded.device
    applied = {"placement": plan.placement if device.type == "cuda" else "resident"}
    if device.type == "cuda" and plan.placement != "resident":
        if loaded.options.t5 == "cpu" and isinstance(pipe.text_encoder_3, torch.nn.Module):
            keep_on_host(pipe, "text_encoder_3")
        if plan.placement == "model_offload":
            pipe.enable_model_cpu_offload(device=device)
        elif plan.placement == "group_offload":
            for name in ("text_encoder", "text_encoder_2", "vae", "text_encoder_3"):
                module = getattr(pipe, name, None)
                if isinstance(module, torch.nn.Module):  # a HostModule (T5 on the CPU) stays
                    module.to(device)  # dtypes were set by the loader; .to(device) keeps them
            # One block per group; with streams the next group is copied while this one runs.
            pipe.transformer.enable_group_offload(
                onload_device=device,
                offload_device=torch.device("cpu"),
                offload_type="block_level",
                num_blocks_per_group=1,
                use_stream=True,
                non_blocking=True,
            )
        elif plan.placement == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
    applied.update(apply_plan_tiling(loaded, plan))
    applied["attention"] = apply_attention(pipe, plan.attention)
    return applied


def apply_plan_tiling(loaded, plan: Plan) -> dict:
    """Turn VAE tiling on or off as `plan` says (safe to call again on a warm pipeline)."""
    vae = loaded.pipe.vae
    if not plan.vae_tiling:
        vae.disable_tiling()
        return {"vae_tiling": False}
    from .generation import enable_vae_tiling

    enable_vae_tiling(vae, VAE_TILE_PIXELS)
    return {"vae_tiling": True}


class HostModule:
    """A CPU-resident encoder that offload hooks cannot see.

    Written by hand because diffusers' offload moves every nn.Module component to the GPU:
    `enable_model_cpu_offload` hooks each module in its sequence and sends the ones in
    `_exclude_from_cpu_offload` to the GPU outright. A plain object is skipped by all three
    offload methods; it runs the module on the CPU and the pipeline moves the output back.
    """

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        import torch

        move = lambda x: x.to("cpu") if isinstance(x, torch.Tensor) else x  # noqa: E731
        return self.module(*(move(a) for a in args), **{k: move(v) for k, v in kwargs.items()})

    @property
    def dtype(self):
        return self.module.dtype

    @property
    def device(self):
        return self.module.device


def keep_on_host(pipe, name: str) -> None:
    """Replace component `name` by a HostModule (bypassing the pipeline's config bookkeeping,
    which would try to record the wrapper's class for saving; the engine never saves)."""
    object.__setattr__(pipe, name, HostModule(getattr(pipe, name)))


def apply_attention(pipe, attention: str) -> str:
    """Switch to xformers when asked and it loads; SDPA otherwise (the processors' default).

    Attention slicing is not offered: diffusers' sliced processor does not implement SD3's
    joint (image + text) attention, and SDPA's fused kernels already avoid the N x N matrix.
    """
    if attention == "xformers":
        try:
            pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as e:  # a broken xformers build must not stop the engine
            import logging

            logging.getLogger(__name__).warning("xformers unavailable (%s); using SDPA", e)
            return "sdpa"
    return attention
