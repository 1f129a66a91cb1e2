"""T5-XXL policies: 16-bit, FP8 weight-only, or dropped; the pipeline runs with each."""

import numpy as np
import torch

from fp8pipe.fp8 import FP8_DTYPE, FP8Linear
from fp8pipe.generation import generate
from fp8pipe.requests import GenerationRequest


def _image(loaded):
    request = GenerationRequest.create(loaded.spec, "a blue square", steps=2, seed=3, width=64, height=64)
    return np.asarray(generate(loaded, request).image)


def test_t5_fp8_stores_its_linear_weights_in_e4m3_on_the_upcast_path(load_tiny):
    encoder = load_tiny(t5="fp8").pipe.text_encoder_3
    layers = [m for m in encoder.modules() if isinstance(m, FP8Linear)]
    assert layers and all(m.weight.dtype == FP8_DTYPE and m.path == "upcast" for m in layers)
    assert _image(load_tiny(t5="fp8")).shape == (64, 64, 3)


def test_t5_drop_removes_the_encoder_and_still_generates(load_tiny):
    loaded = load_tiny(t5="drop")
    assert loaded.pipe.text_encoder_3 is None and loaded.dtypes["t5"] == "drop"
    assert _image(loaded).shape == (64, 64, 3)


def test_t5_on_the_cpu_is_the_16_bit_encoder_when_the_pipeline_is_on_the_cpu(load_tiny):
    assert np.array_equal(_image(load_tiny(t5="cpu")), _image(load_tiny(t5="16bit")))
    assert load_tiny(t5="cpu").pipe.text_encoder_3.dtype == torch.float32
