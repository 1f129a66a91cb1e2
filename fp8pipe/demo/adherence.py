"""Does a picture show what its prompt asked? Scored by simple geometry, and the demo's eval.

Four checks per picture, each 0 or 1, averaged:
- background: the median border color is nearest to the asked background;
- color: the median color of the shape region is nearest to the asked color. The region is
  the largest connected set of pixels farther from the background than half the picture's
  (robust) largest distance from it, so soft or blurred edges do not move it;
- shape: the region's bounding-box fill, and the shares of it in the box's top half and
  bottom quarter, are nearest to the asked shape's (a triangle is heavy at the bottom, a star
  light; prototypes measured on rendered pictures of each size);
- position: the region's centroid is nearest to the asked spot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..fp8 import psnr
from . import data

CHECKS = ("background", "color", "shape", "position")
MIN_CONTRAST = 40.0  # RGB distance from the background below which nothing is there


@dataclass(frozen=True)
class Reading:
    """What the checker sees in a picture."""

    background: str
    color: str | None
    shape: str | None
    position: str | None
    area: float  # share of the picture covered by the shape region


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((rgb - np.array(palette[name], dtype=float)) ** 2)))


def shape_features(mask: np.ndarray) -> tuple[float, float, float]:
    """(fill of the bounding box, share of the region in the box's top half, and in its bottom quarter)."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = len(ys) / ((y1 - y0) * (x1 - x0))
    top = float(np.mean(ys + 0.5 < (y0 + y1) / 2))
    bottom = float(np.mean(ys + 0.5 > y0 + 0.75 * (y1 - y0)))
    return fill, top, bottom


def _prototypes() -> dict[tuple[str, str], tuple[float, ...]]:
    """Each (shape, size)'s features, averaged over clean renders: small shapes are coarser."""
    out = {}
    background = np.array(data.BACKGROUNDS["white"], dtype=float)
    for shape in data.SHAPES:
        for size in data.SIZES:
            renders = [np.asarray(data.render(data.Scene(shape, "red", "white", size=size), seed), dtype=float) for seed in range(8)]
            feats = [shape_features(_region(r, background)[0]) for r in renders]
            out[shape, size] = tuple(float(v) for v in np.mean(feats, axis=0))
    return out


def _region(pixels: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the shape's mask, its core: the pixels well inside, for reading the color)."""
    distance = np.sqrt(np.sum((pixels - background) ** 2, axis=-1))
    peak = float(np.percentile(distance, 99.5))
    if peak < MIN_CONTRAST:
        return np.zeros(distance.shape, bool), np.zeros(distance.shape, bool)
    mask = largest_component(distance > peak / 2)
    return mask, mask & (distance > peak * 0.75)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (ties: the one met first in raster
    order), by propagating each region's smallest pixel index until nothing changes."""
    size = mask.size
    labels = np.where(mask, np.arange(size).reshape(mask.shape), size)
    while True:
        padded = np.pad(labels, 1, constant_values=size)
        spread = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        spread = np.where(mask, spread, size)
        if np.array_equal(spread, labels):
            break
        labels = spread
    if not mask.any():
        return mask.copy()
    ids, counts = np.unique(labels[mask], return_counts=True)  # ids ascending: raster order of each region's first pixel
    return labels == ids[int(np.argmax(counts))]


_PROTOTYPES: dict[tuple[str, str], tuple[float, ...]] | None = None


def read_picture(image) -> Reading:
    """Background, shape color, shape class and position of the largest thing in `image` (PIL or array)."""
    global _PROTOTYPES
    if _PROTOTYPES is None:
        _PROTOTYPES = _prototypes()
    pixels = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=float)
    h, w, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, data.BACKGROUNDS)
    mask, core = _region(pixels, bg_rgb)
    area = float(mask.mean())
    if mask.sum() < 0.002 * h * w:  # nothing there
        return Reading(background, None, None, None, area)
    color = _nearest(np.median(pixels[core], axis=0), data.COLORS)
    feats = shape_features(mask)
    shape = min(_PROTOTYPES, key=lambda k: math.dist(feats, _PROTOTYPES[k]))[0]
    ys, xs = np.nonzero(mask)
    centroid = ((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    position = min(data.POSITIONS, key=lambda p: math.dist(centroid, data.POSITIONS[p]))
    return Reading(background, color, shape, position, area)


def score(image, scene: data.Scene) -> dict[str, float]:
    """Each check (1.0 or 0.0) and their mean, for a one-shape scene with a stated position."""
    seen = read_picture(image)
    checks = {
        "background": float(seen.background == scene.background),
        "color": float(seen.color == scene.color),
        "shape": float(seen.shape == scene.shape),
        "position": float(seen.position == scene.position),
    }
    return {**checks, "mean": sum(checks.values()) / len(checks)}


# ---- the eval --------------------------------------------------------------------------

EVAL_SEED = 1234


def _generate_all(model: str, precision: str, scenes: list[data.Scene], bar=None, lora: str | None = None, lora_mode: str = "runtime", prompt=data.eval_prompt):
    from ..generation import generate
    from ..loader import LoadOptions, load_model
    from ..requests import GenerationRequest

    loaded = load_model(model, LoadOptions(precision=precision, device="cpu"))
    if lora is not None:
        from ..lora import LoraSet, LoraSpec

        LoraSet(loaded.pipe).apply([LoraSpec(str(lora))], lora_mode)
    spec = loaded.spec
    images = []
    for i, scene in enumerate(scenes):
        request = GenerationRequest.create(spec, prompt(scene), seed=EVAL_SEED + i, width=spec.resolution, height=spec.resolution)
        images.append(generate(loaded, request).image)
        if bar is not None:
            bar.update(1)
    return images


def evaluate(model: str = "demo", precisions: tuple[str, ...] = ("fp32", "bf16", "fp8"), limit: int = 0, progress: bool = False) -> dict:
    """Mean adherence over the held-out prompts for each precision (same seeds), and the mean
    PSNR of each FP8 picture against its FP32 twin. With `progress`, a bar on stderr says what
    runs and the time left."""
    import sys

    import torch
    from tqdm import tqdm

    torch.set_num_threads(2)
    scenes = data.eval_scenes()
    scenes = scenes[:: max(1, len(scenes) // limit)][:limit] if limit else scenes  # a spread, not the first few triples
    report: dict = {}
    pictures = {}
    total = len(precisions) * len(scenes)
    if progress:
        print(f"eval: {len(scenes)} held-out prompts x {len(precisions)} precisions ({', '.join(precisions)}) = {total} pictures; "
              "the bar's estimate settles after the first few", file=sys.stderr)
    bar = tqdm(total=total, unit="picture", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for precision in precisions:
        bar.set_description(f"{precision} pictures")
        pictures[precision] = _generate_all(model, precision, scenes, bar)
        scores = [score(img, s) for img, s in zip(pictures[precision], scenes)]
        report[precision] = round(float(np.mean([s["mean"] for s in scores])), 4)
        report[f"{precision}_checks"] = {c: round(float(np.mean([s[c] for s in scores])), 4) for c in CHECKS}
    if "fp8" in pictures and "fp32" in pictures:
        values = [psnr(a, b) for a, b in zip(pictures["fp8"], pictures["fp32"])]
        report["psnr_fp8_vs_fp32_db"] = round(float(np.mean([min(v, 99.0) for v in values])), 2)
        report["psnr_fp8_vs_fp32_min_db"] = round(float(min(values)), 2)
    report["prompts"] = len(scenes)
    bar.close()
    return report


# (label, precision, LoRA mode or None for no LoRA): the LoRA eval's rows.
LORA_ROWS = (("fp32_without_lora", "fp32", None), ("fp32", "fp32", "runtime"), ("fp8_runtime", "fp8", "runtime"), ("fp8_merge", "fp8", "merge"))


def evaluate_lora(lora: str, model: str = "demo", limit: int = 0, progress: bool = False) -> dict:
    """The demo LoRA's held-out adherence (data.lora_eval_scenes: prompts that name no
    background, scored against the house background): fp32 without the LoRA, then with it in
    fp32, FP8 runtime and FP8 merge (same seeds); each FP8 row's mean PSNR against fp32 with it."""
    import sys
    from pathlib import Path

    import torch
    from tqdm import tqdm

    torch.set_num_threads(2)
    scenes = data.lora_eval_scenes()
    scenes = scenes[:: max(1, len(scenes) // limit)][:limit] if limit else scenes
    if progress:
        print(f"eval: {len(scenes)} held-out prompts x {len(LORA_ROWS)} rows ({', '.join(r[0] for r in LORA_ROWS)})", file=sys.stderr)
    bar = tqdm(total=len(scenes) * len(LORA_ROWS), unit="picture", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    report: dict = {"lora": Path(lora).stem, "house_background": data.HOUSE_BACKGROUND}
    pictures = {}
    for label, precision, mode in LORA_ROWS:
        bar.set_description(label)
        pictures[label] = _generate_all(model, precision, scenes, bar, lora=lora if mode else None, lora_mode=mode or "runtime", prompt=data.lora_eval_prompt)
        scores = [score(img, s) for img, s in zip(pictures[label], scenes)]
        report[label] = round(float(np.mean([s["mean"] for s in scores])), 4)
        report[f"{label}_checks"] = {c: round(float(np.mean([s[c] for s in scores])), 4) for c in CHECKS}
    for label in ("fp8_runtime", "fp8_merge"):
        values = [psnr(a, b) for a, b in zip(pictures[label], pictures["fp32"])]
        report[f"psnr_{label}_vs_fp32_db"] = round(float(np.mean([min(v, 99.0) for v in values])), 2)
    report["prompts"] = len(scenes)
    bar.close()
    return report


def write_grid(out: str, model: str = "demo", precision: str = "fp8", columns: int = 8) -> str:
    """A labelled grid of pictures (fp8 by default): one per held-out triple, then seen combinations."""
    from pathlib import Path

    from PIL import Image, ImageDraw

    scenes = data.eval_scenes()[::5][:8] + [
        data.Scene(s, c, b, p) for s, c, b, p in (
            ("circle", "red", "white", "center"), ("square", "blue", "black", "left"), ("triangle", "yellow", "gray", "right"),
            ("star", "green", "white", "top"), ("circle", "purple", "black", "bottom"), ("square", "orange", "gray", "center"),
            ("triangle", "red", "black", "left"), ("star", "blue", "gray", "right"))
    ]
    images = _generate_all(model, precision, scenes)
    cell, label = 128, 44
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (img, scene) in enumerate(zip(images, scenes)):
        x, y = (i % columns) * cell, (i // columns) * (cell + label)
        grid.paste(img.resize((cell, cell), Image.NEAREST), (x, y))
        lines = (f"a {scene.color} {scene.shape}", data.POSITION_PHRASES[scene.position][0],
                 f"on {scene.background}" + ("  (held out)" if scene.held_out else ""))
        for j, line in enumerate(lines):
            draw.text((x + 3, y + cell + 2 + 13 * j), line, fill=(0, 0, 0))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return str(path)
