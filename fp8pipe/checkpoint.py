"""FP8 checkpoints in safetensors: save, read, and import single files; never unpickle.

An fp8pipe checkpoint is a diffusers folder whose `transformer/` holds E4M3 weights with a
`.scale` (float32, one per output row) beside each, every other tensor in bf16, and a
manifest `fp8pipe.json` (policy, quantized layers, versions). Single `.safetensors` files
may be in diffusers keys, Stability AI keys, or ComfyUI's "fp8_scaled" layout (per-layer
`scale_weight`, a `scaled_fp8` marker); all load into the same representation.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from . import comfy_layout
from .errors import ModelLoadError
from .fp8 import FP8_DTYPE, FP8Linear, FP8Policy

MANIFEST = "fp8pipe.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
STORAGE_DTYPE = torch.bfloat16  # SD3.5 ships its 16-bit weights in bf16: storing them so is lossless
SAI_PREFIX = "model.diffusion_model."
COMFY_MARKER = "scaled_fp8"
OTHER_COMPONENT_PREFIXES = ("first_stage_model.", "text_encoders.", "vae.", "text_encoder")  # VAE, CLIP, T5 in all-in-one files


def refuse_pickle(path: Path) -> None:
    """Raise a clear error for pickle checkpoints: loading one can run arbitrary code."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"Refusing to load {path.name}: {path.suffix} files are Python pickles, which can run code when opened.",
            tried=[str(path)],
            fix="Convert it to .safetensors with a trusted tool first, or use the model's .safetensors release.",
        )


def safetensors_files(folder: Path) -> list[Path]:
    """The .safetensors files of a model folder; refuses a folder that holds only pickles."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        raise ModelLoadError(
            f"{folder} has no .safetensors weights" + (f" (only pickle files: {', '.join(pickles)})" if pickles else ""),
            tried=[str(folder)],
            fix="fp8pipe loads safetensors only; use the model's safetensors release.",
        )
    return files


@contextmanager
def open_safetensors(path: Path):
    """safe_open, with a truncated or corrupt file reported as a ModelLoadError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            yield fh
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(
            f"{path.name} is not a readable safetensors file ({e})",
            tried=[str(path)],
            fix="the file is truncated or corrupt: download or export it again",
        ) from None


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time, memory-mapped: a whole model is never held at once."""
    for f in files:
        with open_safetensors(f) as fh:
            for key in fh.keys():
                yield key, fh.get_tensor(key)


def read_json_object(path: Path, fix: str = "restore the file from the model's source") -> dict:
    """A JSON object from a model's config or manifest; a clear error naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelLoadError(f"{path.name} in {path.parent.name}/ is not a readable JSON file ({type(e).__name__})", tried=[str(path)], fix=fix) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} in {path.parent.name}/ is not a JSON object", tried=[str(path)], fix=fix)
    return data


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return read_json_object(path, fix="re-run `python -m fp8pipe quantize`")


def _versions() -> dict:
    import diffusers
    import safetensors
    import transformers

    from . import __version__

    return {
        "fp8pipe": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def transformer_storage_state(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The transformer's tensors as stored: FP8 weights and float32 scales as they are, the rest bf16."""
    fp8_scales = {f"{name}.scale" for name, m in transformer.named_modules() if isinstance(m, FP8Linear)}
    state = {}
    for name, t in transformer.state_dict().items():
        if t.dtype != FP8_DTYPE and name not in fp8_scales and t.is_floating_point():
            t = t.to(STORAGE_DTYPE)
        state[name] = t.detach().to("cpu").contiguous()
    return state


def save_fp8_checkpoint(pipe, out: Path, policy: FP8Policy, source: str, spec_name: str | None) -> Path:
    """Write `pipe` (its transformer already FP8) as an fp8pipe checkpoint folder of safetensors."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    transformer = pipe.transformer
    quantized = sorted(n for n, m in transformer.named_modules() if isinstance(m, FP8Linear))
    if not quantized:
        raise ValueError("the pipeline's transformer has no FP8 layers; load it with precision fp8 first")
    (out / "transformer").mkdir()
    transformer.save_config(out / "transformer")
    save_file(transformer_storage_state(transformer), str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    for name, component in pipe.components.items():
        if name == "transformer" or component is None:
            continue
        if isinstance(component, torch.nn.Module):
            component.save_pretrained(out / name, safe_serialization=True)
            _rewrite_in_storage_dtype(out / name)
        else:  # tokenizers, scheduler
            component.save_pretrained(out / name)
    pipe.save_config(out)
    manifest = {
        "format": "fp8pipe",
        "format_version": FORMAT_VERSION,
        "source": source,
        "spec": spec_name,
        "policy": policy.as_dict(),
        "quantized_layers": quantized,
        "weight_dtype": "float8_e4m3fn",
        "scale": "float32 per output row",
        "storage_dtype": str(STORAGE_DTYPE).replace("torch.", ""),
        "versions": _versions(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _rewrite_in_storage_dtype(folder: Path) -> None:
    """Cast the floating tensors of a saved component to bf16 on disk (the live model is untouched)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        state = {k: t.to(STORAGE_DTYPE) if t.is_floating_point() else t for k, t in state.items()}
        save_file(state, str(path), metadata=metadata)


# ---- single files -------------------------------------------------------------------


def _strip_prefix(key: str) -> str:
    return key[len(SAI_PREFIX) :] if key.startswith(SAI_PREFIX) else key


def read_single_file_transformer(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, diffusers-keyed tensors) of the transformer in one .safetensors file.

    FP8 weights come with their per-row scales as `<layer>.scale` (ComfyUI's per-tensor
    scales broadcast, see comfy_layout); the file's other components, if any, are left out.
    """
    with open_safetensors(path) as fh:
        keys = list(fh.keys())
        metadata = fh.metadata() or {}
        stripped = {_strip_prefix(k): k for k in keys}
        diffusers_keys = any(k.startswith("transformer_blocks.") for k in stripped)
        if not diffusers_keys and not any(k.startswith("joint_blocks.") for k in stripped):
            raise ModelLoadError(
                f"{path.name} holds no SD3 transformer (no 'joint_blocks.' or 'transformer_blocks.' keys)",
                tried=[str(path)],
                fix="Pass an SD3 / SD3.5 checkpoint, a diffusers folder, or a hub id.",
            )
        state = {k: fh.get_tensor(orig) for k, orig in stripped.items() if not orig.startswith(OTHER_COMPONENT_PREFIXES)}
    comfy = comfy_layout.is_comfy(state, metadata)
    try:
        layout = ("comfyui-fp8-scaled" if COMFY_MARKER in state else "comfyui-quant") if comfy else ("diffusers" if diffusers_keys else "sai")
        if not comfy:
            return layout, state if diffusers_keys else _convert_sai(state)
        tensors, scales = comfy_layout.normalize(state, metadata, SAI_PREFIX)
    except ModelLoadError as e:
        raise ModelLoadError(f"{path.name}: {e.message}", tried=[str(path)], fix=e.fix) from None
    if diffusers_keys:
        out = dict(tensors)
        for key, scale in scales.items():
            out[key[: -len(".weight")] + ".scale"] = scale.expand(tensors[key].shape[0]).clone()
        return layout, out
    return layout, _convert_comfy_scaled_fp8(tensors, scales)


def _convert_sai(sai: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    return convert_sd3_transformer_checkpoint_to_diffusers(dict(sai))


def _convert_comfy_scaled_fp8(sai: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-tensor scales of E4M3 weights become per-row scales, FP8 bytes untouched.

    diffusers' key converter only splits and joins tensors along dim 0, so it is run twice:
    once over the FP8 bytes (viewed as uint8), once with each FP8 weight replaced by its
    scale broadcast to one value per row. Where the two disagree in shape, a weight was FP8.
    """
    as_bytes, as_scales = {}, {}
    for key, t in sai.items():
        if key in scales:
            as_bytes[key] = t.view(torch.uint8)
            as_scales[key] = scales[key].expand(t.shape[0]).reshape(-1, 1).clone()
        else:
            as_bytes[key] = as_scales[key] = t
    converted = _convert_sai(as_bytes)
    converted_scales = _convert_sai(as_scales)
    out = {}
    for key, t in converted.items():
        if t.dtype == torch.uint8:
            out[key] = t.view(FP8_DTYPE)
            out[key[: -len(".weight")] + ".scale"] = converted_scales[key].reshape(-1).float()
        else:
            out[key] = t
    return out


def file_architecture(tensors: dict[str, torch.Tensor]) -> dict | None:
    """The transformer config fields these diffusers-keyed tensors fix (None: not an SD3 transformer)."""
    blocks = {int(k.split(".")[1]) for k in tensors if k.startswith("transformer_blocks.")}
    if "context_embedder.weight" not in tensors or "transformer_blocks.0.attn.norm_q.weight" not in tensors:
        return None
    shape = {
        "num_layers": len(blocks),
        "caption_projection_dim": tensors["context_embedder.weight"].shape[0],
        "joint_attention_dim": tensors["context_embedder.weight"].shape[1],
        "attention_head_dim": tensors["transformer_blocks.0.attn.norm_q.weight"].shape[0],
    }
    if "pos_embed.pos_embed" in tensors:
        shape["pos_embed_max_size"] = round(tensors["pos_embed.pos_embed"].shape[1] ** 0.5)
    dual = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("transformer_blocks.") and ".attn2." in k})
    shape["dual_attention_layers"] = tuple(dual)
    return shape


def _matches(config: dict, shape: dict) -> bool:
    return all((tuple(config.get(k) or ()) if k == "dual_attention_layers" else config.get(k)) == v for k, v in shape.items())


def architecture_mismatch(tensors: dict[str, torch.Tensor], config: dict) -> str | None:
    """'field: file X, config Y' for each field where the file's transformer and `config` differ."""
    shape = file_architecture(tensors) or {}
    diffs = [f"{k}: file {v}, base {config.get(k)}" for k, v in shape.items() if not _matches(config, {k: v})]
    return "; ".join(diffs) or None


def infer_transformer_config(tensors: dict[str, torch.Tensor], candidates: list[dict]) -> dict | None:
    """The candidate transformer config whose shape matches these diffusers-keyed tensors."""
    shape = file_architecture(tensors)
    if shape is None:
        return None
    for config in candidates:
        if _matches(config, shape):
            return config
    return None
