"""Test helper: a diffusers SD3 transformer state dict in Stability AI's single-file key layout
(the inverse of diffusers' converter), and ComfyUI's "fp8_scaled" variant of it."""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn


def _swap_scale_shift(t: torch.Tensor) -> torch.Tensor:
    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)  # its own inverse


def to_sai_layout(sd: dict[str, torch.Tensor], num_layers: int, dual_attention_layers=()) -> dict[str, torch.Tensor]:
    out = {
        "pos_embed": sd["pos_embed.pos_embed"],
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
        "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "context_embedder.weight": sd["context_embedder.weight"],
        "context_embedder.bias": sd["context_embedder.bias"],
        "final_layer.linear.weight": sd["proj_out.weight"],
        "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.adaLN_modulation.1.weight": _swap_scale_shift(sd["norm_out.linear.weight"]),
        "final_layer.adaLN_modulation.1.bias": _swap_scale_shift(sd["norm_out.linear.bias"]),
    }
    for sai, ours in (("t_embedder", "timestep_embedder"), ("y_embedder", "text_embedder")):
        for n, m in (("0", "1"), ("2", "2")):
            for p in ("weight", "bias"):
                out[f"{sai}.mlp.{n}.{p}"] = sd[f"time_text_embed.{ours}.linear_{m}.{p}"]
    for i in range(num_layers):
        b, j = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == num_layers - 1
        for p in ("weight", "bias"):
            out[f"{j}x_block.attn.qkv.{p}"] = torch.cat([sd[f"{b}attn.to_{x}.{p}"] for x in "qkv"])
            out[f"{j}context_block.attn.qkv.{p}"] = torch.cat([sd[f"{b}attn.add_{x}_proj.{p}"] for x in "qkv"])
            out[f"{j}x_block.attn.proj.{p}"] = sd[f"{b}attn.to_out.0.{p}"]
            out[f"{j}x_block.adaLN_modulation.1.{p}"] = sd[f"{b}norm1.linear.{p}"]
            ctx_ada = sd[f"{b}norm1_context.linear.{p}"]
            out[f"{j}context_block.adaLN_modulation.1.{p}"] = _swap_scale_shift(ctx_ada) if last else ctx_ada
            out[f"{j}x_block.mlp.fc1.{p}"] = sd[f"{b}ff.net.0.proj.{p}"]
            out[f"{j}x_block.mlp.fc2.{p}"] = sd[f"{b}ff.net.2.{p}"]
            if not last:
                out[f"{j}context_block.attn.proj.{p}"] = sd[f"{b}attn.to_add_out.{p}"]
                out[f"{j}context_block.mlp.fc1.{p}"] = sd[f"{b}ff_context.net.0.proj.{p}"]
                out[f"{j}context_block.mlp.fc2.{p}"] = sd[f"{b}ff_context.net.2.{p}"]
            if i in dual_attention_layers:
                out[f"{j}x_block.attn2.qkv.{p}"] = torch.cat([sd[f"{b}attn2.to_{x}.{p}"] for x in "qkv"])
                out[f"{j}x_block.attn2.proj.{p}"] = sd[f"{b}attn2.to_out.0.{p}"]
        for sai, ours in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                          ("context_block.attn.ln_q", "attn.norm_added_q"), ("context_block.attn.ln_k", "attn.norm_added_k")):
            out[f"{j}{sai}.weight"] = sd[f"{b}{ours}.weight"]
        if i in dual_attention_layers:
            out[f"{j}x_block.attn2.ln_q.weight"] = sd[f"{b}attn2.norm_q.weight"]
            out[f"{j}x_block.attn2.ln_k.weight"] = sd[f"{b}attn2.norm_k.weight"]
    return out


def to_comfy_scaled_fp8(sai: dict[str, torch.Tensor], dtype: torch.dtype = FP8, fp8_biases: bool = False) -> dict[str, torch.Tensor]:
    """ComfyUI's legacy layout: every joint-block Linear weight in `dtype` (E4M3 or E5M2) with one
    float32 `scale_weight` per layer (amax / finfo.max), a `scaled_fp8` marker of that dtype, all
    under `model.diffusion_model.`; `fp8_biases` also casts the joint-block biases to `dtype`
    unscaled, as ComfyUI's own re-save of such a file does."""
    out = {}
    for key, t in sai.items():
        if key.startswith("joint_blocks.") and key.endswith(".weight") and t.ndim == 2:
            out[key], out[key[: -len("weight")] + "scale_weight"] = comfy_quantize(t, dtype)
        elif fp8_biases and key.startswith("joint_blocks.") and key.endswith(".bias"):
            out[key] = t.to(dtype)
        else:
            out[key] = t.to(torch.bfloat16)
    out["scaled_fp8"] = torch.empty(0, dtype=dtype)
    return {"model.diffusion_model." + k: v.contiguous() for k, v in out.items()}


def comfy_quantize(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 data, float32 scalar scale) as ComfyUI's TensorCoreFP8Layout.quantize makes them:
    scale = amax / finfo(dtype).max, data = clamp(t / scale) cast to `dtype`."""
    fmax = torch.finfo(dtype).max
    scale = (t.float().abs().amax() / fmax).to(torch.float32)
    return (t.float() * (1.0 / scale)).clamp(-fmax, fmax).to(dtype), scale


def comfy_dequantize(sai_comfy: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference: what ComfyUI computes from a file (data * scale per tensor, FP8 tensors
    without a scale cast as they are), float32, in plain Stability AI keys."""
    prefix = "model.diffusion_model."
    sd = {k[len(prefix) :]: v for k, v in sai_comfy.items()}
    out = {}
    for key, t in sd.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".weight_scale", ".comfy_quant", ".scale_input", ".input_scale")):
            continue
        layer = key.rsplit(".", 1)[0]
        scale = sd.get(layer + ".weight_scale", sd.get(layer + ".scale_weight")) if key.endswith(".weight") else None
        out[key] = t.float() * scale.float() if scale is not None else t.float()
    return out


def to_comfy_quant(sai: dict[str, torch.Tensor], fmt: str = "float8_e4m3fn", where: str = "tensors") -> tuple[dict, dict]:
    """(state, header metadata) in the layout current ComfyUI writes (comfy/ops.py state_dict,
    comfy/utils.py convert_old_quants): each quantized layer's `weight` in the format's dtype,
    a float32 scalar `weight_scale`, and its config `{"format": ...}` as `<layer>.comfy_quant`
    JSON bytes (where="tensors"), in the `_quantization_metadata` header (where="header"), or both."""
    import json

    dtype = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}[fmt]
    prefix = "model.diffusion_model."
    out, layers = {}, {}
    for key, t in sai.items():
        if key.startswith("joint_blocks.") and key.endswith(".weight") and t.ndim == 2:
            layer = key[: -len(".weight")]
            out[key], out[layer + ".weight_scale"] = comfy_quantize(t, dtype)
            layers[prefix + layer] = {"format": fmt}
            if where in ("tensors", "both"):
                out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode("utf-8")), dtype=torch.uint8)
        else:
            out[key] = t.to(torch.bfloat16)
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if where in ("header", "both") else {}
    return {prefix + k: v.contiguous() for k, v in out.items()}, metadata
