"""LoRA files in the layouts people have, read into one form: per pipeline Linear, (A, B, alpha/rank).

Layouts (safetensors only; a pickle is refused):
- diffusers / PEFT: `transformer.<diffusers name>.lora_A.weight` / `lora_B.weight` (also
  `text_encoder.`, `text_encoder_2.`, `text_encoder_3.`; bare or `base_model.model.` names are
  the transformer's); alpha from the file's `lora_adapter_metadata` header when present.
- kohya sd-scripts (networks/lora_sd3.py): `lora_unet_<MMDiT name, dots as _>`,
  `lora_te1_`/`lora_te2_`/`lora_te3_` + the text encoder's module name, with `.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; q, k, v are one fused `qkv` module.
- Stability AI / ComfyUI: the original MMDiT names (`diffusion_model.joint_blocks.0.x_block.attn.qkv`),
  and `text_encoders.clip_l.transformer.<name>` etc., with either pair of suffixes.

A fused `qkv` LoRA is split exactly: its up matrix's rows go to q, k and v, its down matrix is
shared. Rows of AdaLN layers stored in Stability's (scale, shift) order are swapped to diffusers'.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import PICKLE_SUFFIXES, open_safetensors
from .errors import ModelLoadError

COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
KOHYA_TE = {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3"}
SAI_TE = {"text_encoders.clip_l.transformer.": "text_encoder", "text_encoders.clip_g.transformer.": "text_encoder_2", "text_encoders.t5xxl.transformer.": "text_encoder_3"}
SAI_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
LAYOUTS = ("diffusers/PEFT", "kohya sd-scripts", "Stability AI/ComfyUI")
_DOWN = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight", ".lora_A.default.weight")
_UP = (".lora_B.weight", ".lora_up.weight", ".lora.up.weight", ".lora_B.default.weight")


@dataclass(frozen=True)
class Target:
    """Where one file module lands: a pipeline Linear, and which rows of the file's up matrix it takes."""

    component: str
    module: str
    chunk: int = 0  # index among `chunks` equal row blocks (q, k, v of a fused qkv)
    chunks: int = 1
    swap: bool = False  # AdaLN rows stored (scale, shift): swap halves to diffusers' (shift, scale)


@dataclass
class LoraFile:
    """One LoRA file, read: per (component, module) the down matrix A, up matrix B and alpha/rank."""

    name: str
    path: Path
    layout: str
    layers: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)
    file_modules: int = 0  # LoRA modules in the file
    matched_modules: int = 0  # of those, the ones that found their layer
    unmatched: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _ in self.layers.values())

    def summary(self) -> str:
        text = f"{self.name}: {self.layout}, {self.matched_modules} of {self.file_modules} modules matched ({len(self.layers)} layers)"
        return text + (f"; not in this model: {', '.join(self.unmatched[:3])}" + (" ..." if len(self.unmatched) > 3 else "") if self.unmatched else "")


# ---- the model's names --------------------------------------------------------------------

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_IN_BLOCK = {  # diffusers name in a block -> (Stability name in the joint block, chunk, chunks)
    "attn.to_q": ("x_block.attn.qkv", 0, 3), "attn.to_k": ("x_block.attn.qkv", 1, 3), "attn.to_v": ("x_block.attn.qkv", 2, 3),
    "attn.add_q_proj": ("context_block.attn.qkv", 0, 3), "attn.add_k_proj": ("context_block.attn.qkv", 1, 3),
    "attn.add_v_proj": ("context_block.attn.qkv", 2, 3),
    "attn2.to_q": ("x_block.attn2.qkv", 0, 3), "attn2.to_k": ("x_block.attn2.qkv", 1, 3), "attn2.to_v": ("x_block.attn2.qkv", 2, 3),
    "attn.to_out.0": ("x_block.attn.proj", 0, 1), "attn.to_add_out": ("context_block.attn.proj", 0, 1),
    "attn2.to_out.0": ("x_block.attn2.proj", 0, 1),
    "ff.net.0.proj": ("x_block.mlp.fc1", 0, 1), "ff.net.2": ("x_block.mlp.fc2", 0, 1),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", 0, 1), "ff_context.net.2": ("context_block.mlp.fc2", 0, 1),
    "norm1.linear": ("x_block.adaLN_modulation.1", 0, 1), "norm1_context.linear": ("context_block.adaLN_modulation.1", 0, 1),
}
_OUTSIDE = {
    "context_embedder": "context_embedder", "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0", "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
}


def _linears(module: nn.Module) -> list[str]:
    from .fp8 import FP8Linear

    return [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, FP8Linear))]


def _sai_name(name: str, last_block: int) -> tuple[str, int, int, bool] | None:
    """(Stability name, chunk, chunks, swap) of a diffusers transformer Linear, or None."""
    if name in _OUTSIDE:
        return _OUTSIDE[name], 0, 1, name == "norm_out.linear"
    m = _BLOCK.match(name)
    if m and m.group(2) in _IN_BLOCK:
        sai, chunk, chunks = _IN_BLOCK[m.group(2)]
        swap = m.group(2) == "norm1_context.linear" and int(m.group(1)) == last_block  # the last block's context AdaLN is continuous
        return f"joint_blocks.{m.group(1)}.{sai}", chunk, chunks, swap
    return None


def name_table(pipe) -> dict[str, tuple[str, list[Target]]]:
    """Every name a LoRA file may give a pipeline Linear: name -> (layout, targets)."""
    table: dict[str, tuple[str, list[Target]]] = {}
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        names = _linears(module)
        te_kohya = {v: k for k, v in KOHYA_TE.items()}.get(component)
        te_sai = {v: k for k, v in SAI_TE.items()}.get(component)
        last = max((int(_BLOCK.match(n).group(1)) for n in names if _BLOCK.match(n)), default=-1)
        for name in names:
            t = [Target(component, name)]
            table[f"{component}.{name}"] = ("diffusers/PEFT", t)
            if component == "transformer":
                table[name] = table[f"base_model.model.{name}"] = ("diffusers/PEFT", t)
                sai = _sai_name(name, last)
                if sai is None:
                    continue
                sai_name, chunk, chunks, swap = sai
                target = Target(component, name, chunk, chunks, swap)
                for alias, layout in [("lora_unet_" + sai_name.replace(".", "_"), "kohya sd-scripts"), (sai_name, "Stability AI/ComfyUI"),
                                      *((p + sai_name, "Stability AI/ComfyUI") for p in SAI_PREFIXES)]:
                    table.setdefault(alias, (layout, []))[1].append(target)
            else:
                table[te_kohya + name.replace(".", "_")] = ("kohya sd-scripts", t)
                table[te_sai + name] = ("Stability AI/ComfyUI", t)
    return table


# ---- reading a file -----------------------------------------------------------------------


def _split(key: str) -> tuple[str, str] | None:
    for kind, suffixes in (("down", _DOWN), ("up", _UP), ("alpha", (".alpha",))):
        for s in suffixes:
            if key.endswith(s):
                return key[: -len(s)], kind
    return None


def _header_alphas(metadata: dict) -> dict[str, float]:
    """alpha/rank per component from diffusers' `lora_adapter_metadata` header (PEFT config), if any."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out = {}
    for component in COMPONENTS:
        r, alpha = data.get(f"{component}.r"), data.get(f"{component}.lora_alpha")
        if isinstance(r, (int, float)) and isinstance(alpha, (int, float)) and r:
            out[component] = float(alpha) / float(r)
    return out


def read_lora(path: str | Path, pipe) -> LoraFile:
    """Read a LoRA file against `pipe`'s layers; no matching module at all is a ModelLoadError."""
    path = Path(path).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(f"LoRA {path.name}: {path.suffix} files are Python pickles, which can run code when opened", fix="use the LoRA's .safetensors release")
    if not path.is_file():
        raise ModelLoadError(f"LoRA file {path} not found", fix="pass the path of a .safetensors LoRA file")
    with open_safetensors(path) as fh:
        metadata = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        split = _split(key)
        if split is not None:
            groups.setdefault(split[0], {})[split[1]] = t
    modules = {m: g for m, g in groups.items() if {"down", "up"} <= g.keys()}
    table = name_table(pipe)
    header = _header_alphas(metadata)
    lora = LoraFile(path.stem, path, "", file_modules=len(modules))
    layouts: dict[str, int] = {}
    for module, g in modules.items():
        entry = table.get(module)
        if entry is None:
            lora.unmatched.append(module)
            continue
        layout, targets = entry
        down, up = g["down"].float(), g["up"].float()
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ModelLoadError(f"LoRA {path.name}: {module} has down {list(down.shape)} and up {list(up.shape)}, not a linear LoRA pair", fix="only Linear LoRAs are supported (no conv, LoCon or LoHa)")
        rank = down.shape[0]
        scale = float(g["alpha"]) / rank if "alpha" in g else header.get(targets[0].component, 1.0)
        for t in targets:
            b = up.chunk(t.chunks, dim=0)[t.chunk] if t.chunks > 1 else up
            if t.swap:
                b = torch.cat(b.chunk(2, dim=0)[::-1])
            layer = pipe_module(pipe, t)
            if (b.shape[0], down.shape[1]) != (layer.out_features, layer.in_features):
                raise ModelLoadError(
                    f"LoRA {path.name}: {module} is {b.shape[0]}x{down.shape[1]} but {t.component}.{t.module} is {layer.out_features}x{layer.in_features}",
                    tried=[str(path)],
                    fix="the LoRA was made for another model family",
                )
            lora.layers[(t.component, t.module)] = (down.contiguous(), b.contiguous(), scale)
        lora.matched_modules += 1
        layouts[layout] = layouts.get(layout, 0) + 1
    if not lora.layers:
        raise ModelLoadError(
            f"LoRA {path.name} matches no layer of this model ({len(modules)} LoRA modules in the file"
            + (f", e.g. {sorted(modules)[0]}" if modules else "") + ")",
            tried=[f"{layout} key names" for layout in LAYOUTS],
            fix="use a LoRA made for this model family (SD3 / SD3.5) in one of these layouts",
        )
    lora.layout = max(layouts, key=layouts.get)
    return lora


def pipe_module(pipe, target: Target) -> nn.Module:
    return getattr(pipe, target.component).get_submodule(target.module)
