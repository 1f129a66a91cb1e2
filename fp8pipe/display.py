"""Small pictures shown at a whole-number scale with nearest-neighbour pixels, never blurred.

A 64 px picture stretched to a 500 px gallery cell is a smear; a copy scaled 4x with
nearest-neighbour shows its pixels. The copy keeps the PNG's `parameters` chunk, and the
caption says the scale.
"""

from __future__ import annotations

from pathlib import Path

DISPLAY_SIDE = 256  # pictures smaller than this are shown scaled up by a whole number


def display_scale(width: int, height: int, target: int = DISPLAY_SIDE) -> int:
    """The largest whole factor that keeps the longer side at most `target` (1: as it is)."""
    return max(1, target // max(width, height, 1))


def display_copy(path: str | Path, target: int = DISPLAY_SIDE) -> tuple[str, int]:
    """(path to show, scale): the picture itself, or a nearest-neighbour copy beside it."""
    from PIL import Image

    from .metadata import CHUNK, png_info

    path = Path(path)
    with Image.open(path) as image:
        scale = display_scale(*image.size, target=target)
        if scale == 1:
            return str(path), 1
        big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        out = path.with_name(f"{path.stem}-x{scale}.png")
        text = image.text.get(CHUNK) if hasattr(image, "text") else None
        big.save(out, format="PNG", pnginfo=png_info(text) if text else None)
    return str(out), scale


def scale_label(width: int, height: int, scale: int) -> str:
    return f"{width}x{height} px" + (f", shown at {scale}x" if scale > 1 else "")
