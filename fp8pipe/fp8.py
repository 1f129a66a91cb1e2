"""FP8 E4M3 weights with a float32 scale per output row, and the two ways to run them.

- "scaled_mm": activations are quantized per row on the fly (clamped to +-448) and
  multiplied by `torch._scaled_mm` (compute capability >= 8.9, and the CPU).
- "upcast": the weight is dequantized to the compute dtype right before a normal matmul
  (older GPUs: memory saved, no speed-up).

Written by hand because torchao saves only through pickle and its dynamic FP8 refuses the
CPU; this keeps the weight format (chosen by loading) apart from the path (chosen by device).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448.0
SCALED_MM_ALIGNMENT = 16  # torch._scaled_mm wants both matrix dimensions divisible by 16
PATHS = ("scaled_mm", "upcast")
# AdaLN modulation linears act on one conditioning row per image: FP8 compute there cannot be
# faster (the 16-bit matmul of one row is bound by reading the weight, which FP8 halves either
# way), only less accurate. They always run weight-only (upcast), whatever the model's path.
WEIGHT_ONLY_LAYERS = ("*.norm1.linear", "*.norm1_context.linear")
# Upcast inputs of at most this many rows (AdaLN modulation: one row per image and guidance pass)
# apply the row scales to the output instead of the weight: y = (x @ q^T) * scale, exact since
# every E4M3 value is a bf16/fp32 value. The weight is then only cast (read 1 byte, write 2, the
# matmul reads 2: 5 bytes per element) instead of dequantized through float32 (21 bytes), which
# on an eager 8 GB card was the largest memory term of a small image's step.
FEW_ROWS = 64


def is_weight_only_layer(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in WEIGHT_ONLY_LAYERS)


def layer_path(name: str, layer: FP8Linear, path: str) -> str:
    """The path one layer takes under the model's `path`: scaled_mm only where its shape fits
    `_scaled_mm` and it is not an AdaLN modulation layer; upcast otherwise."""
    if path == "scaled_mm" and (is_weight_only_layer(name) or not layer.supports_scaled_mm):
        return "upcast"
    return path


@dataclass(frozen=True)
class FP8Policy:
    """Which nn.Linear layers (by qualified name) hold FP8 weights: data, easy to change.

    A layer is quantized when it matches one of `quantize` and none of `keep`.
    """

    quantize: tuple[str, ...] = ("transformer_blocks.*",)
    keep: tuple[str, ...] = (
        "pos_embed*",  # patch embedding (a conv) and its position table
        "time_text_embed.*",  # timestep and pooled-text embeddings
        "context_embedder",  # text embedding projection
        "norm_out.*",  # final AdaLN modulation
        "proj_out",  # final projection to latent patches
    )

    def selects(self, name: str) -> bool:
        match = lambda patterns: any(fnmatch.fnmatchcase(name, p) for p in patterns)  # noqa: E731
        return match(self.quantize) and not match(self.keep)

    def as_dict(self) -> dict:
        return {"quantize": list(self.quantize), "keep": list(self.keep)}

    @classmethod
    def from_dict(cls, data: dict) -> FP8Policy:
        return cls(quantize=tuple(data["quantize"]), keep=tuple(data["keep"]))


TRANSFORMER_POLICY = FP8Policy()
# T5's feed-forward output `wo` is the layer transformers keeps in fp32 (it overflows in 16-bit),
# and its forward casts activations to `wo.weight.dtype`: it stays unquantized.
T5_POLICY = FP8Policy(quantize=("encoder.block.*",), keep=("*.DenseReluDense.wo",))


# amax * (1/448) rather than amax / 448: CUDA divides a tensor by a Python scalar as a multiply
# by its reciprocal and the CPU divides, so the scales (and E4M3 codes) differed by an ulp
# between a checkpoint quantized on a GPU and one quantized on the host (seen on an H100).
INV_FP8_MAX = 1.0 / FP8_MAX


def quantize_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 weight, float32 scale per output row) with weight ~= q * scale[:, None]; the same
    bytes on every device."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) * INV_FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.to(torch.float32) * scale[:, None]).to(dtype)


def _quantize_activation_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row activation scaling; the clamp keeps outliers from overflowing to NaN."""
    scale = (x2d.abs().amax(dim=1, keepdim=True).float() * INV_FP8_MAX).clamp(min=1e-12)
    q = (x2d.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


class FP8Linear(nn.Module):
    """A Linear whose weight is stored in E4M3 with a float32 scale per output row."""

    # How the scaled-mm path quantizes its input; an instance may hold a fused (compiled) one.
    quantize_activation = staticmethod(_quantize_activation_rows)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        path: str = "upcast",
        compute_dtype: torch.dtype = torch.bfloat16,
        device=None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.path = path
        self.compute_dtype = compute_dtype
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device), requires_grad=False)
        self.scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32, device=device), requires_grad=False)
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=compute_dtype, device=device), requires_grad=False) if bias else None
        )

    @property
    def supports_scaled_mm(self) -> bool:
        return self.in_features % SCALED_MM_ALIGNMENT == 0 and self.out_features % SCALED_MM_ALIGNMENT == 0

    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantize a 16/32-bit weight into this layer (on the weight's device)."""
        q, scale = quantize_rowwise(weight)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.scale = nn.Parameter(scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.path == "scaled_mm" and x.device.type in ("cuda", "cpu"):
            return self._forward_scaled_mm(x)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if x.numel() <= FEW_ROWS * self.in_features:
            return self._forward_few_rows(x, bias)
        weight = dequantize_rowwise(self.weight, self.scale, x.dtype)
        return F.linear(x, weight, bias)

    def _forward_few_rows(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Weight-only for a few rows: cast the E4M3 weight (exact), multiply, scale each output
        column in float32. fp16 inputs run in bf16: E4M3 values times activations can pass fp16's
        65504 before the scale brings them back."""
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float32) else torch.bfloat16
        y = F.linear(x.to(dtype), self.weight.to(dtype)).float() * self.scale
        y = y.to(x.dtype)
        return y + bias if bias is not None else y

    def _forward_scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2d = x.reshape(-1, self.in_features)
        xq, x_scale = self.quantize_activation(x2d)
        # Row-wise scaling on CUDA produces bf16 only; the CPU also gives the input dtype.
        out_dtype = torch.bfloat16 if x.device.type == "cuda" else x.dtype
        bias = self.bias.to(out_dtype) if self.bias is not None else None
        y = torch._scaled_mm(
            xq,
            self.weight.t(),  # (K, N) column-major, as _scaled_mm wants its second operand
            scale_a=x_scale,
            scale_b=self.scale[None, :],
            bias=bias,
            out_dtype=out_dtype,
        )
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, path={self.path}"


def fp8_matmul_available(device: torch.device | str) -> bool:
    """True where torch._scaled_mm runs: the CPU, and CUDA compute capability >= 8.9."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return False


def choose_path(device: torch.device | str, requested: str = "auto") -> str:
    """The FP8 execution path: `requested` if given, else scaled_mm on GPUs with FP8 matmul and
    upcast everywhere else. On the CPU `_scaled_mm` runs but loses: on the demo model (80
    pictures against fp32) it took 2.0x fp32's time against upcast's 1.5x, at a lower PSNR
    (38.8 dB against 43.0 dB), so the CPU's default is upcast; ask for scaled_mm to compare."""
    if requested == "auto":
        device = torch.device(device)
        return "scaled_mm" if device.type == "cuda" and fp8_matmul_available(device) else "upcast"
    if requested not in PATHS:
        raise ValueError(f"fp8 path must be one of auto, {', '.join(PATHS)}; got {requested!r}")
    if requested == "scaled_mm" and not fp8_matmul_available(device):
        raise ValueError(f"fp8 path scaled_mm needs compute capability >= 8.9 or the CPU; {device} has neither")
    return requested


def swap_linears_to_fp8(
    model: nn.Module, policy: FP8Policy, path: str, compute_dtype: torch.dtype, quantize_weights: bool = True
) -> list[str]:
    """Replace the policy's nn.Linear layers of `model` by FP8Linear, in place; returns their names.

    With `quantize_weights`, each layer's current weight is quantized on its own device, one
    layer at a time (so a model on the meta device stays there, allocating nothing).
    A layer whose shape `_scaled_mm` cannot take runs the upcast path, said in a log line.
    """
    names = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not policy.selects(name):
            continue
        device = module.weight.device
        fp8 = FP8Linear(module.in_features, module.out_features, module.bias is not None, path, compute_dtype, device)
        if path == "scaled_mm" and not fp8.supports_scaled_mm:
            log.info("fp8: %s (%dx%d) is not a multiple of 16: upcast path", name, module.out_features, module.in_features)
        fp8.path = layer_path(name, fp8, path)
        if quantize_weights and device.type != "meta":
            fp8.set_weight(module.weight.data)
            if module.bias is not None:
                fp8.bias = nn.Parameter(module.bias.data.to(compute_dtype), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fp8)
        names.append(name)
    return names


def set_fp8_path(model: nn.Module, path: str) -> None:
    """Switch every FP8Linear of `model` to `path` (layers that cannot take scaled_mm, and the
    AdaLN modulation layers, stay upcast)."""
    for name, module in model.named_modules():
        if isinstance(module, FP8Linear):
            module.path = layer_path(name, module, path)


@dataclass
class FP8Report:
    """What the policy did to a model: layer names and bytes, quantized against kept."""

    quantized: list[str] = field(default_factory=list)
    kept_linear: list[str] = field(default_factory=list)
    fp8_bytes: int = 0
    other_bytes: int = 0
    paths: dict[str, int] = field(default_factory=dict)
    layer_paths: dict[str, str] = field(default_factory=dict)  # every FP8 layer's path, by name

    @property
    def total_bytes(self) -> int:
        return self.fp8_bytes + self.other_bytes

    def as_dict(self) -> dict:
        return {
            "quantized_layers": len(self.quantized),
            "kept_linear_layers": self.kept_linear,
            "fp8_weight_bytes": self.fp8_bytes,
            "other_bytes": self.other_bytes,
            "total_bytes": self.total_bytes,
            "paths": self.paths,
            "weight_only_adaln_layers": sum(1 for n in self.quantized if is_weight_only_layer(n) and self.layer_paths.get(n) == "upcast"),
            "layer_paths": self.layer_paths,
        }


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()  # works on the meta device too


def fp8_report(model: nn.Module) -> FP8Report:
    """Count the FP8 layers, the Linear layers left in 16/32-bit, and the bytes of each kind."""
    report = FP8Report()
    fp8_ids = set()
    for name, module in model.named_modules():
        if isinstance(module, FP8Linear):
            report.quantized.append(name)
            report.paths[module.path] = report.paths.get(module.path, 0) + 1
            report.layer_paths[name] = module.path
            report.fp8_bytes += tensor_bytes(module.weight)
            fp8_ids.add(id(module.weight))
        elif isinstance(module, nn.Linear):
            report.kept_linear.append(name)
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in fp8_ids:
            report.other_bytes += tensor_bytes(t)
    return report


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    """||x - reference|| / ||reference||, in float64: the fidelity measure used throughout."""
    x, reference = x.double(), reference.double()
    return float((x - reference).norm() / reference.norm().clamp(min=1e-30))


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of two 8-bit pictures (PIL or arrays), in dB (inf when identical)."""
    import math

    import numpy as np

    x = np.asarray(a.convert("RGB") if hasattr(a, "convert") else a, dtype=np.float64)
    y = np.asarray(b.convert("RGB") if hasattr(b, "convert") else b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def path_counts(model: nn.Module) -> dict[str, int]:
    """How many FP8 layers of `model` run each path now, and how many of the upcast ones are the
    AdaLN modulation layers (weight-only by rule): what the stats and `plan` report."""
    counts = {"scaled_mm": 0, "upcast": 0, "adaln_weight_only": 0}
    for name, module in model.named_modules():
        if isinstance(module, FP8Linear):
            counts[module.path] = counts.get(module.path, 0) + 1
            if is_weight_only_layer(name) and module.path == "upcast":
                counts["adaln_weight_only"] += 1
    return counts
