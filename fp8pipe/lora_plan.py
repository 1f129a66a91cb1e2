"""Which way LoRAs run on a plan (runtime or merge) when the user does not say: a pure function
of the plans with and without the runtime LoRA weights (fp8pipe.planner, which counts them
with the transformer blocks through fp8pipe.sizes.with_lora)."""

from __future__ import annotations

from .planner import Plan, _name
from .sizes import format_size


def choose_lora_mode(requested: str, per_request: bool, runtime: Plan | None = None, merged: Plan | None = None) -> tuple[str, str]:
    """(mode, why) for LoRAs on a plan. `runtime` is the plan with the runtime LoRA weights
    counted, `merged` the one without (None: not planned). Asked for runtime or merge: that.
    auto: LoRAs fixed for the server's life (a preset's, --lora) are merged once at load, which
    costs nothing per step and no VRAM beside the weights; LoRAs chosen per request run in
    runtime mode, which switches with no pass over the weights, unless their weights do not fit
    beside the plan or would push it to another placement (more offload, T5 moved): then merge,
    re-done whenever the LoRAs change."""
    if requested in ("runtime", "merge"):
        return requested, f"LoRA mode {requested}: as asked"
    if requested != "auto":
        raise ValueError(f"lora mode: must be auto, runtime or merge; got {requested!r}")
    if not per_request:
        return "merge", "LoRA mode merge: the LoRAs are fixed, merged into the weights once (no cost per step)"
    if runtime is None or merged is None:
        return "runtime", "LoRA mode runtime: LoRAs change per request (not planned: sizes unknown)"
    size = format_size(runtime.lora_bytes)
    if not runtime.fits:
        return "merge", f"LoRA mode merge: runtime LoRA weights ({size}) do not fit beside {_name(merged)}"
    if (runtime.placement, runtime.resident_blocks, runtime.t5) != (merged.placement, merged.resident_blocks, merged.t5):
        return "merge", (f"LoRA mode merge: runtime LoRA weights ({size}) would move the plan from {_name(merged)} "
                         f"to {_name(runtime)} (predicted {merged.predicted_latency_s:.2f} s -> {runtime.predicted_latency_s:.2f} s)")
    return "runtime", f"LoRA mode runtime: LoRAs change per request; their weights ({size}) fit beside {_name(runtime)}"
