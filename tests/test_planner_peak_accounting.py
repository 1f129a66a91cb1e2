"""The planner's predicted peaks are the documented sums of counted parts, placement by placement.

Each placement keeps a known set of weights on the GPU and needs the largest of the working sets
(denoise activations, VAE decode, text encode) on top, plus the CUDA runtime; the host holds the
runtime, every offloaded weight's home copy, T5 when it runs there, and the load transient. The
parts come from fp8pipe.sizes (counted on the meta device); these tests add them up by hand.
"""

from __future__ import annotations

import pytest

from fp8pipe import planner
from fp8pipe.cards import CARDS
from fp8pipe.sizes import (
    CUDA_RUNTIME_BYTES,
    HOST_RUNTIME_BYTES,
    GiB,
    Workload,
    component_sizes,
    denoise_activation_bytes,
    text_encode_bytes,
    vae_decode_bytes,
)
from fp8pipe.specs import SPECS

LARGE = SPECS["sd3.5-large"]
WORK = Workload(1024, 768, 1, True, 8)


def _parts(precision="fp8", tiled=False, attention="sdpa", spec=LARGE, work=WORK):
    sizes = component_sizes(spec.name, precision)
    return sizes, max(denoise_activation_bytes(spec, work, precision, attention), vae_decode_bytes(spec, work, tiled), text_encode_bytes(spec, work))


@pytest.mark.parametrize("t5, t5_gpu, t5_host", [("16bit", "t5_16bit", None), ("fp8", "t5_fp8", None), ("cpu", None, "t5_16bit"), ("drop", None, None)])
def test_resident_holds_every_weight_plus_the_largest_working_set_and_loads_through_the_host(t5, t5_gpu, t5_host):
    sizes, work_peak = _parts()
    t5_bytes = getattr(sizes, t5_gpu) if t5_gpu else 0
    clip = sizes.clip_l + sizes.clip_g
    weights = sizes.transformer + clip + t5_bytes + sizes.vae
    terms = planner.predict(LARGE, "fp8", "resident", t5, WORK, False, "sdpa")
    assert terms["vram"] == weights + work_peak + CUDA_RUNTIME_BYTES
    assert terms["vram_between_requests"] == terms["weights_on_gpu"] == weights
    # loading passes each non-transformer component through the host in 16-bit, one at a time
    transient = max(clip, sizes.t5_16bit if t5 in ("16bit", "fp8") else 0, sizes.vae)
    host_t5 = getattr(sizes, t5_host) if t5_host else 0
    assert terms["host"] == HOST_RUNTIME_BYTES + host_t5 + transient
    assert terms["host_weights"] == host_t5
    assert terms["cuda_runtime"] == CUDA_RUNTIME_BYTES and terms["host_runtime"] == HOST_RUNTIME_BYTES


@pytest.mark.parametrize("k", [0, 1, 20, 37])
def test_partial_residency_holds_k_blocks_and_two_streamed_blocks_in_flight(k):
    sizes, work_peak = _parts()
    blocks = sizes.transformer_block_bytes
    resident = sizes.clip_l + sizes.clip_g + sizes.vae + (sizes.transformer - sizes.transformer_blocks) + sum(blocks[:k])
    terms = planner.predict(LARGE, "fp8", "partial", "drop", WORK, False, "sdpa", k)
    assert terms["vram"] == resident + 2 * max(blocks[k:]) + work_peak + CUDA_RUNTIME_BYTES
    assert terms["vram_between_requests"] == resident
    assert terms["host"] == HOST_RUNTIME_BYTES + sum(blocks[k:])  # the streamed blocks' pinned home
    # group offload is partial residency with no block resident, whatever k says
    assert planner.predict(LARGE, "fp8", "group_offload", "drop", WORK, False, "sdpa", k) == planner.predict(LARGE, "fp8", "partial", "drop", WORK, False, "sdpa", 0)


def test_model_offload_needs_its_largest_stage_and_keeps_every_weight_on_the_host():
    sizes, _ = _parts()
    spec, work = LARGE, WORK
    encode, denoise, decode = text_encode_bytes(spec, work), denoise_activation_bytes(spec, work, "fp8", "sdpa"), vae_decode_bytes(spec, work, False)
    clip = sizes.clip_l + sizes.clip_g
    terms = planner.predict(spec, "fp8", "model_offload", "16bit", work, False, "sdpa")
    stages = (clip + encode, sizes.t5_16bit + encode, sizes.transformer + denoise, sizes.vae + decode)
    assert terms["vram"] == max(stages) + CUDA_RUNTIME_BYTES
    weights = sizes.transformer + clip + sizes.t5_16bit + sizes.vae
    assert terms["host"] == HOST_RUNTIME_BYTES + weights and terms["vram_between_requests"] == 0


@pytest.mark.parametrize("t5", ["fp8", "drop"])
def test_sequential_offload_needs_the_largest_leaf_and_the_largest_working_set(t5):
    sizes, work_peak = _parts()
    leaf = max(sizes.transformer_max_leaf, sizes.clip_max_leaf, sizes.vae_max_leaf, sizes.t5_max_leaf if t5 == "fp8" else 0)
    terms = planner.predict(LARGE, "fp8", "sequential", t5, WORK, False, "sdpa")
    assert terms["vram"] == leaf + work_peak + CUDA_RUNTIME_BYTES
    t5_bytes = sizes.t5_fp8 if t5 == "fp8" else 0
    assert terms["host"] == HOST_RUNTIME_BYTES + sizes.transformer + sizes.clip_l + sizes.clip_g + t5_bytes + sizes.vae


def test_the_working_sets_of_the_breakdown_are_the_request_sized_ones():
    terms = planner.predict(LARGE, "fp8", "resident", "drop", WORK, True, "sdpa-math")
    assert terms["denoise_activations"] == denoise_activation_bytes(LARGE, WORK, "fp8", "sdpa-math")
    assert terms["vae_decode"] == vae_decode_bytes(LARGE, WORK, True)
    assert terms["text_encode"] == text_encode_bytes(LARGE, WORK)


def test_an_unknown_placement_is_refused_naming_the_placements():
    with pytest.raises(ValueError, match="placement must be one of resident, partial, model_offload"):
        planner.predict(LARGE, "fp8", "everywhere", "drop", WORK, False, "sdpa")


@pytest.mark.parametrize("placement, k, expected", [("partial", 5, 5), ("group_offload", 5, 0), ("resident", None, None), ("model_offload", None, None)])
@pytest.mark.parametrize("t5, t5_size", [("16bit", "t5_16bit"), ("cpu", "t5_16bit"), ("fp8", "t5_fp8"), ("drop", None)])
def test_the_latency_job_carries_the_counted_sizes_and_the_request(placement, k, expected, t5, t5_size):
    sizes = component_sizes(LARGE.name, "fp8")
    job = planner.latency_job(LARGE, "fp8", placement, t5, WORK, True, k, "compiled")
    assert (job.width, job.height, job.steps, job.batch, job.precision, job.execution, job.t5, job.placement) == (1024, 768, 8, 1, "fp8", "compiled", t5, placement)
    assert job.guidance > 1.0 and job.vae_tiled and job.resident_blocks == expected
    assert job.block_bytes == sizes.transformer_block_bytes and job.rest_bytes == sizes.transformer - sizes.transformer_blocks
    assert (job.clip_bytes, job.vae_bytes) == (sizes.clip_l + sizes.clip_g, sizes.vae)
    assert job.t5_bytes == (getattr(sizes, t5_size) if t5_size else 0)


def test_a_latency_job_without_steps_or_guidance_takes_the_models_steps_and_one_pass():
    job = planner.latency_job(LARGE, "bf16", "resident", "drop", Workload(512, 512, 2, False), False, None, "eager")
    assert job.steps == LARGE.steps and job.guidance <= 1.0 and job.batch == 2 and not job.vae_tiled and job.precision == "bf16"
    assert job.block_bytes == component_sizes(LARGE.name, "bf16").transformer_block_bytes


@pytest.mark.parametrize("name", ["sd3.5-large", "sd3.5-medium"])
def test_the_ladder_weighs_every_placement_with_every_t5_mode_and_every_partial_split(name):
    spec = SPECS[name]
    layers = spec.transformer_config["num_layers"]
    rungs = planner._rungs(spec, "auto")
    assert len(rungs) == 3 * (layers + 3)
    for t5 in ("16bit", "fp8", "cpu"):
        mine = [(p, k) for p, t, k in rungs if t == t5]
        assert mine[0] == ("resident", None) and mine[-3:] == [("model_offload", None), ("group_offload", 0), ("sequential", None)]
        assert [k for p, k in mine if p == "partial"] == list(range(layers - 1, 0, -1))
    assert {t for _, t, _ in planner._rungs(spec, "drop")} == {"drop"} and len(planner._rungs(spec, "drop")) == layers + 3


def test_plans_carry_the_request_the_card_and_the_stages_of_their_prediction():
    ladder = planner.plan_ladder(LARGE, 12 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARDS["RTX 4090"], "compiled")
    layers = LARGE.transformer_config["num_layers"]
    assert [p.level for p in ladder] == list(range(len(ladder)))
    for p in ladder:
        assert (p.width, p.height, p.batch, p.guidance, p.steps, p.card, p.execution, p.t5_policy) == (1024, 768, 1, True, 8, "RTX 4090", "compiled", "drop")
        assert (p.vram_budget_bytes, p.host_budget_bytes, p.precision, p.attention, p.model) == (12 * GiB, 64 * GiB, "fp8", "sdpa", LARGE.name)
        expected_blocks = {"resident": layers, "model_offload": layers, "group_offload": 0, "sequential": 0}
        assert p.resident_blocks == expected_blocks[p.placement] if p.placement != "partial" else 0 < p.resident_blocks < layers
        assert set(p.stages) == {"encode", "denoise", "offload", "decode"} and p.floor_latency_s <= p.predicted_latency_s
        assert p.predicted_step_s > 0 and p.fp8_layer_paths == planner.fp8_layer_paths(LARGE, "fp8", CARDS["RTX 4090"])
        assert p.breakdown["vram"] == p.predicted_peak_vram_bytes and p.breakdown["host"] == p.predicted_peak_host_bytes
        assert p.fits == (p.predicted_peak_vram_bytes <= int(12 * GiB * 0.88) and p.predicted_peak_host_bytes <= 64 * GiB)
    assert not planner.plan_ladder(LARGE, 12 * GiB, 64 * GiB, WORK, "bf16", "sdpa", "drop")[0].fp8_layer_paths
    assert {p.placement for p in ladder} == {"resident", "partial", "model_offload", "group_offload", "sequential"}


def test_partial_residency_needing_as_much_vram_as_resident_is_left_off_the_ladder():
    ladder = planner.plan_ladder(LARGE, 24 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop")
    resident = next(p for p in ladder if p.placement == "resident")
    partial = [p for p in ladder if p.placement == "partial"]
    assert all(p.predicted_peak_vram_bytes < resident.predicted_peak_vram_bytes for p in partial)
    weighed = {k for p, _, k in planner._rungs(LARGE, "drop") if p == "partial"}
    assert {p.resident_blocks for p in partial} < weighed  # the top splits were weighed and left out


@pytest.mark.parametrize("field, value, message", [("precision", "int4", "precision must be one of fp8, bf16, fp16, fp32"), ("t5_policy", "int8", "t5 must be auto or one of 16bit, fp8, cpu, drop"), ("execution", "jit", "execution must be eager or compiled")])
def test_the_ladder_refuses_unknown_settings_naming_the_allowed_ones(field, value, message):
    kwargs = {"precision": "fp8", "t5_policy": "auto", "execution": "eager", field: value}
    with pytest.raises(ValueError, match=message):
        planner.plan_ladder(LARGE, 12 * GiB, 64 * GiB, WORK, **kwargs)


@pytest.mark.parametrize("name", ["sd3.5-large", "sd3.5-medium"])
def test_the_fp8_layer_paths_count_the_quantized_linears_of_the_transformer(name):
    import torch

    from fp8pipe.fp8 import TRANSFORMER_POLICY, FP8Linear, swap_linears_to_fp8
    from fp8pipe.loader import _empty_transformer

    spec = SPECS[name]
    transformer = _empty_transformer(spec.transformer_config)
    swap_linears_to_fp8(transformer, TRANSFORMER_POLICY, "scaled_mm", torch.bfloat16, quantize_weights=False)
    fp8 = [n for n, m in transformer.named_modules() if isinstance(m, FP8Linear)]
    adaln = [n for n in fp8 if n.endswith(("norm1.linear", "norm1_context.linear"))]
    on_ada = planner.fp8_layer_paths(spec, "fp8", CARDS["RTX 4090"])
    assert on_ada == {"scaled_mm": len(fp8) - len(adaln), "upcast": len(adaln), "adaln_weight_only": len(adaln)}
    on_ampere = planner.fp8_layer_paths(spec, "fp8", CARDS["RTX 3060"])
    assert on_ampere == {"scaled_mm": 0, "upcast": len(fp8), "adaln_weight_only": len(adaln)}
    assert planner.fp8_layer_paths(spec, "bf16", CARDS["RTX 4090"]) == {}


# ---- every term of the peaks, each in turn the largest (made-up sizes) --------------------
# With SD3.5's real sizes some terms never win a max() (T5's working set is always below the
# denoise activations, the embedding tables are the largest leaves), so a dropped term would go
# unseen there. Made-up component sizes and working sets let each term be the largest once.

from dataclasses import replace as _replace  # noqa: E402

from fp8pipe.sizes import ComponentSizes  # noqa: E402

MB = 2**20
SIZES = ComponentSizes(
    transformer=4000 * MB, transformer_blocks=3800 * MB, transformer_max_block=100 * MB, transformer_max_leaf=30 * MB,
    clip_l=200 * MB, clip_g=700 * MB, t5_16bit=5000 * MB, t5_fp8=2600 * MB, t5_max_leaf=40 * MB,
    vae=160 * MB, vae_max_leaf=20 * MB, clip_max_leaf=10 * MB,
    transformer_block_bytes=(100 * MB,) * 38,
)


@pytest.fixture
def made_up(monkeypatch):
    """Patch the planner's parts; returns a setter for the working sets (denoise, decode, encode)."""
    monkeypatch.setattr(planner, "component_sizes", lambda name, precision="fp8": made_up.sizes)
    made_up.sizes = SIZES

    def working_sets(denoise, decode, encode, sizes=SIZES):
        made_up.sizes = sizes
        monkeypatch.setattr(planner, "denoise_activation_bytes", lambda *a: denoise)
        monkeypatch.setattr(planner, "vae_decode_bytes", lambda *a: decode)
        monkeypatch.setattr(planner, "text_encode_bytes", lambda *a: encode)

    return working_sets


@pytest.mark.parametrize("largest", ["denoise", "decode", "encode"])
@pytest.mark.parametrize("placement, k", [("resident", None), ("partial", 30), ("sequential", None)])
def test_each_working_set_counts_when_it_is_the_largest(made_up, largest, placement, k):
    sets = {"denoise": 10 * MB, "decode": 20 * MB, "encode": 30 * MB, largest: 999 * MB}
    made_up(**sets)
    terms = planner.predict(LARGE, "fp8", placement, "drop", WORK, False, "sdpa", k)
    fixed = {"resident": 4000 + 900 + 160, "partial": 900 + 160 + 200 + 30 * 100 + 2 * 100, "sequential": 30}[placement] * MB
    assert terms["vram"] == fixed + 999 * MB + CUDA_RUNTIME_BYTES


@pytest.mark.parametrize("t5", ["fp8", "drop"])
@pytest.mark.parametrize("largest", ["transformer_max_leaf", "clip_max_leaf", "vae_max_leaf", "t5_max_leaf"])
def test_sequential_offload_holds_the_largest_leaf_of_the_components_on_the_gpu(made_up, t5, largest):
    sizes = _replace(SIZES, **{largest: 77 * MB})
    made_up(1, 1, 1, sizes=sizes)
    # T5's leaves count only when T5 is on the GPU; otherwise the transformer's 30 MB leaf is the largest
    expected = 77 if (largest != "t5_max_leaf" or t5 == "fp8") else 30
    terms = planner.predict(LARGE, "fp8", "sequential", t5, WORK, False, "sdpa")
    assert terms["vram"] == expected * MB + 1 + CUDA_RUNTIME_BYTES


@pytest.mark.parametrize("largest, t5", [("clip", "16bit"), ("t5", "fp8"), ("vae", "drop"), ("clip", "drop")])
def test_a_resident_load_passes_the_largest_component_through_the_host(made_up, largest, t5):
    sizes = {"clip": _replace(SIZES, clip_g=9000 * MB), "t5": SIZES, "vae": _replace(SIZES, vae=9000 * MB, t5_16bit=100 * MB)}[largest]
    made_up(1, 1, 1, sizes=sizes)
    transient = {"clip": sizes.clip_l + sizes.clip_g, "t5": sizes.t5_16bit, "vae": sizes.vae}[largest]
    assert planner.predict(LARGE, "fp8", "resident", t5, WORK, False, "sdpa")["host"] == HOST_RUNTIME_BYTES + transient
    tiny_t5 = _replace(sizes, t5_16bit=0, clip_l=0, clip_g=0, vae=0)
    made_up(1, 1, 1, sizes=tiny_t5)
    assert planner.predict(LARGE, "fp8", "resident", "drop", WORK, False, "sdpa")["host"] == HOST_RUNTIME_BYTES  # no component: nothing passes


@pytest.mark.parametrize("largest", ["clip", "t5", "transformer", "vae"])
def test_model_offload_needs_the_largest_of_its_four_stages(made_up, largest):
    encode, denoise, decode = 30 * MB, 40 * MB, 50 * MB
    sizes = _replace(SIZES, **{"clip": {"clip_g": 9000 * MB}, "t5": {"t5_16bit": 9000 * MB}, "transformer": {"t5_16bit": 100 * MB}, "vae": {"vae": 9000 * MB}}[largest])
    made_up(denoise, decode, encode, sizes=sizes)
    stage = {"clip": sizes.clip_l + sizes.clip_g + encode, "t5": sizes.t5_16bit + encode, "transformer": sizes.transformer + denoise, "vae": sizes.vae + decode}[largest]
    assert planner.predict(LARGE, "fp8", "model_offload", "16bit", WORK, False, "sdpa")["vram"] == stage + CUDA_RUNTIME_BYTES


def test_partial_residency_with_every_block_resident_streams_nothing(made_up):
    made_up(1, 1, 1)
    terms = planner.predict(LARGE, "fp8", "partial", "drop", WORK, False, "sdpa", 38)
    assert terms["vram"] == SIZES.transformer + 900 * MB + 160 * MB + 1 + CUDA_RUNTIME_BYTES and terms["host"] == HOST_RUNTIME_BYTES


def test_partial_residency_needing_exactly_what_resident_needs_is_left_out(made_up):
    made_up(1, 1, 1)  # equal blocks: streaming the last two holds two in flight, as much as keeping them
    ladder = planner.plan_ladder(LARGE, 80 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop")
    assert 36 not in {p.resident_blocks for p in ladder if p.placement == "partial"}
    assert 35 in {p.resident_blocks for p in ladder if p.placement == "partial"}
