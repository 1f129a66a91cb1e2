"""The other components of an all-in-one SD3 file: CLIP-L, CLIP-G, T5-XXL and the VAE.

Stability AI's and ComfyUI's single files may carry, beside `model.diffusion_model.`, the text
encoders under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` (Hugging Face key names;
T5 often in ComfyUI's FP8 layout) and the VAE under `first_stage_model.` (LDM key names).
Each part found replaces the one from `--base`, which then provides only what the file lacks:
tokenizers, the scheduler, the components' configs, and any part the file does not hold.
"""

from __future__ import annotations

import torch

from . import comfy_layout
from .checkpoint import open_safetensors
from .errors import ModelLoadError

# pipeline component -> (key prefix in the file, name people know it by)
PARTS = {
    "text_encoder": ("text_encoders.clip_l.transformer.", "CLIP-L"),
    "text_encoder_2": ("text_encoders.clip_g.transformer.", "CLIP-G"),
    "text_encoder_3": ("text_encoders.t5xxl.transformer.", "T5-XXL"),
    "vae": ("first_stage_model.", "VAE"),
}
# keys a component may lack in a file: buffers rebuilt at load, and T5's embedding tied to `shared`
_MAY_LACK = ("position_ids", "encoder.embed_tokens.weight", "logit_scale")


def parts_in_file(path) -> list[str]:
    """The pipeline components (of PARTS) whose weights the file holds."""
    with open_safetensors(path) as fh:
        keys = list(fh.keys())
    return [name for name, (prefix, _) in PARTS.items() if any(k.startswith(prefix) for k in keys)]


def _dequantized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not comfy_layout.is_comfy(state, None):
        return state
    tensors, scales = comfy_layout.normalize(state)
    return {k: (t.float() * scales[k] if k in scales else t) for k, t in tensors.items()}


def _read(path, prefix: str) -> dict[str, torch.Tensor]:
    with open_safetensors(path) as fh:
        return {k[len(prefix) :]: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix)}


def load_parts(path, components: dict) -> dict[str, str]:
    """Fill `components` (in place) with the parts the file holds; {component: 'file' or 'base'}."""
    found = parts_in_file(path)
    origin = {}
    for name, (prefix, label) in PARTS.items():
        module = components.get(name)
        if module is None:
            continue
        if name not in found:
            origin[name] = "base"
            continue
        state = _dequantized(_read(path, prefix))
        if name == "vae":
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, dict(module.config))
        dtype = next(module.parameters()).dtype
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        result = module.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith(_MAY_LACK)]
        unexpected = [k for k in result.unexpected_keys if not k.endswith(_MAY_LACK)]
        if missing or unexpected:
            raise ModelLoadError(
                f"the {label} in {path.name} does not fit the base's {label}: "
                + (f"{len(missing)} missing, e.g. {missing[0]}" if missing else "")
                + ("; " if missing and unexpected else "")
                + (f"{len(unexpected)} unexpected, e.g. {unexpected[0]}" if unexpected else ""),
                tried=[str(path)],
                fix="pass as --base the model family this file was made from",
            )
        origin[name] = "file"
    return origin
