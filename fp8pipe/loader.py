"""A StableDiffusion3Pipeline from a hub id, a local folder, a single file, an FP8
checkpoint or the demo model, with a precision policy per component.

The transformer is always built on the meta device and filled one tensor at a time, each
Linear weight quantized on the target device as it arrives: the full BF16 transformer never
sits on the GPU, and an FP8 checkpoint never becomes BF16 anywhere.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import allinone
from . import checkpoint as ckpt
from .errors import ModelLoadError
from .fp8 import (
    FP8_DTYPE,
    T5_POLICY,
    TRANSFORMER_POLICY,
    FP8Linear,
    FP8Policy,
    FP8Report,
    choose_path,
    dequantize_rowwise,
    fp8_report,
    swap_linears_to_fp8,
)
from .specs import SPECS, ModelSpec, find_spec, spec_for_transformer_config

PRECISIONS = ("fp8", "bf16", "fp16", "fp32")
T5_MODES = ("16bit", "fp8", "cpu", "drop")
FP8_PATH_CHOICES = ("auto", "scaled_mm", "upcast")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The demo model trained by fp8pipe/demo/train.py, shipped in the package (safetensors).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo" / "model"


@dataclass(frozen=True)
class LoadOptions:
    """How to load: transformer precision, T5 policy, FP8 path, device, and (for single
    transformer files) where the other components come from."""

    precision: str = "fp8"
    t5: str = "16bit"
    fp8_path: str = "auto"
    device: str | None = None
    base: str | None = None
    # Offload placements: build with `device`'s dtypes and FP8 path but keep every tensor on
    # this device (the CPU); the engine's offload hooks move them. `pipe.to(dtype)` cannot do
    # this afterwards: it would cast the E4M3 weights too (float8 counts as floating point).
    storage: str | None = None

    def __post_init__(self):
        for name, value, allowed in (
            ("precision", self.precision, PRECISIONS),
            ("t5", self.t5, T5_MODES),
            ("fp8_path", self.fp8_path, FP8_PATH_CHOICES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass
class LoadedModel:
    """A ready pipeline and the facts about how it was loaded."""

    pipe: object
    name: str
    source_kind: str
    spec: ModelSpec
    device: torch.device
    options: LoadOptions
    fp8_path: str | None
    fp8: FP8Report | None
    load_seconds: float
    dtypes: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)  # single file: component -> "file" or "base"

    @property
    def random_weights(self) -> bool:
        return self.source_kind == "random" or (self.spec.random_weights and self.source_kind in ("demo", "fp8_checkpoint-demo"))

    @property
    def display_name(self) -> str:
        """The model's name for PNG chunks and stats: a hub id, family or folder name, never a path."""
        from .naming import model_display_name

        return model_display_name(self.name, self.source_kind)

    def describe(self) -> dict:
        return {
            "model": self.display_name,
            "source": self.source_kind,
            "family": self.spec.name,
            "device": str(self.device),
            "precision": self.options.precision,
            "t5": self.options.t5,
            "fp8_path": self.fp8_path,
            "dtypes": self.dtypes,
            "random_weights": self.random_weights,
            "fp8": self.fp8.as_dict() if self.fp8 else None,
            "load_s": round(self.load_seconds, 3),
            **({"components_from": self.origins} if self.origins else {}),
        }


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {name!r}", fix="use --device auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {name!r} was asked for but no CUDA GPU is available", fix="use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {name!r} was asked for but this machine has {torch.cuda.device_count()} GPU(s)", fix="use --device cuda:0")
    return device


def component_dtype(device: torch.device) -> torch.dtype:
    """CLIP, VAE and 16-bit T5: bf16 on a GPU, fp32 on the CPU (where 16-bit math is slow)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def transformer_compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    return component_dtype(device) if precision == "fp8" else _DTYPES[precision]


# ---- the transformer ----------------------------------------------------------------


def _empty_transformer(config: dict) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        return SD3Transformer2DModel.from_config(config).eval()


def _check_fits(module: nn.Module, attr: str, tensor: torch.Tensor, key: str) -> None:
    """The architecture has a tensor `attr` on `module` of `tensor`'s shape, or a clear error."""
    if attr not in module._parameters and attr not in module._buffers:
        raise ModelLoadError(f"unexpected tensor {key!r} in the transformer checkpoint", fix="check the file is an SD3 transformer")
    current = module._parameters.get(attr, module._buffers.get(attr))
    if current is not None and tuple(current.shape) != tuple(tensor.shape):
        raise ModelLoadError(
            f"tensor {key!r} has shape {tuple(tensor.shape)} but the architecture expects {tuple(current.shape)}",
            fix="the checkpoint does not match its config; re-export it",
        )


def _assign(module: nn.Module, attr: str, tensor: torch.Tensor, key: str) -> None:
    _check_fits(module, attr, tensor, key)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def build_transformer(
    config: dict,
    tensors: Iterable[tuple[str, torch.Tensor]],
    precision: str,
    device: torch.device,
    fp8_path: str = "upcast",
    policy: FP8Policy = TRANSFORMER_POLICY,
    storage: torch.device | None = None,
) -> nn.Module:
    """An SD3 transformer at `precision` on `device`, filled from (name, tensor) pairs.

    Tensors may be 16/32-bit (FP8 layers quantize them on arrival) or FP8 with a
    `<layer>.scale` beside them (kept as they are, or dequantized for a 16-bit precision).
    """
    compute = transformer_compute_dtype(precision, device)
    device, run_device = (storage or device), device  # tensors live on `storage` when given; dtypes follow `run_device`
    model = _empty_transformer(config)
    if precision == "fp8":
        swap_linears_to_fp8(model, policy, fp8_path, compute, quantize_weights=False)
    pending: dict[str, dict[str, torch.Tensor]] = {}  # FP8 weights for 16-bit layers, awaiting their scale
    for key, tensor in tensors:
        if not tensor.is_floating_point():  # every SD3 transformer tensor is floating point (E4M3 too)
            raise ModelLoadError(
                f"tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; the transformer holds floating-point tensors only",
                fix="the checkpoint is not an SD3 transformer in a float format; re-export it",
            )
        module_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ModelLoadError(f"unexpected tensor {key!r} in the transformer checkpoint", fix="check the file is an SD3 transformer") from None
        is_fp8_layer = isinstance(module, FP8Linear)
        if is_fp8_layer and attr == "weight" and tensor.dtype != FP8_DTYPE:
            _check_fits(module, "weight", tensor, key)
            module.set_weight(tensor.to(device))
        elif is_fp8_layer and attr in ("weight", "scale"):
            _assign(module, attr, tensor.to(device, torch.float32 if attr == "scale" else FP8_DTYPE), key)
        elif isinstance(module, nn.Linear) and (tensor.dtype == FP8_DTYPE or attr == "scale"):
            if attr == "weight":
                _check_fits(module, attr, tensor, key)
            pending.setdefault(module_name, {})[attr] = tensor
            if {"weight", "scale"} <= pending[module_name].keys():
                parts = pending.pop(module_name)
                weight = dequantize_rowwise(parts["weight"].to(device), parts["scale"].to(device), compute)
                _assign(module, "weight", weight, key)
        else:
            _assign(module, attr, tensor.to(device, compute if tensor.is_floating_point() else tensor.dtype), key)
    if pending:
        raise ModelLoadError(f"FP8 weights without scales: {', '.join(sorted(pending))}", fix="re-export the checkpoint")
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ModelLoadError(
            f"the transformer checkpoint is missing {len(missing)} tensors, e.g. {', '.join(missing[:3])}",
            fix="the file is truncated or of another architecture",
        )
    if compute != component_dtype(run_device):
        cast_io_to(model, compute)
    return model


def cast_io_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Run `module` in `dtype` whatever its callers pass, and hand outputs back in their dtype."""

    def cast(x, to):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(to)
        if isinstance(x, (tuple, list)):
            return type(x)(cast(v, to) for v in x)
        return x

    def pre(mod, args, kwargs):
        first = kwargs.get("hidden_states", args[0] if args else None)
        mod._fp8pipe_caller_dtype = first.dtype if isinstance(first, torch.Tensor) else None
        return cast(args, dtype), {k: cast(v, dtype) for k, v in kwargs.items()}

    def post(mod, args, kwargs, output):
        to = mod._fp8pipe_caller_dtype
        if to is None:
            return output
        if hasattr(output, "sample"):
            output.sample = output.sample.to(to)
            return output
        return cast(output, to)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True)


# ---- sources ------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    kind: str  # demo | fp8_checkpoint | folder | single_file | hub
    location: str


def resolve_source(model: str) -> Source:
    """Decide what `model` names, or raise a ModelLoadError that says what was tried."""
    model = (model or "demo").strip()
    if model == "demo":
        return Source("demo", "demo")
    path = Path(model).expanduser()
    try:
        path.resolve(strict=False)
        path.exists()
    except (RuntimeError, OSError) as e:  # a symlink loop, a name too long
        reason = "a symlink loop" if isinstance(e, RuntimeError) or getattr(e, "errno", None) == 40 else (getattr(e, "strerror", None) or type(e).__name__)
        shown = model if len(model) <= 200 else model[:200] + "..."
        raise ModelLoadError(f"model path {shown!r} cannot be followed ({reason})", tried=[shown], fix="pass the real folder or file (not a link loop), with a name the file system accepts") from None
    ckpt.refuse_pickle(path)
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelLoadError(f"{path} is not a .safetensors file", tried=[str(path)], fix="pass a .safetensors checkpoint or a diffusers folder")
        return Source("single_file", str(path))
    if path.is_dir():
        if ckpt.read_manifest(path) is not None:
            return Source("fp8_checkpoint", str(path))
        if (path / "model_index.json").is_file():
            return Source("folder", str(path))
        raise ModelLoadError(
            f"{path} is a folder but not a diffusers pipeline (no model_index.json) nor an fp8pipe checkpoint (no {ckpt.MANIFEST})",
            tried=[str(path)],
            fix="pass the folder that holds model_index.json, or a single .safetensors file",
        )
    spec = find_spec(model)
    if spec is not None and spec.hub_id:
        return Source("hub", spec.hub_id)
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return Source("hub", model)
    known = ", ".join(["demo", *[s.name for s in SPECS.values() if s.hub_id]])
    raise ModelLoadError(
        f"model {model!r} is neither an existing path nor a hub id",
        tried=[f"local path {path.resolve()} (not found)", "known names: " + known],
        fix="pass an existing folder or .safetensors file, a hub id like stabilityai/stable-diffusion-3.5-medium, or 'demo'",
    )


def _hub_snapshot(repo_id: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, gated, missing: all mean the same to the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"could not get {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {reason[:200]})",
            tried=[f"local path ./{repo_id} (not found)", f"hub id {repo_id} (not downloadable here, not in the local cache)"],
            fix=f"download it once where there is network (`hf download {repo_id}`; gated models need `hf auth login` "
            "and the licence accepted), or pass a local diffusers folder or .safetensors file",
        ) from None


# What a transformer config may ask for before anything is built: SD3.5 Large is 38 layers of
# 24 x 64; these bounds leave room for larger models and refuse sizes that would never finish.
CONFIG_BOUNDS = {
    "num_layers": (1, 128),
    "num_attention_heads": (1, 128),
    "attention_head_dim": (1, 512),
    "joint_attention_dim": (1, 16_384),
    "caption_projection_dim": (1, 16_384),
    "pooled_projection_dim": (1, 16_384),
    "in_channels": (1, 64),
    "out_channels": (1, 64),
    "patch_size": (1, 8),
    "sample_size": (1, 1024),
    "pos_embed_max_size": (1, 1024),
}
MAX_MODEL_WIDTH = 16_384  # num_attention_heads x attention_head_dim


def check_transformer_config(config: dict, where: str) -> dict:
    """Refuse a config with missing, negative or absurd sizes before a model is built from it."""
    for key, (low, high) in CONFIG_BOUNDS.items():
        value = config.get(key)
        if value is None and key in ("out_channels", "pos_embed_max_size", "caption_projection_dim"):
            continue  # optional in diffusers
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ModelLoadError(f"{where}: {key} = {value!r} is not allowed; it must be a whole number from {low} to {high}", fix="use the model's original config.json")
    width = config["num_attention_heads"] * config["attention_head_dim"]
    if width > MAX_MODEL_WIDTH:
        raise ModelLoadError(f"{where}: num_attention_heads x attention_head_dim = {width} is more than {MAX_MODEL_WIDTH}", fix="use the model's original config.json")
    return config


def _transformer_config(folder: Path) -> dict:
    path = folder / "transformer" / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing", tried=[str(folder)], fix="the folder is not a complete SD3 pipeline")
    config = {k: v for k, v in ckpt.read_json_object(path).items() if not k.startswith("_")}
    return check_transformer_config(config, "transformer/config.json")


def _spec_for(name: str, config: dict, folder: Path) -> ModelSpec:
    """The known family by name or shape; otherwise a spec read from the folder's own configs."""
    known = find_spec(name) or spec_for_transformer_config(config)
    if known is not None:
        return known
    vae_path = folder / "vae" / "config.json"
    vae = ckpt.read_json_object(vae_path) if vae_path.is_file() else SPECS["sd3.5-medium"].vae_config
    blocks = vae.get("block_out_channels")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 8:
        raise ModelLoadError(f"vae/config.json: block_out_channels = {blocks!r} is not allowed; it must be a list of 1 to 8 widths", fix="use the model's original config.json")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    multiple = factor * config["patch_size"]
    return ModelSpec(
        name="sd3-custom",
        hub_id=None,
        transformer_config=config,
        steps=28,
        guidance=4.5,
        resolution=config["sample_size"] * factor,
        min_resolution=2 * multiple,
        max_resolution=config["pos_embed_max_size"] * multiple,
        vae_config=vae,
    )


def demo_model_shipped() -> bool:
    return (DEMO_MODEL_DIR / "model_index.json").is_file()


def _demo_components(spec: ModelSpec, with_t5: bool) -> dict:
    """The shipped demo model's components (transformer excluded), or, when the package has no
    trained model, a seeded random tiny pipeline's (transformer included)."""
    if demo_model_shipped():
        return _pretrained_components(str(DEMO_MODEL_DIR), "16bit" if with_t5 else "drop")
    from .tiny import build_tiny_pipeline

    return build_tiny_pipeline(spec, seed=0, with_t5=with_t5).components


def _pipeline_from(components: dict):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**components)


def _pretrained_components(location: str, t5: str) -> dict:
    """Every component but the transformer, from a diffusers folder or hub id (safetensors only)."""
    from diffusers import StableDiffusion3Pipeline

    # bf16 as SD3.5 stores them (lossless): T5-XXL never sits in fp32 on the host on its way in.
    kwargs = {"transformer": None, "use_safetensors": True, "dtype": torch.bfloat16}
    if t5 == "drop":
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    try:
        pipe = StableDiffusion3Pipeline.from_pretrained(location, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(
            f"could not load the text encoders and VAE from {location!r} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
            tried=[location],
            fix="pass a complete diffusers folder (model_index.json, text encoders, tokenizers, vae) or a cached hub id",
        ) from None
    return pipe.components


def _place_components(components: dict, device: torch.device, t5: str, storage: torch.device | None = None) -> None:
    """Move CLIP, VAE and T5 to their device and dtype, applying the T5 policy, in place.

    With `storage`, tensors stay there (the CPU, for offload placements) in `device`'s dtypes."""
    dtype = component_dtype(device)
    run_device, device = device, storage or device
    for name in ("text_encoder", "text_encoder_2", "vae"):
        components[name] = components[name].to(device=device, dtype=dtype).eval()
    encoder = components.get("text_encoder_3")
    if t5 == "drop" or encoder is None:
        components["text_encoder_3"] = components["tokenizer_3"] = None
        return
    if t5 == "cpu" and run_device.type != "cpu":
        components["text_encoder_3"] = encoder.to("cpu", torch.bfloat16).eval()
        run_on_cpu_inputs(components["text_encoder_3"])
        return
    encoder = encoder.to(dtype=dtype)
    if t5 == "fp8":
        swap_linears_to_fp8(encoder, T5_POLICY, "upcast", dtype)
    components["text_encoder_3"] = encoder.to(device).eval()


def run_on_cpu_inputs(module: nn.Module) -> None:
    """Let a CPU-resident encoder take inputs from the GPU (the pipeline moves outputs back)."""

    def pre(mod, args, kwargs):
        move = lambda x: x.to("cpu") if isinstance(x, torch.Tensor) else x  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    module.register_forward_pre_hook(pre, with_kwargs=True)


def _manifest_settings(source: Source, folder: Path) -> tuple[FP8Policy, str, str]:
    """(policy, spec name, source kind) of a folder: an fp8pipe checkpoint's manifest says them."""
    manifest = ckpt.read_manifest(folder) if source.kind == "fp8_checkpoint" else None
    if manifest is None:
        return TRANSFORMER_POLICY, source.location, source.kind
    kind = "fp8_checkpoint-demo" if manifest.get("spec") == "demo" else source.kind
    return FP8Policy.from_dict(manifest["policy"]), manifest.get("spec") or source.location, kind


def load_model(model: str = "demo", options: LoadOptions | None = None) -> LoadedModel:
    """Load `model` (demo, hub id, folder, .safetensors file, FP8 checkpoint) as `options` say."""
    options = options or LoadOptions()
    start = time.perf_counter()
    source = resolve_source(model)
    device = resolve_device(options.device)
    path = choose_path(device, options.fp8_path) if options.precision == "fp8" else None
    policy = TRANSFORMER_POLICY
    kind = source.kind
    origins: dict[str, str] = {}  # single files: which components came from the file, which from --base

    if source.kind == "demo":
        spec = SPECS["demo"]
        components = _demo_components(spec, with_t5=options.t5 != "drop")
        if demo_model_shipped():
            config = _transformer_config(DEMO_MODEL_DIR)
            tensors = ckpt.iter_safetensors(ckpt.safetensors_files(DEMO_MODEL_DIR / "transformer"))
        else:  # a checkout without the trained model: say that its pictures are noise
            spec = dataclasses.replace(spec, random_weights=True)
            config = dict(spec.transformer_config)
            tensors = components.pop("transformer").state_dict().items()
    elif source.kind == "single_file":
        layout, state = ckpt.read_single_file_transformer(Path(source.location))
        candidates = [s.transformer_config for s in SPECS.values()]
        base_folder = Path(options.base).expanduser() if options.base and Path(options.base).expanduser().is_dir() else None
        if base_folder is not None and (base_folder / "transformer" / "config.json").is_file():
            base_config = _transformer_config(base_folder)
            mismatch = ckpt.architecture_mismatch(state, base_config)
            if mismatch:
                raise ModelLoadError(
                    f"{Path(source.location).name} is a transformer of another architecture than --base {base_folder.name} ({mismatch})",
                    tried=[source.location, str(base_folder)],
                    fix="pass as --base the model family this file was made from",
                )
            candidates.insert(0, base_config)  # the base's own architecture first
        config = ckpt.infer_transformer_config(state, candidates)
        if config is None:
            raise ModelLoadError(
                f"{Path(source.location).name} ({layout} layout) matches none of the known SD3.5 architectures",
                tried=[source.location],
                fix="pass a diffusers folder with its own config instead",
            )
        spec = _spec_for("", config, base_folder or Path(source.location).parent)
        base = options.base or spec.hub_id or "demo"
        kind = f"single_file:{layout}"
        components = _demo_components(spec, options.t5 != "drop") if base == "demo" else _load_base(base, options.t5)
        components.pop("transformer", None)
        origins = allinone.load_parts(Path(source.location), components)
        origins.update(tokenizers="base", scheduler="base")
        tensors = state.items()
    else:  # folder, fp8 checkpoint, hub
        folder = Path(source.location) if source.kind != "hub" else _hub_snapshot(source.location, ["model_index.json", "transformer/*.json", "transformer/*.safetensors"])
        config = _transformer_config(folder)
        policy, spec_name, kind = _manifest_settings(source, folder)
        spec = _spec_for(spec_name, config, folder)
        components = _pretrained_components(str(folder) if source.kind != "hub" else source.location, options.t5)
        components.pop("transformer", None)
        tensors = ckpt.iter_safetensors(ckpt.safetensors_files(folder / "transformer"))

    storage = torch.device(options.storage) if options.storage else None
    transformer = build_transformer(config, tensors, options.precision, device, path or "upcast", policy, storage=storage)
    _place_components(components, device, options.t5, storage=storage)
    pipe = _pipeline_from({**components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    report = fp8_report(transformer) if options.precision == "fp8" else None
    dtypes = component_dtypes(pipe, options, device, report is not None)
    return LoadedModel(
        pipe=pipe,
        name=model,
        source_kind=kind,
        spec=spec,
        device=device,
        options=options,
        fp8_path=path,
        fp8=report,
        load_seconds=time.perf_counter() - start,
        dtypes=dtypes,
        origins=origins,
    )


def component_dtypes(pipe, options: LoadOptions, device: torch.device, fp8: bool) -> dict:
    """What each component of a loaded pipeline computes in, as the stats report it."""
    return {
        "transformer": "fp8+" + str(transformer_compute_dtype("fp8", device)).removeprefix("torch.") if fp8 else options.precision,
        "clip": str(component_dtype(device)).removeprefix("torch."),
        "vae": str(pipe.vae.dtype).removeprefix("torch."),
        "t5": options.t5 if pipe.text_encoder_3 is not None else "drop",
    }


def _load_base(base: str, t5: str) -> dict:
    source = resolve_source(base)
    if source.kind not in ("folder", "hub", "fp8_checkpoint"):
        raise ModelLoadError(f"--base must be a diffusers folder or hub id; got {base!r}", tried=[base])
    if source.kind == "hub":
        _hub_snapshot(source.location, ["model_index.json"])  # fail fast, with the clear message, when offline
    return _pretrained_components(source.location, t5)


def transformer_report_on_meta(config: dict, policy: FP8Policy = TRANSFORMER_POLICY) -> dict:
    """What the policy does to a transformer of this shape, counted on the meta device (no
    memory allocated): quantized and kept layers, and bytes at FP8 against all-BF16."""
    model = _empty_transformer(config)
    bf16_bytes = sum(t.numel() * 2 for t in model.parameters())
    swap_linears_to_fp8(model, policy, "upcast", torch.bfloat16, quantize_weights=False)
    report = fp8_report(model)
    fp8_bytes = sum(
        t.numel() * (t.element_size() if t.dtype in (FP8_DTYPE, torch.float32) else 2) for t in model.parameters()
    )
    allocated = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    return {
        "policy": policy.as_dict(),
        "quantized_layers": len(report.quantized),
        "kept_linear_layers": report.kept_linear,
        "parameters": sum(t.numel() for t in model.parameters()),
        "bf16_bytes": bf16_bytes,
        "fp8_bytes": fp8_bytes,
        "fp8_over_bf16": round(fp8_bytes / bf16_bytes, 4),
        "allocated_tensors": len(allocated),
    }
