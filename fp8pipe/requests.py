"""GenerationRequest: every generation setting, validated in one place against a model's limits.

Errors name the field and its allowed range, so the CLI, the engine and the app can show
them as they are.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from dataclasses import dataclass

from .specs import ModelSpec
from .text import has_visible, lone_surrogate

MAX_SEED = 2**32 - 1
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000
MAX_BATCH = 8
SHIFT_RANGE = (0.5, 12.0)


class RequestError(ValueError):
    """A request setting is out of range; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Limits:
    """What a request may ask for; presets narrow these, the model's spec bounds them."""

    min_size: int
    max_size: int
    size_multiple: int
    max_steps: int = MAX_STEPS
    max_guidance: float = MAX_GUIDANCE
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_batch: int = MAX_BATCH

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> "Limits":
        return cls(min_size=spec.min_resolution, max_size=spec.max_resolution, size_multiple=spec.size_multiple)


def _integer(field: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or value is None:
        raise RequestError(field, f"must be a whole number from {low} to {high}; got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise RequestError(field, f"must be a whole number from {low} to {high}; got {value!r}")
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RequestError(field, f"must be a whole number from {low} to {high}; got {value!r}") from None
    if not isinstance(value, int) or not low <= value <= high:
        raise RequestError(field, f"must be a whole number from {low} to {high}; got {value!r}")
    return value


def _text(field: str, value, max_chars: int, required: bool) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RequestError(field, f"must be text; got {type(value).__name__}")
    bad = lone_surrogate(value)
    if bad is not None:
        raise RequestError(field, f"must be valid Unicode text; character {bad + 1} is a lone surrogate (U+{ord(value[bad]):04X})")
    # Control characters (but not line breaks) carry no meaning for a text encoder.
    value = "".join(c for c in value if c in "\n\t" or unicodedata.category(c) != "Cc").strip()
    if required and not has_visible(value):
        raise RequestError(field, "must not be empty" + (" (it holds only invisible characters)" if value else ""))
    if len(value) > max_chars:
        raise RequestError(field, f"must be at most {max_chars} characters; got {len(value)}")
    return value


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    seed: int
    width: int
    height: int
    batch: int = 1
    shift: float = 3.0  # the flow-matching schedule's timestep shift
    loras: tuple[tuple[str, float], ...] = ()  # per-request LoRAs: (file name in the LoRA folder, strength)

    @classmethod
    def create(
        cls,
        spec: ModelSpec,
        prompt,
        negative_prompt=None,
        steps=None,
        guidance=None,
        seed=None,
        width=None,
        height=None,
        limits: Limits | None = None,
        batch=None,
        shift=None,
        loras=None,
        lora_choices=None,
        max_loras: int | None = None,
    ) -> "GenerationRequest":
        """A validated request; missing settings take the model's recommended defaults.

        `loras` ([{"name", "strength"}]) name files among `lora_choices` (the LoRA folder's
        names); with `lora_choices` None, per-request LoRAs are refused (a kiosk's come from
        its preset)."""
        limits = limits or Limits.for_spec(spec)
        size_range = f"{limits.min_size} to {limits.max_size} in steps of {limits.size_multiple}"
        sizes = []
        for field, value in (("width", width), ("height", height)):
            value = spec.resolution if value is None else value
            try:
                value = _integer(field, value, limits.min_size, limits.max_size)
            except RequestError:
                raise RequestError(field, f"must be {size_range}; got {value!r}") from None
            if value % limits.size_multiple:
                raise RequestError(field, f"must be {size_range}; got {value}")
            sizes.append(value)
        if guidance is None:
            guidance = spec.guidance
        try:
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float, str)):
                raise TypeError(guidance)  # true is not a number, nor is a list
            guidance = float(guidance)
        except (TypeError, ValueError):
            raise RequestError("guidance", f"must be a number from 0 to {limits.max_guidance}; got {guidance!r}") from None
        if not math.isfinite(guidance) or not 0.0 <= guidance <= limits.max_guidance:
            raise RequestError("guidance", f"must be a number from 0 to {limits.max_guidance}; got {guidance!r}")
        shift = spec.shift if shift is None else shift
        low, high = SHIFT_RANGE
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or not low <= shift <= high:
            raise RequestError("shift", f"must be a number from {low} to {high}; got {shift!r}")
        return cls(
            shift=float(shift),
            prompt=_text("prompt", prompt, limits.max_prompt_chars, required=True),
            negative_prompt=_text("negative_prompt", negative_prompt, limits.max_prompt_chars, required=False),
            steps=_integer("steps", spec.steps if steps is None else steps, 1, limits.max_steps),
            guidance=guidance,
            seed=secrets.randbelow(MAX_SEED + 1) if seed is None else _integer("seed", seed, 0, MAX_SEED),
            width=sizes[0],
            height=sizes[1],
            batch=_integer("batch", 1 if batch is None else batch, 1, limits.max_batch),
            loras=_loras(loras, lora_choices, max_loras),
        )


def _loras(value, choices, max_loras) -> tuple[tuple[str, float], ...]:
    from .lora_library import FIELD, MAX_REQUEST_LORAS, check_names, parse_request_loras

    parsed = parse_request_loras(value, MAX_REQUEST_LORAS if max_loras is None else max_loras)
    if parsed and choices is None:
        raise RequestError(FIELD, "this app takes no LoRAs per request (its LoRAs come from its preset); send none")
    return check_names(parsed, choices) if parsed else ()
