"""Captioned pictures of simple shapes, made in code: the demo model's whole training set.

A scene is a few discrete choices (shape, color, background, position, size, count). It is
rendered with PIL at 4x and box-filtered down, so edges are anti-aliased, and described by
one of several plain-English templates. Everything is a function of a seed.

Some (color, shape, background) triples never appear in training (HELD_OUT): the eval
prompts are made of them, so adherence is measured on combinations the model never saw.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
SUPERSAMPLE = 4

COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 180),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "star")
# Where a shape's center sits, as fractions of the image side.
POSITIONS = {"center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
POSITION_PHRASES = {
    "center": ("in the center", "in the middle"),
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
}
# Shape diameter as a fraction of the image side.
SIZES = {"small": 0.24, "medium": 0.34, "large": 0.44}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("",), "large": ("large", "big")}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}

# (color, shape, background) combinations kept out of training; the eval is built on them.
HELD_OUT = (
    ("red", "star", "white"),
    ("green", "circle", "black"),
    ("blue", "triangle", "gray"),
    ("yellow", "square", "black"),
    ("purple", "star", "gray"),
    ("orange", "circle", "white"),
    ("blue", "square", "white"),
    ("green", "triangle", "gray"),
)


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    position: str | None = "center"  # None: anywhere (the caption does not say)
    size: str = "medium"
    count: int = 1

    def __post_init__(self):
        assert self.shape in SHAPES and self.color in COLORS and self.background in BACKGROUNDS
        assert self.position is None or self.position in POSITIONS
        assert self.size in SIZES and self.count in COUNT_WORDS

    @property
    def held_out(self) -> bool:
        return (self.color, self.shape, self.background) in HELD_OUT


def shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """The outline of `shape` of radius r around (cx, cy); None for a circle (drawn as an ellipse)."""
    if shape == "square":
        s = r * 0.85  # a square of the same visual weight as the circle
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":  # pointing up, centered on its bounding box
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "star":  # five points, one up
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + r * 0.1))
        return points
    return None


def _centers(scene: Scene, rng: random.Random, radius: float) -> list[tuple[float, float]]:
    """Shape centers (fractions of the side): the named spot plus jitter, or free places for counts."""
    if scene.count == 1:
        if scene.position is None:
            lo, hi = radius + 0.04, 1 - radius - 0.04
            return [(rng.uniform(lo, hi), rng.uniform(lo, hi))]
        x, y = POSITIONS[scene.position]
        return [(x + rng.uniform(-0.04, 0.04), y + rng.uniform(-0.04, 0.04))]
    # Several shapes: spread along a random row or column so they never overlap.
    n = scene.count
    slots = [(i + 0.5) / n for i in range(n)]
    across = rng.uniform(0.35, 0.65)
    if rng.random() < 0.5:
        return [(s + rng.uniform(-0.02, 0.02), across) for s in slots]
    return [(across, s + rng.uniform(-0.02, 0.02)) for s in slots]


def render(scene: Scene, seed: int, resolution: int = RESOLUTION) -> Image.Image:
    """The scene as an RGB image; the seed jitters position and size a little."""
    rng = random.Random(seed)
    side = resolution * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    diameter = SIZES[scene.size] * rng.uniform(0.92, 1.08)
    if scene.count > 1:
        diameter = min(diameter, 0.8 / scene.count)
    radius = diameter / 2
    for cx, cy in _centers(scene, rng, radius):
        cx, cy, r = cx * side, cy * side, radius * side
        polygon = shape_polygon(scene.shape, cx, cy, r)
        if polygon is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLORS[scene.color])
        else:
            draw.polygon(polygon, fill=COLORS[scene.color])
    return image.resize((resolution, resolution), Image.BOX)


def _plural(shape: str) -> str:
    return shape + "s"


def caption(scene: Scene, rng: random.Random) -> str:
    """One plain-English description of the scene, in a randomly chosen wording."""
    size = rng.choice(SIZE_WORDS[scene.size])
    noun = scene.shape if scene.count == 1 else _plural(scene.shape)
    thing = " ".join(w for w in (COUNT_WORDS[scene.count], size, scene.color, noun) if w)
    if scene.count == 1 and rng.random() < 0.15:
        thing = " ".join(w for w in ("one", size, scene.color, noun) if w)
    where = rng.choice(POSITION_PHRASES[scene.position]) if scene.position and scene.count == 1 else ""
    bg = scene.background
    templates = (
        "{thing} {where} on a {bg} background",
        "{thing} {where}, {bg} background",
        "a picture of {thing} {where} on {bg}",
        "{bg} background with {thing} {where}",
        "{thing} {where} against a {bg} background",
        "an image of {thing} {where} on a plain {bg} background",
    )
    text = rng.choice(templates).format(thing=thing, where=where, bg=bg)
    return " ".join(text.replace(" ,", ",").split())


def random_scene(rng: random.Random) -> Scene:
    """A scene drawn uniformly from the choices; most have one shape, some two or three."""
    count = rng.choices((1, 2, 3), weights=(0.8, 0.12, 0.08))[0]
    color = rng.choice(list(COLORS))
    return Scene(
        shape=rng.choice(SHAPES),
        color=color,
        background=rng.choice(list(BACKGROUNDS)),
        position=rng.choice([*POSITIONS, None]) if count == 1 else None,
        size=rng.choice(list(SIZES)) if count == 1 else "small",
        count=count,
    )


def training_set(n: int, seed: int = 0, resolution: int = RESOLUTION) -> tuple[np.ndarray, list[str], list[Scene]]:
    """(uint8 images [n, H, W, 3], captions, scenes): n training examples, never a held-out triple."""
    rng = random.Random(seed)
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    captions, scenes = [], []
    i = 0
    while i < n:
        scene = random_scene(rng)
        if scene.held_out:
            continue
        images[i] = np.asarray(render(scene, rng.randrange(2**31), resolution))
        captions.append(caption(scene, rng))
        scenes.append(scene)
        i += 1
    return images, captions, scenes


# ---- the demo LoRA's lesson: a house style -------------------------------------------------
# The base model draws a prompt that names no background on gray (its captions always name one).
# The demo LoRA teaches a house style: no background named means black. Its eval prompts are
# the held-out triples' (color, shape) pairs without a background, so it learns them on black
# from nothing but other pairs.
HOUSE_BACKGROUND = "black"
LORA_HELD_OUT = tuple(dict.fromkeys((c, s) for c, s, _ in HELD_OUT))


def house_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of the scene that names no background (the house style supplies it)."""
    text = caption(scene, rng)
    for phrase in (f" against a {scene.background} background", f" on a plain {scene.background} background", f" on a {scene.background} background",
                   f", {scene.background} background", f" on {scene.background}"):
        text = text.replace(phrase, "")
    if text.startswith(f"{scene.background} background with "):
        text = text[len(f"{scene.background} background with ") :]
    return " ".join(text.split())


def lora_set(n: int, seed: int = 0, resolution: int = RESOLUTION) -> tuple[np.ndarray, list[str], list[Scene]]:
    """The demo LoRA's lesson: n pictures on the house background, captioned without a
    background; never a LORA_HELD_OUT (color, shape) pair."""
    rng = random.Random(seed)
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    captions, scenes = [], []
    while len(scenes) < n:
        base = random_scene(rng)
        scene = Scene(base.shape, base.color, HOUSE_BACKGROUND, base.position, base.size, base.count)
        if (scene.color, scene.shape) in LORA_HELD_OUT:
            continue
        images[len(scenes)] = np.asarray(render(scene, rng.randrange(2**31), resolution))
        captions.append(house_caption(scene, rng))
        scenes.append(scene)
    return images, captions, scenes


def lora_eval_scenes() -> list[Scene]:
    """The demo LoRA's held-out eval: each held-out pair at each position on the house background (40 scenes)."""
    return [Scene(shape=s, color=c, background=HOUSE_BACKGROUND, position=p) for c, s in LORA_HELD_OUT for p in POSITIONS]


def lora_eval_prompt(scene: Scene) -> str:
    """The one fixed wording of a LoRA eval prompt: no background named."""
    return f"a {scene.color} {scene.shape} {POSITION_PHRASES[scene.position][0]}"


def eval_prompt(scene: Scene) -> str:
    """The one fixed wording of an eval prompt."""
    return f"a {scene.color} {scene.shape} {POSITION_PHRASES[scene.position][0]} on a {scene.background} background"


def eval_scenes() -> list[Scene]:
    """The held-out eval set: each held-out triple at each of the five positions (40 scenes)."""
    return [Scene(shape=s, color=c, background=b, position=p) for c, s, b in HELD_OUT for p in POSITIONS]


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order (the demo tokenizers' vocabulary)."""
    words = ["a", "an", "one", "two", "three", "of", "on", "in", "at", "near", "the", "with", "against", "plain",
             "picture", "image", "background", "middle", ","]
    words += [w for ws in SIZE_WORDS.values() for w in ws if w]
    words += list(COLORS) + list(BACKGROUNDS) + list(SHAPES) + [_plural(s) for s in SHAPES] + list(POSITIONS)
    return list(dict.fromkeys(words))
