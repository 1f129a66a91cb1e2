"""Named settings for each use (kiosk-8gb, quality-12gb, ...): TOML files, validated on load.

A preset names the model and precision, the defaults a request starts from, the limits a
request may not pass (enforced server-side, at the API too), kiosk behaviour (styles,
examples, filter words, the image filter, idle reset, rate limit) and the queue size. Every error names the
file, the key and the allowed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10 (ZeroGPU's documented runtime): the backport
    import tomli as tomllib  # type: ignore

from .requests import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS, Limits
from .specs import ModelSpec

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")
PRECISIONS = ("fp8", "bf16", "fp16", "fp32")
T5_MODES = ("auto", "16bit", "fp8", "cpu", "drop")  # auto: the planner chooses


class PresetError(ValueError):
    """A preset file is malformed; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Style:
    name: str
    suffix: str


@dataclass(frozen=True)
class PresetLora:
    """A LoRA every request of the preset uses (a kiosk's house style): a .safetensors file and its strength."""

    file: str
    strength: float = 1.0


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    model: str = "demo"
    precision: str = "fp8"
    t5: str = "auto"
    vram: str | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    negative_prompt: str = ""
    max_steps: int = MAX_STEPS
    max_guidance: float = MAX_GUIDANCE
    min_size: int | None = None
    max_size: int | None = None
    max_prompt_chars: int = MAX_PROMPT_CHARS
    styles: tuple[Style, ...] = ()
    loras: tuple[PresetLora, ...] = ()
    lora_mode: str = "auto"
    examples: tuple[str, ...] = ()
    filter_words: tuple[str, ...] = ()
    idle_seconds: int = 90
    rate_limit_requests: int = 10
    rate_limit_seconds: int = 60
    rate_limit_total: int | None = None  # over all clients together; None: 10 x requests
    queue_size: int = 16
    previews: bool = True
    compile: bool = False  # torch.compile the resident transformer's blocks at start-up (fused FP8 quantizer); eager where that fails
    image_filter: str | None = None  # an image-classification model (hub id or folder); None: off
    image_filter_labels: tuple[str, ...] = ("nsfw",)
    image_filter_threshold: float = 0.5
    image_filter_device: str = "auto"  # auto, cpu, cuda (fp8pipe.image_filter.filter_device)
    serve: tuple = ()  # [serve]: (key, value) pairs for `python -m fp8pipe serve` (replicas, autoscaling)
    source: str = "<built-in>"

    def limits_for(self, spec: ModelSpec) -> Limits:
        """The preset's limits, never wider than what the model supports."""
        return Limits(
            min_size=max(spec.min_resolution, self.min_size or spec.min_resolution),
            max_size=min(spec.max_resolution, self.max_size or spec.max_resolution),
            size_multiple=spec.size_multiple,
            max_steps=self.max_steps,
            max_guidance=self.max_guidance,
            max_prompt_chars=self.max_prompt_chars,
        )

    @property
    def rate_limit_ceiling(self) -> int:
        """Requests per window over all clients together (the global ceiling)."""
        return self.rate_limit_total or 10 * self.rate_limit_requests

    def check_for(self, spec: ModelSpec) -> None:
        """Refuse (PresetError) a preset whose own defaults this model would refuse: limits that
        leave no size, or default settings (the model's native size when the preset gives none)
        outside the limits or off the size grid. Without this the server would start and then
        refuse every request that leaves a setting out."""
        from .requests import GenerationRequest, RequestError

        limits = self.limits_for(spec)
        if limits.min_size > limits.max_size:
            raise PresetError(
                f"{self.source}: [limits] sizes {self.min_size or spec.min_resolution} to {self.max_size or spec.max_resolution} "
                f"leave nothing that {spec.name} supports ({spec.min_resolution} to {spec.max_resolution})"
            )
        try:
            GenerationRequest.create(spec, prompt="x", seed=0, limits=limits, **self.defaults_for(spec))
        except RequestError as e:
            where = "[defaults]" if getattr(self, e.field, None) is not None else f"the model's default ({spec.name})"
            raise PresetError(f"{self.source}: {where} {e}; set [defaults] {e.field} within the preset's [limits]") from None

    def defaults_for(self, spec: ModelSpec) -> dict:
        """Request fields a client may leave out: the preset's, else the model's recommendation."""
        return {
            "steps": self.steps if self.steps is not None else min(spec.steps, self.max_steps),
            "guidance": self.guidance if self.guidance is not None else min(spec.guidance, self.max_guidance),
            "width": self.width or spec.resolution,
            "height": self.height or spec.resolution,
            "negative_prompt": self.negative_prompt,
        }


# key -> (section, type, check, allowed text)
def _int_range(lo, hi):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi), f"a whole number from {lo} to {hi}"


def _float_range(lo, hi):
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi  # noqa: E731
    return ok, f"a number from {lo} to {hi}"


def _one_of(options):
    return (lambda v: v in options), "one of " + ", ".join(options)


def _text(max_len):
    return (lambda v: isinstance(v, str) and len(v) <= max_len), f"text of at most {max_len} characters"


_TOP = {
    "name": _text(64),
    "description": _text(500),
    "model": _text(500),
    "precision": _one_of(PRECISIONS),
    "t5": _one_of(T5_MODES),
    "vram": _text(32),
    "idle_seconds": _int_range(10, 86_400),
    "queue_size": _int_range(1, 1000),
    "previews": ((lambda v: isinstance(v, bool)), "true or false"),
    "compile": ((lambda v: isinstance(v, bool)), "true or false"),
    "examples": ((lambda v: isinstance(v, list) and all(isinstance(x, str) and 0 < len(x) <= 500 for x in v)), "a list of prompts"),
    "lora_mode": _one_of(("auto", "runtime", "merge")),
    "filter_words": ((lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)), "a list of words"),
}
_DEFAULTS = {
    "steps": _int_range(1, MAX_STEPS),
    "guidance": _float_range(0.0, MAX_GUIDANCE),
    "width": _int_range(64, 4096),
    "height": _int_range(64, 4096),
    "negative_prompt": _text(MAX_PROMPT_CHARS),
}
_LIMITS = {
    "max_steps": _int_range(1, MAX_STEPS),
    "max_guidance": _float_range(0.0, MAX_GUIDANCE),
    "min_size": _int_range(64, 4096),
    "max_size": _int_range(64, 4096),
    "max_prompt_chars": _int_range(1, MAX_PROMPT_CHARS),
}
_RATE = {"requests": _int_range(1, 10_000), "per_seconds": _int_range(1, 86_400), "total": _int_range(1, 1_000_000)}
_IMAGE_FILTER = {
    "model": _text(500),
    "labels": ((lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v)), "a non-empty list of labels"),
    "threshold": _float_range(0.0, 1.0),
    "device": _one_of(("auto", "cpu", "cuda")),
}
_SERVE = {  # Ray Serve replicas (fp8pipe.cluster.options.ServeOptions); flags override
    "replicas": _int_range(1, 1024),
    "min_replicas": _int_range(0, 1024),
    "max_replicas": _int_range(1, 1024),
    "target_ongoing_requests": _float_range(0.1, 64.0),
    "gpus": _float_range(0.0, 8.0),
}
_STYLE = {"name": _text(64), "suffix": _text(300)}
_LORA = {
    "file": ((lambda v: isinstance(v, str) and v.endswith(".safetensors") and len(v) <= 500), "the path of a .safetensors LoRA file"),
    "strength": _float_range(-4.0, 4.0),
}
MAX_LORAS = 8
MAX_FILE_BYTES = 256 * 1024
MAX_DEPTH = 8


def _check_table(source: str, section: str, table, schema: dict) -> dict:
    where = f"{source}: [{section}]" if section else source
    if not isinstance(table, dict):
        raise PresetError(f"{where} must be a table")
    for key, value in table.items():
        if key not in schema:
            raise PresetError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(schema)}")
        ok, allowed = schema[key]
        if not ok(value):
            raise PresetError(f"{where}: {key} = {value!r} is not allowed; it must be {allowed}")
    return table


def parse_preset(text: str, source: str) -> Preset:
    """A Preset from TOML text; `source` names the file in every error."""
    if len(text) > MAX_FILE_BYTES:
        raise PresetError(f"{source}: {len(text)} characters; a preset may have at most {MAX_FILE_BYTES}")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{source}: not valid TOML ({e})") from None
    except RecursionError:
        raise PresetError(f"{source}: nested too deeply (a preset nests at most {MAX_DEPTH} levels)") from None
    if _depth(data) > MAX_DEPTH:
        raise PresetError(f"{source}: nested too deeply (a preset nests at most {MAX_DEPTH} levels)")
    sections = {"defaults": _DEFAULTS, "limits": _LIMITS, "rate_limit": _RATE, "image_filter": _IMAGE_FILTER, "serve": _SERVE}
    top = {k: v for k, v in data.items() if k not in sections and k not in ("styles", "loras")}
    _check_table(source, "", top, _TOP)
    fields = dict(top)
    fields.update(_check_table(source, "defaults", data.get("defaults", {}), _DEFAULTS))
    fields.update(_check_table(source, "limits", data.get("limits", {}), _LIMITS))
    rate = _check_table(source, "rate_limit", data.get("rate_limit", {}), _RATE)
    if "requests" in rate:
        fields["rate_limit_requests"] = rate["requests"]
    if "per_seconds" in rate:
        fields["rate_limit_seconds"] = rate["per_seconds"]
    if "total" in rate:
        fields["rate_limit_total"] = rate["total"]
    image_filter = _check_table(source, "image_filter", data.get("image_filter", {}), _IMAGE_FILTER)
    if image_filter and not image_filter.get("model", "").strip():
        raise PresetError(f"{source}: [image_filter] needs model (a hub id or a folder of an image-classification model)")
    for key, value in image_filter.items():
        fields["image_filter" if key == "model" else f"image_filter_{key}"] = tuple(value) if key == "labels" else value
    fields["serve"] = tuple(_check_table(source, "serve", data.get("serve", {}), _SERVE).items())
    styles = data.get("styles", [])
    if not isinstance(styles, list) or not all(isinstance(s, dict) and set(s) == {"name", "suffix"} for s in styles):
        raise PresetError(f"{source}: styles must be a list of tables with exactly the keys name and suffix")
    for number, style in enumerate(styles, 1):
        _check_table(source, f"styles {number}", style, _STYLE)
        if not style["name"].strip():
            raise PresetError(f"{source}: [styles {number}]: name must not be empty")
    fields["styles"] = tuple(Style(s["name"], s["suffix"]) for s in styles)
    loras = data.get("loras", [])
    if not isinstance(loras, list) or len(loras) > MAX_LORAS:
        raise PresetError(f"{source}: loras must be a list of at most {MAX_LORAS} tables with the keys file and strength")
    for number, lora in enumerate(loras, 1):
        _check_table(source, f"loras {number}", lora, _LORA)
        if "file" not in lora:
            raise PresetError(f"{source}: [loras {number}]: missing key 'file'")
    fields["loras"] = tuple(PresetLora(x["file"], float(x.get("strength", 1.0))) for x in loras)
    fields["examples"] = tuple(fields.get("examples", ()))
    fields["filter_words"] = tuple(w.strip() for w in fields.get("filter_words", ()))
    if "name" not in fields:
        raise PresetError(f"{source}: missing key 'name'")
    if "min_size" in fields and "max_size" in fields and fields["min_size"] > fields["max_size"]:
        raise PresetError(f"{source}: [limits] min_size {fields['min_size']} is larger than max_size {fields['max_size']}")
    for side in ("width", "height"):
        if side in fields and not fields.get("min_size", 0) <= fields[side] <= fields.get("max_size", fields[side]):
            raise PresetError(f"{source}: [defaults] {side} {fields[side]} is outside [limits] {fields.get('min_size', 64)} to {fields.get('max_size', 4096)}")
    if fields.get("steps", 1) > fields.get("max_steps", MAX_STEPS):
        raise PresetError(f"{source}: [defaults] steps {fields['steps']} exceeds [limits] max_steps {fields['max_steps']}")
    if fields.get("guidance", 0) > fields.get("max_guidance", MAX_GUIDANCE):
        raise PresetError(f"{source}: [defaults] guidance {fields['guidance']} exceeds [limits] max_guidance {fields['max_guidance']}")
    return Preset(source=source, **fields)


def _depth(value, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_file: str) -> Preset:
    """A shipped preset by name (`kiosk-8gb`) or a TOML file by path."""
    candidate = Path(name_or_file).expanduser()
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise PresetError(f"preset file {name_or_file} does not exist")
        path = candidate
    else:
        if not name_or_file or not set(name_or_file) <= NAME_CHARS or name_or_file.startswith("."):
            raise PresetError(f"preset name {name_or_file!r} is not allowed; names use a-z, 0-9, '-', '_'; shipped: {', '.join(available_presets())}")
        path = PRESET_DIR / f"{name_or_file}.toml"
        if not path.is_file():
            raise PresetError(f"unknown preset {name_or_file!r}; shipped presets: {', '.join(available_presets())}")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PresetError(f"{path.name}: larger than {MAX_FILE_BYTES} bytes; not a preset")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PresetError(f"{path.name}: cannot be read ({e})") from None
    return parse_preset(text, path.name)
