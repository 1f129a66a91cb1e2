"""torch.compile for the transformer: regional (each repeated MMDiT block) or whole, and the
fused FP8 activation quantizer.

Regional compilation compiles one JointTransformerBlock's code and reuses it for every block
of the same shape (parameters are graph inputs), so a 38-block Large compiles in seconds
rather than minutes with about the same run-time gain. Written here because SD3's transformer
does not declare `_repeated_blocks`, so diffusers' `compile_repeated_blocks()` refuses it.
"""

from __future__ import annotations

import torch
from torch import nn

from . import fp8 as fp8_mod
from .fp8 import FP8Linear

BLOCK_CLASSES = ("JointTransformerBlock",)


def compile_blocks_(model: nn.Module, mode: str | None = None) -> int:
    """Compile every repeated block of `model` in place; returns how many blocks were compiled."""
    blocks = [m for m in model.modules() if type(m).__name__ in BLOCK_CLASSES]
    for block in blocks:
        block.compile(mode=None if mode in (None, "default") else mode, dynamic=False)
    return len(blocks)


def compile_transformer_(model: nn.Module, mode: str = "default", regional: bool = True) -> str:
    """Compile the transformer in place: its blocks (default), or its whole forward. Hooks
    (step timing, dtype casts, offload) stay outside the graph. Returns what was compiled."""
    if regional and compile_blocks_(model, mode):
        return "blocks"
    model.forward = torch.compile(model.forward, mode=None if mode == "default" else mode, dynamic=False)
    return "whole"


def uncompile_transformer_(model: nn.Module) -> None:
    """Undo compile_transformer_: the blocks (and the forward) run eager again."""
    for block in model.modules():
        if getattr(block, "_compiled_call_impl", None) is not None:
            block._compiled_call_impl = None
    model.__dict__.pop("forward", None)


def fuse_activation_quant_(model: nn.Module) -> int:
    """Give every FP8Linear one compiled activation quantizer (amax, scale, clamp and cast in one
    kernel instead of four); returns how many layers got it."""
    fused = torch.compile(fp8_mod._quantize_activation_rows, dynamic=True)
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for m in layers:
        m.quantize_activation = fused
    return len(layers)
