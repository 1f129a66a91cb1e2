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


def to_comfy_scaled_fp8(sai: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's layout: every joint-block Linear weight in E4M3 with one float32 `scale_weight`
    per layer (amax/448), a `scaled_fp8` marker, all under `model.diffusion_model.`."""
    out = {}
    for key, t in sai.items():
        if key.startswith("joint_blocks.") and key.endswith(".weight") and t.ndim == 2:
            scale = (t.float().abs().max() / 448.0).reshape(())
            out[key] = (t.float() / scale).clamp(-448, 448).to(FP8)
            out[key[: -len("weight")] + "scale_weight"] = scale
        else:
            out[key] = t.to(torch.bfloat16)
    out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    return {"model.diffusion_model." + k: v.contiguous() for k, v in out.items()}
