"""The name a model goes by in what leaves the machine: PNG chunks, stats, page titles.

A hub id or family name as given; a folder, checkpoint or .safetensors file by its own name
(the last part of the path); never a path of this machine.
"""

from __future__ import annotations

from pathlib import PurePath


def model_display_name(model: str, source_kind: str | None = None) -> str:
    """`demo`, a hub id (`stabilityai/stable-diffusion-3.5-medium`), a family (`sd3.5-large`),
    or the last part of a local path (`my-finetune`, `sd3.5_large_fp8.safetensors`)."""
    text = (model or "demo").strip()
    local = source_kind in ("folder", "fp8_checkpoint", "single_file")
    if not local and source_kind is not None:
        return text  # demo or hub: already a public name
    if local or text.startswith(("/", "~", ".")) or "\\" in text or text.count("/") > 1:
        parts = PurePath(text.replace("\\", "/").rstrip("/")).parts
        return parts[-1] if parts and parts[-1] not in ("/", "~", ".", "..") else "local-model"
    return text
