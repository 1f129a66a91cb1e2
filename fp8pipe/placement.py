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
        elif plan.placement == "partial":
            for name in ("text_encoder", "text_encoder_2", "vae", "text_encoder_3"):
                module = getattr(pipe, name, None)
                if isinstance(module, torch.nn.Module):
                    module.to(device)
            applied["streamed_blocks"] = stream_blocks(pipe.transformer, plan.resident_blocks, device, torch.device("cpu"), use_stream=True)
        elif plan.placement == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
    applied.update(apply_plan_tiling(loaded, plan))
    applied["attention"] = apply_attention(pipe, plan.attention)
    return applied


def stream_blocks(transformer, resident_blocks: int, onload_device, offload_device, use_stream: bool) -> list[int]:
    """Partial residency: the first `resident_blocks` transformer blocks and everything outside the
    blocks go to `onload_device`; the rest get diffusers' block-level group-offload hooks (one
    block per group) and stay on `offload_device` between their calls. Returns the streamed
    block indices.

    diffusers offers block-level hooks for a whole ModuleList only, so the streamed blocks are
    gathered into a ModuleList of their own (the same module objects; the transformer still calls
    them) and the hooks applied to that. With streams, diffusers learns the prefetch order from
    a first forward of the module it hooked, which the transformer never calls here; the order is
    known (block i, then i + 1), so the chain is set directly and the tracing hooks are removed.
    """
    import itertools

    import torch
    from diffusers.hooks import HookRegistry, apply_group_offloading

    blocks = transformer.transformer_blocks
    streamed = list(range(resident_blocks, len(blocks)))
    for name, child in transformer.named_children():
        if name != "transformer_blocks":
            child.to(onload_device)
    for p in transformer.parameters(recurse=False):
        p.data = p.data.to(onload_device)
    for i in range(resident_blocks):
        blocks[i].to(onload_device)
    if not streamed:
        return streamed
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleList([blocks[i] for i in streamed])
    stream = use_stream and torch.device(onload_device).type == "cuda"
    apply_group_offloading(
        holder,
        onload_device=torch.device(onload_device),
        offload_device=torch.device(offload_device),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=stream,
        non_blocking=stream,
    )
    if stream:
        hooks = []
        for block in holder.blocks:
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.remove_hook("layer_execution_tracker", recurse=False)
            hooks.append(registry.get_hook("group_offloading"))
        for hook, following in itertools.pairwise(hooks):
            hook.next_group = following.group
            following.group.onload_self = False
        for hook in hooks:
            hook.group.non_blocking = True
    return streamed


def streamed_block_indices(transformer) -> list[int]:
    """The transformer blocks that carry a group-offload hook (what `stream_blocks` set up)."""
    from diffusers.hooks import HookRegistry

    out = []
    for i, block in enumerate(transformer.transformer_blocks):
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None and isinstance(registry, HookRegistry) and registry.get_hook("group_offloading") is not None:
            out.append(i)
    return out


class StreamCounter:
    """Bytes the group-offload hooks copy host->device: a streamed block's weights each time it runs."""

    def __init__(self) -> None:
        self.bytes = 0


def count_streamed_bytes(transformer) -> StreamCounter:
    """A counter fed by a forward pre-hook on every transformer block that carries a group-offload
    hook (diffusers onloads such a block's weights for each call, so each call is one copy)."""
    counter = StreamCounter()
    blocks = transformer.transformer_blocks
    for i in streamed_block_indices(transformer):
        size = sum(t.numel() * t.element_size() for t in (*blocks[i].parameters(), *blocks[i].buffers()))

        def count(module, args, size=size) -> None:
            counter.bytes += size

        blocks[i].register_forward_pre_hook(count)
    return counter


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
