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
    beside a resident plan or would push it to another placement: then merge, re-done whenever
    the LoRAs change. Under offload, per-request LoRAs stay in runtime mode: the offload hooks
    hold the weights they were given, so a merge after them could not take effect."""
    if requested in ("runtime", "merge"):
        return requested, f"LoRA mode {requested}: as asked"
    if requested != "auto":
        raise ValueError(f"lora mode: must be auto, runtime or merge; got {requested!r}")
    if not per_request:
        return "merge", "LoRA mode merge: the LoRAs are fixed, merged into the weights once (no cost per step)"
    if runtime is None or merged is None:
        return "runtime", "LoRA mode runtime: LoRAs change per request (not planned: sizes unknown)"
    size = format_size(runtime.lora_bytes)
    same = (runtime.placement, runtime.resident_blocks, runtime.t5) == (merged.placement, merged.resident_blocks, merged.t5)
    if runtime.fits and same:
        return "runtime", f"LoRA mode runtime: LoRAs change per request; their weights ({size}) fit beside {_name(runtime)}"
    if merged.placement != "resident":
        # Merging per request rewrites weights; an offload hook holds (and moves) the ones it was given.
        return "runtime", f"LoRA mode runtime: LoRAs change per request and {_name(merged)} offloads, so merging per request is not possible; their weights ({size}) stream with their blocks"
    if not runtime.fits:
        return "merge", f"LoRA mode merge: runtime LoRA weights ({size}) do not fit beside {_name(merged)}"
    return "merge", (f"LoRA mode merge: runtime LoRA weights ({size}) would move the plan from {_name(merged)} "
                     f"to {_name(runtime)} (predicted {merged.predicted_latency_s:.2f} s -> {runtime.predicted_latency_s:.2f} s)")
