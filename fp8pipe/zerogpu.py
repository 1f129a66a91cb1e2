"""Hugging Face ZeroGPU: whether it is on, the `spaces` module, and what duration to ask for.

ZeroGPU runs each `@spaces.GPU` call in a forked child process that holds only the calling
thread, and checks a visitor's remaining daily quota against the duration the call asks for
before it runs anything. So the app runs each job inline inside the call (see
fp8pipe.serving) and asks for a duration computed for that very request: a latency
prediction (model, steps, size, batch) with a margin, a floor and a ceiling.

The prediction here is deliberately simple and conservative until a measured latency model
replaces it: the transformer's counted FLOPs (fp8pipe.flops) at an assumed effective rate for
the H200 slice, plus a fixed cost per transformer pass (kernel launches), per megapixel decoded
(VAE) and per call (the fork, moving the weights onto the GPU). None of these constants was
measured on ZeroGPU; each is an assumption stated below.

Torch-free, and nothing imports `spaces` unless `SPACES_ZERO_GPU` says ZeroGPU is active.
"""

from __future__ import annotations

import os

ENV = "SPACES_ZERO_GPU"  # set by Hugging Face on ZeroGPU hardware

# Assumptions (not measured on ZeroGPU): an effective 150 TFLOP/s, about 15% of the H200's
# dense BF16 tensor rate, to cover attention, the text encoders and launch gaps; 20 ms per
# transformer pass of fixed overhead; 1.5 s per decoded megapixel; 5 s per call.
EFFECTIVE_TFLOPS = 150.0
PER_PASS_S = 0.02
DECODE_S_PER_MEGAPIXEL = 1.5
PER_CALL_S = 5.0
MARGIN = 1.5  # the prediction times this, so a slower call is not cut off
FLOOR_S = 5.0
CEILING_S = 120.0  # a longer request is refused by the quota check of most visitors anyway


def active(environ=None) -> bool:
    """True when the Space runs on ZeroGPU hardware (the env flag Hugging Face sets)."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    return value.strip().lower() in ("1", "true", "yes")


def spaces_module():
    """The `spaces` package when ZeroGPU is active and it is installed; else None (never imported).

    Turns off Gradio's auto-wrap of every event (SPACES_GRADIO_AUTO_WRAP): the app wraps only
    the job, with a duration computed per request. Call it before the Blocks are built."""
    if not active():
        return None
    try:
        import spaces  # type: ignore
    except ImportError:
        return None
    disable = getattr(spaces, "disable_gradio_auto_wrap", None)
    if disable is not None:
        disable()
    return spaces


def predicted_seconds(spec, steps: int, width: int, height: int, batch: int = 1, guidance: float = 1.0) -> float:
    """Predicted seconds of one request on a ZeroGPU slice, without margin (see the assumptions)."""
    from .flops import image_flops, passes_per_step, text_tokens

    txt = text_tokens(spec.max_sequence_length)
    flops = image_flops(spec.transformer_config, height, width, steps, guidance, txt, spec.vae_scale_factor)
    passes = steps * passes_per_step(guidance)
    per_image = flops / (EFFECTIVE_TFLOPS * 1e12) + passes * PER_PASS_S + DECODE_S_PER_MEGAPIXEL * width * height / 1e6
    return PER_CALL_S + batch * per_image


def duration_seconds(spec, steps: int, width: int, height: int, batch: int = 1, guidance: float = 1.0) -> float:
    """What a GPU call asks ZeroGPU for: the prediction with MARGIN, within FLOOR_S..CEILING_S."""
    wanted = MARGIN * predicted_seconds(spec, steps, width, height, batch, guidance)
    return min(CEILING_S, max(FLOOR_S, wanted))  # unrounded: more steps or pixels always ask for more


def request_duration(spec_for):
    """A `duration` callable for `@spaces.GPU` around `f(request, model, ...)`: computed from
    that call's own request. `spec_for(model)` gives the model's spec."""

    def duration(request, model, *args, **kwargs) -> float:
        return duration_seconds(spec_for(model), request.steps, request.width, request.height, request.batch, request.guidance)

    return duration
