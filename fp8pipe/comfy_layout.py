"""ComfyUI's FP8 single-file layouts, legacy and current, read into plain per-tensor scales.

- legacy "fp8_scaled": a `scaled_fp8` marker (its dtype is the weights' FP8 format), each
  FP8 weight with a float32 `<layer>.scale_weight`, optional `<layer>.scale_input`;
- current: `<layer>.weight_scale` with `<layer>.comfy_quant` (JSON bytes, `{"format": ...}`)
  and/or the safetensors header entry `_quantization_metadata` (`{"layers": {layer: {...}}}`),
  as comfy/utils.py `convert_old_quants` and comfy/ops.py write and read them.

`normalize` turns either into (tensors, scales): every E4M3 weight kept as its bytes with
one float32 scale, E5M2 weights dequantized (q * scale, float32: fp8pipe's layers hold E4M3),
FP8 tensors that are not Linear weights (biases, norms) upcast as ComfyUI casts them (no
scale). Formats fp8pipe cannot read (mxfp8, nvfp4, int8...) and scales that are not one per
tensor are refused with a ModelLoadError naming them.
"""

from __future__ import annotations

import json

import torch

from .errors import ModelLoadError

LEGACY_MARKER = "scaled_fp8"
HEADER_KEY = "_quantization_metadata"
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = (".weight_scale", ".scale_weight")
DROPPED_SUFFIXES = (".input_scale", ".scale_input", ".comfy_quant", ".weight_scale_2")


def header_layers(metadata: dict | None, prefix: str) -> dict[str, dict]:
    """The per-layer configs of the `_quantization_metadata` header entry, keys without `prefix`."""
    raw = (metadata or {}).get(HEADER_KEY)
    if raw is None:
        return {}
    try:
        layers = json.loads(raw)["layers"]
        if not isinstance(layers, dict):
            raise TypeError("layers is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"the file's {HEADER_KEY} header is not ComfyUI's JSON ({type(e).__name__}: {e})", fix="re-save the file with ComfyUI") from None
    return {(k[len(prefix) :] if k.startswith(prefix) else k): (v if isinstance(v, dict) else {"format": v}) for k, v in layers.items()}


def _decode_conf(layer: str, t: torch.Tensor) -> dict:
    try:
        conf = json.loads(bytes(t.to(torch.uint8).flatten().tolist()).decode("utf-8"))
        if not isinstance(conf, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"{layer}.comfy_quant is not ComfyUI's JSON layer config ({e})", fix="re-save the file with ComfyUI") from None
    return conf


def is_comfy(keys, metadata: dict | None) -> bool:
    return HEADER_KEY in (metadata or {}) or any(k == LEGACY_MARKER or k.endswith((".comfy_quant", ".weight_scale", ".scale_weight")) for k in keys)


def normalize(state: dict[str, torch.Tensor], metadata: dict | None = None, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(tensors, {weight key: float32 scalar scale}) of a ComfyUI-layout state (keys without `prefix`)."""
    state = dict(state)
    state.pop(LEGACY_MARKER, None)
    confs = header_layers(metadata, prefix)
    for key in [k for k in state if k.endswith(".comfy_quant")]:
        confs[key[: -len(".comfy_quant")]] = _decode_conf(key[: -len(".comfy_quant")], state.pop(key))
    for layer, conf in confs.items():
        fmt = conf.get("format")
        if fmt not in FP8_FORMATS:
            raise ModelLoadError(
                f"layer {layer} is stored as {fmt!r}, a ComfyUI format fp8pipe does not read",
                fix=f"fp8pipe reads ComfyUI's {' and '.join(FP8_FORMATS)} with one scale per tensor; use such a file or the 16-bit release",
            )
    scales = {}
    for key in [k for k in state if k.endswith(SCALE_SUFFIXES)]:
        layer = key.rsplit(".", 1)[0]
        scale = state.pop(key)
        if scale.numel() != 1:
            raise ModelLoadError(
                f"layer {layer} has a weight scale of shape {list(scale.shape)}; fp8pipe reads ComfyUI files with one scale per tensor",
                fix="use a per-tensor (tensorwise) FP8 file or the 16-bit release",
            )
        scales[layer + ".weight"] = scale.float().reshape(())
    for key in [k for k in state if k.endswith(DROPPED_SUFFIXES)]:
        state.pop(key)  # static input scales: fp8pipe scales activations dynamically
    out, e4m3_scales = {}, {}
    for key, t in state.items():
        if t.dtype not in FP8_DTYPES:
            out[key] = t
            continue
        is_weight = key.endswith(".weight") and t.ndim == 2
        expected = FP8_FORMATS.get(confs.get(key[: -len(".weight")], {}).get("format", ""))
        if is_weight and expected is not None and expected != t.dtype:
            raise ModelLoadError(f"{key} is stored as {t.dtype} but its comfy_quant says {expected}", fix="re-save the file with ComfyUI")
        scale = scales.get(key)
        if not is_weight:
            out[key] = t.to(torch.bfloat16)  # an FP8 bias or norm: ComfyUI casts it, unscaled (E4M3/E5M2 fit bf16 exactly)
        elif t.dtype == torch.float8_e4m3fn:
            out[key] = t
            e4m3_scales[key] = scale if scale is not None else torch.ones(())
        else:  # E5M2: dequantized here, re-quantized per row to E4M3 (or kept 16/32-bit) by the loader
            out[key] = t.float() * (scale if scale is not None else 1.0)
    return out, e4m3_scales
