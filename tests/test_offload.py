"""diffusers' and accelerate's offload hooks carry FP8 layers (E4M3 weight + float32 scale)
unchanged: the same seed gives the same image. On the CPU both devices are the CPU, so this
checks the hooks' handling of FP8 parameters, not transfer speed or VRAM (no GPU here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fp8pipe.fp8 import FP8_DTYPE
from fp8pipe.generation import generate
from fp8pipe.loader import LoadOptions, load_model
from fp8pipe.requests import GenerationRequest


@pytest.fixture(scope="module")
def reference():
    loaded = load_model("demo", LoadOptions(device="cpu"))
    request = GenerationRequest.create(loaded.spec, prompt="offload", seed=3, steps=2, width=64, height=64)
    return request, np.asarray(generate(loaded, request).image)


def test_block_group_offload_keeps_fp8_outputs_identical(reference):
    request, expected = reference
    loaded = load_model("demo", LoadOptions(device="cpu"))
    cpu = torch.device("cpu")
    loaded.pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    assert np.array_equal(np.asarray(generate(loaded, request).image), expected)


def test_sequential_offload_keeps_fp8_weights_in_e4m3_and_outputs_identical(reference):
    from accelerate import cpu_offload

    request, expected = reference
    loaded = load_model("demo", LoadOptions(device="cpu"))
    cpu_offload(loaded.pipe.transformer, execution_device=torch.device("cpu"), offload_buffers=True)
    weights = [p for n, p in loaded.pipe.transformer.named_parameters() if n.endswith("ff.net.0.proj.weight")]
    assert weights and all(w.dtype == FP8_DTYPE for w in weights)
    assert np.array_equal(np.asarray(generate(loaded, request).image), expected)


def test_storage_option_builds_for_the_device_but_keeps_tensors_on_storage():
    loaded = load_model("demo", LoadOptions(device="cpu", storage="cpu"))
    assert {p.device.type for p in loaded.pipe.transformer.parameters()} == {"cpu"}
    assert any(p.dtype == FP8_DTYPE for p in loaded.pipe.transformer.parameters())


def test_t5_kept_on_host_is_invisible_to_offload_and_gives_the_same_image(reference):
    from fp8pipe.memory import HostModule, keep_on_host

    request, expected = reference
    loaded = load_model("demo", LoadOptions(device="cpu"))
    keep_on_host(loaded.pipe, "text_encoder_3")
    assert isinstance(loaded.pipe.components["text_encoder_3"], HostModule)
    assert not isinstance(loaded.pipe.components["text_encoder_3"], torch.nn.Module)
    assert np.array_equal(np.asarray(generate(loaded, request).image), expected)


def test_vae_tiling_from_a_plan_decodes_in_tiles_of_the_planned_size(monkeypatch, reference):
    import dataclasses

    from fp8pipe import memory, placement

    request, _ = reference
    request = dataclasses.replace(request, width=128, height=128)
    loaded = load_model("demo", LoadOptions(device="cpu"))
    plain = np.asarray(generate(loaded, request).image)
    monkeypatch.setattr(placement, "VAE_TILE_PIXELS", 64)  # the demo's images are smaller than real tiles
    plan = memory.plan_placement(loaded.spec, 8 * memory.GiB, 8 * memory.GiB, memory.Workload(128, 128))
    memory.apply_plan_tiling(loaded, dataclasses.replace(plan, vae_tiling=True))
    calls = []
    original = loaded.pipe.vae.tiled_decode
    monkeypatch.setattr(loaded.pipe.vae, "tiled_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    tiled = np.asarray(generate(loaded, request).image)
    assert calls and tiled.shape == plain.shape
    assert loaded.pipe.vae.tile_latent_min_size == 64 // loaded.spec.vae_scale_factor
