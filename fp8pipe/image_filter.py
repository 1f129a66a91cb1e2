"""The image filter behind the word filter: an image classifier run on every generated image
before anyone sees it.

A preset names a `transformers` image-classification model (a hub id or a saved folder), the
labels that count as unsuitable and a threshold; an image is flagged when any of those labels
scores at least the threshold. A flagged image is refused like a filtered prompt (the
visitor's friendly message, one log line) before it is saved, shown, put in the slideshow or
returned by the API. The classifier is loaded at start-up; a preset that names one fails
closed: when it cannot be loaded the app does not start (ImageFilterError, exit status 2).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .safety import FRIENDLY_MESSAGE
from .service import Refused

FILTER_DEVICES = ("auto", "cpu", "cuda")
FILTER_VRAM_BYTES = 400 * 1024**2  # a ViT-base classifier in float32 (344 MB of weights) and its activations at 224 px
VRAM_KEPT_FREE = 0.05  # as the planner keeps (fp8pipe.memory.plan_placement)


class ImageFilterError(RuntimeError):
    """The classifier a preset requires cannot be loaded; the message says what to do."""


class ImageFlagged(Refused):
    """A generated image the filter flagged. str() is the visitor's message; `detail` is for the log."""

    field = "image"

    def __init__(self, detail: str):
        super().__init__(FRIENDLY_MESSAGE)
        self.detail = detail


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    label: str  # the highest-scoring unsuitable label
    score: float
    seconds: float


def filter_device(choice: str, engine_device: str, vram_budget: int | None, planned_peak: int | None) -> str:
    """Where the classifier runs. "auto": on the GPU when the engine has one and the planner's
    predicted peak for the preset's default picture leaves room for the classifier twice over
    (FILTER_VRAM_BYTES, with the planner's 5% kept free); else on the CPU, where it costs
    time (bench/results/image-filter-cpu.json) but never the diffusion model's memory."""
    if choice != "auto":
        return choice
    if not engine_device.startswith("cuda") or not vram_budget or planned_peak is None:
        return "cpu"
    room = vram_budget * (1 - VRAM_KEPT_FREE) - planned_peak
    return "cuda" if room >= 2 * FILTER_VRAM_BYTES else "cpu"


def planned_peak_vram(spec, preset, budget, device: str) -> tuple[int | None, int | None]:
    """(VRAM budget, the planner's predicted peak for the preset's default picture), or
    (None, None) without a GPU, for a model the planner does not know, or when nothing fits."""
    from . import memory

    if spec is None or not device.startswith("cuda"):
        return None, None
    vram = memory.parse_size(budget) if budget else memory.free_vram_bytes(device)
    if not vram:
        return None, None
    defaults = preset.defaults_for(spec)
    work = memory.Workload(defaults["width"], defaults["height"], 1, defaults["guidance"] > 1.0)
    plan = memory.plan_placement(spec, vram, memory.host_ram_bytes(), work, preset.precision, memory.choose_attention(device), preset.t5)
    return (vram, plan.predicted_peak_vram_bytes) if plan.fits else (None, None)


@dataclass
class ImageFilter:
    """A loaded classifier, the labels it flags and the threshold."""

    model: str
    classify: object  # a transformers ImageClassificationPipeline (or any callable of the same shape)
    labels: tuple[str, ...]
    threshold: float
    device: str = "cpu"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, image) -> Verdict:
        start = time.perf_counter()
        with self._lock:
            scores = self.classify(image.convert("RGB"), top_k=None)
        wanted = {label.casefold() for label in self.labels}
        hits = [(s["score"], s["label"]) for s in scores if str(s["label"]).casefold() in wanted]
        score, label = max(hits, default=(0.0, ""))
        return Verdict(score >= self.threshold, label, float(score), time.perf_counter() - start)


def load_image_filter(model: str, labels, threshold: float, device: str = "cpu", why: str = "") -> ImageFilter:
    """The classifier through transformers' image-classification pipeline, from a hub id (the
    local cache only, when offline) or a folder written by save_pretrained. Any failure, or a
    model that has none of `labels`, is an ImageFilterError that says how to go on."""
    how = (
        f"Provide it: download it once while online (hf download {model}) or pass a folder "
        "that holds a saved image-classification model with --image-filter FOLDER; or turn the image filter "
        "off explicitly with --no-image-filter."
    )
    try:
        from transformers import pipeline

        classify = pipeline("image-classification", model=model, device=device)
    except Exception as e:  # noqa: BLE001 - whatever the reason, the kiosk must not run unfiltered
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageFilterError(f"the image filter {why}could not be loaded: {model} ({type(e).__name__}: {reason[:300]}). {how}") from None
    known = {str(name).casefold() for name in classify.model.config.id2label.values()}
    if not {label.casefold() for label in labels} & known:
        raise ImageFilterError(
            f"the image filter {model} has none of the labels {', '.join(labels)} to flag (its labels: "
            f"{', '.join(sorted(known))}); set [image_filter] labels in the preset. {how}"
        )
    return ImageFilter(model=model, classify=classify, labels=tuple(labels), threshold=float(threshold), device=str(device))


def screened(stream: Iterator, image_filter: ImageFilter | None) -> Iterator:
    """`stream` (progress items, then a Result) with every image of the Result checked first.
    A flagged Result raises ImageFlagged and is never yielded; a passed one carries the
    filter's time in its stats (image_filter_s)."""
    from .generation import Result

    for item in stream:
        if image_filter is not None and isinstance(item, Result):
            seconds = 0.0
            for image in item.images or [item.image]:
                verdict = image_filter.check(image)
                seconds += verdict.seconds
                if verdict.flagged:
                    raise ImageFlagged(f"{verdict.label} {verdict.score:.2f} >= {image_filter.threshold:g} ({image_filter.model}, {seconds:.3f} s)")
            item.stats["image_filter_s"] = round(seconds, 4)
            item.stats["image_filter_device"] = image_filter.device
        yield item
