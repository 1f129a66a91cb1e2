"""LoRAs on a loaded pipeline, FP8 or not, in two exact ways (files are read by lora_keys).

- runtime: a forward hook on each layer adds the low-rank update beside the (FP8) matmul,
  y = layer(x) + strength * alpha/rank * B(A(x)), in the layer's compute dtype (16-bit on a
  GPU). Strengths are set per request; nothing is reloaded or re-quantized to switch. The
  A/B matrices follow the input to its device, so they move with their block under offload.
  Cost: the A and B bytes (rank x (in + out) per layer) and two thin matmuls per layer and step.
- merge: W' = dequant(W) + strength * alpha/rank * B @ A, re-quantized per row with fresh
  scales (FP8 layers) or cast back (16/32-bit layers). The original parameters are kept as
  they are, so undoing is exact. Cost: one pass over the targeted layers per change; none per step.

A `LoraSet` (held by whoever holds the model) owns both and turns a request's list of
(file, strength) into the right state, reading each file once.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelLoadError
from .fp8 import FP8Linear, dequantize_rowwise, quantize_rowwise
from .lora_keys import LoraFile, Target, pipe_module, read_lora

log = logging.getLogger(__name__)

MODES = ("runtime", "merge")
MAX_STRENGTH = 4.0
MAX_LORAS = 8
MAX_CACHED_FILES = 16  # LoRA files kept read (on the host) by one pipeline's LoraSet


@dataclass(frozen=True)
class LoraSpec:
    """One requested LoRA: a file and its strength."""

    path: str
    strength: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).stem


def parse_lora_arg(text: str) -> LoraSpec:
    """`FILE` or `FILE:STRENGTH` (the strength a number from -4 to 4); a clear ValueError otherwise."""
    path, sep, tail = str(text).rpartition(":")
    strength = 1.0
    if sep and path and not tail.startswith(("\\", "/")):
        try:
            strength = float(tail)
        except ValueError:
            path = text  # a colon that is part of the path
    else:
        path = text
    return LoraSpec(path, check_strength(strength, path))


def check_strength(strength, where: str = "") -> float:
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
        raise ValueError(f"lora strength{' of ' + where if where else ''}: must be a number from -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}; got {strength!r}")
    return value


def check_lora_files(specs: list[LoraSpec]) -> None:
    """Each file exists, is safetensors, and appears once; at most MAX_LORAS (before any model is read)."""
    if len(specs) > MAX_LORAS:
        raise ValueError(f"--lora: at most {MAX_LORAS} LoRAs at once; got {len(specs)}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"--lora: each file once; got {', '.join(names)}")
    for spec in specs:
        path = Path(spec.path).expanduser()
        if not path.is_file():
            raise ValueError(f"--lora: {spec.path} is not a file; pass a LoRA .safetensors file")
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"--lora: {path.name} is not a .safetensors file; fp8pipe reads LoRAs in safetensors only (pickles can run code)")


def file_hash(path: str | Path) -> str:
    """The short SHA-256 other SD tools write in `Lora hashes` (first 10 hex digits of the file's);
    remembered per (file, size, modification time), so a request does not re-read a big file."""
    stat = Path(path).expanduser().stat()
    return _file_hash(str(Path(path).expanduser().resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def png_loras(specs: list[LoraSpec]) -> list[tuple[str, float, str]]:
    """(name, strength, hash) of each LoRA, for the PNG parameters."""
    return [(s.name, s.strength, file_hash(s.path)) for s in specs]


def offload_held(pipe, component: str, module: str) -> str | None:
    """What offload hook holds a layer's weights (so that replacing them would not take effect),
    or None: accelerate's sequential offload (weights on the meta device) or diffusers' group
    offload (a hook on the layer or one of its parents)."""
    root = getattr(pipe, component)
    layer = root.get_submodule(module)
    if layer.weight.device.type == "meta":
        return "accelerate's sequential offload"
    parts = module.split(".")
    for i in range(len(parts) + 1):
        if getattr(root.get_submodule(".".join(parts[:i])), "_diffusers_hook", None) is not None:
            return "diffusers' group offload"
    return None


def _layer_dtype(layer: nn.Module) -> torch.dtype:
    return layer.compute_dtype if isinstance(layer, FP8Linear) else layer.weight.dtype


def _layer_device(layer: nn.Module) -> torch.device:
    return layer.weight.device


class RuntimeLoras:
    """Forward hooks that add each active LoRA's update to its layers' outputs."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.entries: dict[tuple[str, str], list[tuple[str, torch.Tensor, torch.Tensor, float]]] = {}
        self.handles: dict[tuple[str, str], object] = {}
        self.strengths: dict[str, float] = {}
        self.names: set[str] = set()

    def add(self, lora: LoraFile) -> None:
        self.names.add(str(lora.path))
        for (component, module), (a, b, scale) in lora.layers.items():
            layer = pipe_module(self.pipe, Target(component, module))
            dtype, device = _layer_dtype(layer), _layer_device(layer)
            if device.type == "meta":
                device = torch.device("cpu")
            entry = (str(lora.path), a.to(device, dtype), b.to(device, dtype), scale)
            self.entries.setdefault((component, module), []).append(entry)
            if (component, module) not in self.handles:
                self.handles[(component, module)] = layer.register_forward_hook(self._hook((component, module)))

    def _hook(self, key):
        def hook(module, args, output):
            x = args[0]
            for name, a, b, scale in self.entries[key]:
                strength = self.strengths.get(name, 0.0)
                if strength == 0.0:
                    continue
                if a.device != x.device:
                    a, b = a.to(x.device, non_blocking=True), b.to(x.device, non_blocking=True)
                update = F.linear(F.linear(x.to(a.dtype), a), b)
                output = output + (strength * scale) * update.to(output.dtype)
            return output

        return hook

    def keep_only(self, names: set[str]) -> None:
        """Drop the A/B matrices of every LoRA not in `names` (its hooks stay, with nothing to add)."""
        if self.names <= names:
            return
        for key, entries in self.entries.items():
            self.entries[key] = [e for e in entries if e[0] in names]
        self.names &= names

    def remove(self) -> None:
        for handle in self.handles.values():
            handle.remove()
        self.entries.clear()
        self.handles.clear()


class MergedLoras:
    """Weights with LoRAs merged in, and the original parameters to put back."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.originals: dict[tuple[str, str], dict[str, nn.Parameter]] = {}
        self.merged: tuple = ()

    def merge(self, loras: list[tuple[LoraFile, float]]) -> None:
        deltas: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for lora, strength in loras:
            for key, (a, b, scale) in lora.layers.items():
                deltas.setdefault(key, []).append((a, b, strength * scale))
        self.refuse_if_held(set(deltas))
        for (component, module), parts in deltas.items():
            layer = pipe_module(self.pipe, Target(component, module))
            device = _layer_device(layer)
            if isinstance(layer, FP8Linear):
                w = dequantize_rowwise(layer.weight, layer.scale, torch.float32)
            else:
                w = layer.weight.float()
            for a, b, s in parts:
                w = w + s * (b.to(device, torch.float32) @ a.to(device, torch.float32))
            self.originals[(component, module)] = {"weight": layer.weight, **({"scale": layer.scale} if isinstance(layer, FP8Linear) else {})}
            if isinstance(layer, FP8Linear):
                q, scale = quantize_rowwise(w)
                layer.weight, layer.scale = nn.Parameter(q, requires_grad=False), nn.Parameter(scale, requires_grad=False)
            else:
                layer.weight = nn.Parameter(w.to(layer.weight.dtype), requires_grad=False)

    def refuse_if_held(self, keys) -> None:
        """ValueError, before anything changes, when an offload hook holds one of these layers' weights."""
        for component, module in sorted(keys):
            held = offload_held(self.pipe, component, module)
            if held:
                raise ValueError(f"lora mode merge: {component}.{module} is held by {held}, which would keep the weights it was given; "
                                 "use runtime mode (or merge the LoRAs at load, before the offload hooks)")

    def undo(self) -> None:
        for (component, module), params in self.originals.items():
            layer = pipe_module(self.pipe, Target(component, module))
            for attr, param in params.items():
                setattr(layer, attr, param)
        self.originals.clear()
        self.merged = ()


@dataclass
class LoraSet:
    """The LoRA state of one loaded pipeline: files read once, applied per request."""

    pipe: object
    files: dict[str, LoraFile] = field(default_factory=dict)
    runtime: RuntimeLoras | None = None
    merged: MergedLoras | None = None

    def __post_init__(self):
        self.runtime = RuntimeLoras(self.pipe)
        self.merged = MergedLoras(self.pipe)

    def read(self, spec: LoraSpec) -> LoraFile:
        path = Path(spec.path).expanduser().resolve()
        stat = path.stat() if path.is_file() else None
        key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}" if stat else str(path)  # a file replaced in place is read again
        if key not in self.files:
            lora = read_lora(spec.path, self.pipe)
            if lora.unmatched:
                log.warning("lora %s", lora.summary())
            while len(self.files) >= MAX_CACHED_FILES:  # the oldest read leaves first
                self.files.pop(next(iter(self.files)))
            self.files[key] = lora
        return self.files[key]

    def apply(self, specs: list[LoraSpec], mode: str = "runtime") -> dict:
        """Put the pipeline in the state `specs` ask for; returns the stats that describe it."""
        if mode not in MODES:
            raise ValueError(f"lora mode: must be one of {', '.join(MODES)}; got {mode!r}")
        if len(specs) > MAX_LORAS:
            raise ValueError(f"loras: at most {MAX_LORAS} at once; got {len(specs)}")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"loras: each file once; got {', '.join(names)}")
        files = [(self.read(s), check_strength(s.strength, s.name)) for s in specs]  # all read before anything changes
        wanted = tuple((str(lora.path), strength) for lora, strength in files)
        if mode == "merge":
            self.runtime.strengths = {}
            if self.merged.merged != wanted:
                self.merged.refuse_if_held({key for lora, _ in files for key in lora.layers} | set(self.merged.originals))
                self.merged.undo()
                self.merged.merge(files)
                self.merged.merged = wanted
        else:
            self.merged.refuse_if_held(set(self.merged.originals))
            self.merged.undo()
            self.runtime.keep_only({str(lora.path) for lora, _ in files})  # only this request's LoRAs stay beside the layers
            for lora, _ in files:
                if str(lora.path) not in self.runtime.names:  # on the device only once runtime mode needs it
                    self.runtime.add(lora)
            self.runtime.strengths = {str(lora.path): strength for lora, strength in files}
        return self.stats(files, mode)

    def stats(self, files, mode) -> dict:
        if not files:
            return {"lora_mode": None, "loras": []}
        return {
            "lora_mode": mode,
            "loras": [{"name": lora.name, "strength": strength, "layout": lora.layout, "layers": len(lora.layers),
                       "matched": f"{lora.matched_modules}/{lora.file_modules}", "bytes": lora.nbytes} for lora, strength in files],
        }


def apply_for_request(lora_set: LoraSet, fixed, library, request_loras, mode: str, budget: int | None = None) -> tuple[dict, list[LoraSpec]]:
    """Put `lora_set`'s pipeline in the state one request asks: the fixed LoRAs (the preset's,
    --lora) and the request's own, named in `library` (fp8pipe.lora_library), whose runtime
    weights may take at most `budget` bytes (None: no limit). A file that cannot be used is a
    RequestError on the field `loras`; the pipeline is left as it was."""
    from .lora_library import FIELD, human_bytes, runtime_bytes
    from .requests import RequestError

    paths = [library.path(name) for name, _ in request_loras]
    if budget is not None and paths:
        need = sum(runtime_bytes(p) for p in paths)
        if need > budget:
            raise RequestError(FIELD, f"these {len(paths)} LoRAs take {human_bytes(need)} beside the weights in runtime mode; "
                                      f"this server's budget for one request's LoRAs is {human_bytes(budget)} (--lora-budget): choose fewer or smaller ones")
    specs = list(fixed) + [LoraSpec(str(p), strength) for p, (_, strength) in zip(paths, request_loras)]
    try:
        return lora_set.apply(specs, mode), specs
    except RequestError:
        raise
    except (ValueError, ModelLoadError) as e:  # a file of another model family, a broken file, the same file twice
        text = e.message + (f" ({e.fix})" if e.fix else "") if isinstance(e, ModelLoadError) else str(e)
        if library is not None:
            text = text.replace(str(library.folder) + "/", "")  # never the server's paths
        raise RequestError(FIELD, text) from None


def lora_bytes(files: list[LoraFile], dtype_bytes: int = 2) -> int:
    """What runtime LoRAs add to device memory (A and B of every layer at `dtype_bytes` each), from
    files already read (the planner counts them from the headers alone: lora_library.runtime_bytes)."""
    return sum(a.numel() + b.numel() for lora in files for a, b, _ in lora.layers.values()) * dtype_bytes

