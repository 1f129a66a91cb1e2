"""The latency model and the planner that ranks by it: FLOPs counted like torch counts them,
text tokens as the pipeline feeds them, the fastest fitting plan, partial residency that changes
nothing in the picture, per-layer FP8 paths, and predictions against the H100 measurements."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fp8pipe import flops, latency, latency_check, planner
from fp8pipe.cards import CARDS
from fp8pipe.sizes import SAFETY_FRACTION, GiB, Workload
from fp8pipe.specs import SPECS

HOST = 64 * GiB


@pytest.fixture(scope="module")
def meta_transformers():
    from fp8pipe.loader import _empty_transformer

    return {name: _empty_transformer(SPECS[name].transformer_config) for name in ("sd3.5-large", "sd3.5-medium")}


@pytest.mark.parametrize("name", ["sd3.5-large", "sd3.5-medium"])
@pytest.mark.parametrize("px", [512, 1024])
@pytest.mark.parametrize("with_t5", [True, False])
def test_latency_model_flops_equal_torch_flop_counter_on_the_meta_device(meta_transformers, name, px, with_t5):
    from torch.utils.flop_counter import FlopCounterMode

    spec = SPECS[name]
    txt = flops.text_tokens(spec.max_sequence_length, with_t5)  # 333 either way: T5 dropped is zero-padded
    with torch.device("meta"):
        inputs = {
            "hidden_states": torch.randn(1, 16, px // 8, px // 8),
            "encoder_hidden_states": torch.randn(1, txt, 4096),
            "pooled_projections": torch.randn(1, 2048),
            "timestep": torch.tensor([500.0]),
        }
    with FlopCounterMode(display=False) as counter:
        meta_transformers[name](**inputs, return_dict=False)
    assert latency.pass_work(spec, px, px).flops == counter.get_total_flops()


@pytest.mark.parametrize("px", [512, 1024])
def test_vae_decode_flops_equal_torch_flop_counter(px):
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    spec = SPECS["sd3.5-large"]
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(spec.vae_config)
        latents = torch.randn(1, 16, px // 8, px // 8)
    with FlopCounterMode(display=False) as counter:
        vae.decode(latents)
    assert flops.vae_decode_flops(spec.vae_config, px, px) == counter.get_total_flops()
    if px == 1024:
        assert 10.4e12 < counter.get_total_flops() < 10.6e12


@pytest.mark.parametrize("t5", ["16bit", "drop"])
def test_text_tokens_are_what_the_pipeline_feeds_the_transformer(t5):
    from fp8pipe import sizes
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.requests import GenerationRequest

    loaded = load_model("demo", LoadOptions(device="cpu", t5=t5))
    seen = []
    loaded.pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"].shape[1]), with_kwargs=True)
    generate(loaded, GenerationRequest.create(loaded.spec, prompt="a red circle", seed=0, steps=1, width=64, height=64))
    expected = flops.text_tokens(loaded.spec.max_sequence_length, clip_tokens=loaded.spec.clip_tokens)
    assert set(seen) == {expected} and sizes.text_tokens(loaded.spec) == expected


def _card(**changes):
    return dataclasses.replace(CARDS["RTX 4090"], **changes)


def test_a_slow_bus_keeps_more_blocks_resident():
    spec, work = SPECS["sd3.5-large-turbo"], Workload(1024, 1024, 1, False, 4)
    # A budget where Large FP8 does not fit whole, so some blocks must stream.
    fast = planner.plan_placement(spec, 10 * GiB, HOST, work, "fp8", "sdpa", "drop", _card(name="fast bus", pcie_gbps=500.0))
    slow = planner.plan_placement(spec, 10 * GiB, HOST, work, "fp8", "sdpa", "drop", _card(name="slow bus", pcie_gbps=2.0))
    assert fast.placement in ("partial", "group_offload") and slow.placement in ("partial", "group_offload")
    assert slow.resident_blocks > fast.resident_blocks


@pytest.mark.parametrize("budget_gib", [6, 10, 16])
def test_the_chosen_plan_is_the_fastest_that_fits_by_brute_force(budget_gib):
    spec, work, card = SPECS["sd3.5-large"], Workload(768, 768, 1, True, 8), CARDS["RTX 4070 Ti"]
    chosen = planner.plan_placement(spec, budget_gib * GiB, HOST, work, "fp8", "sdpa", "auto", card)
    usable = int(budget_gib * GiB * (1 - SAFETY_FRACTION))
    best = None
    for placement, t5, k in planner._rungs(spec, "auto"):
        for tiled in (False, True):
            peaks = planner.predict(spec, "fp8", placement, t5, work, tiled, "sdpa", k)
            if peaks["vram"] > usable or peaks["host"] > HOST:
                continue
            seconds = latency.predict(planner.latency_job(spec, "fp8", placement, t5, work, tiled, k, "eager"), card).latency_s
            best = seconds if best is None else min(best, seconds)
    assert chosen.fits and best is not None
    assert best <= chosen.predicted_latency_s <= best * (1 + planner.TIE_FRACTION)


def test_a_budget_too_small_names_the_shortfall():
    plan = planner.plan_placement(SPECS["sd3.5-large"], 1 * GiB, HOST, Workload(1024, 1024), "fp8", "sdpa", "auto", CARDS["RTX 4060"])
    assert not plan.fits
    assert plan.reasons[0].startswith("nothing fits") and "more than the" in plan.reasons[0]


def test_no_prediction_is_below_its_floor_and_every_one_is_labelled():
    for plan in planner.plan_ladder(SPECS["sd3.5-medium"], 8 * GiB, HOST, Workload(1024, 1024, 1, True, 28), "fp8", "sdpa", "auto", CARDS["RTX 4060"]):
        assert plan.floor_latency_s <= plan.predicted_latency_s
        assert plan.as_dict()["kind"] == "prediction"


def test_a_larger_budget_never_predicts_a_slower_plan():
    spec, work, card = SPECS["sd3.5-large-turbo"], Workload(1024, 1024, 1, False, 4), CARDS["RTX 4090"]
    times = [planner.plan_placement(spec, g * GiB, HOST, work, "fp8", "sdpa", "drop", card).predicted_latency_s for g in (24, 16, 12, 10, 8, 6)]
    assert all(a <= b * (1 + planner.TIE_FRACTION) for a, b in itertools.pairwise(times))


def test_partial_residency_hooks_exactly_the_streamed_blocks_and_keeps_the_image():
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.placement import stream_blocks, streamed_block_indices
    from fp8pipe.requests import GenerationRequest

    request = GenerationRequest.create(SPECS["demo"], prompt="a red circle", seed=3, steps=2, width=64, height=64)
    expected = np.asarray(generate(load_model("demo", LoadOptions(device="cpu")), request).image)
    loaded = load_model("demo", LoadOptions(device="cpu"))
    cpu = torch.device("cpu")
    streamed = stream_blocks(loaded.pipe.transformer, 1, cpu, cpu, use_stream=False)
    assert streamed == [1, 2, 3] == streamed_block_indices(loaded.pipe.transformer)
    assert np.array_equal(np.asarray(generate(loaded, request).image), expected)


def test_adaln_layers_run_weight_only_and_the_stats_say_which_path_each_layer_took():
    from fp8pipe.fp8 import choose_path
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.requests import GenerationRequest

    loaded = load_model("demo", LoadOptions(device="cpu", fp8_path="scaled_mm"))
    stats = generate(loaded, GenerationRequest.create(loaded.spec, prompt="a red circle", seed=0, steps=1, width=64, height=64)).stats
    paths = stats["fp8_layer_paths"]
    layers = loaded.spec.transformer_config["num_layers"]
    assert paths["adaln_weight_only"] == 2 * layers and paths["scaled_mm"] > 0
    names = loaded.fp8.layer_paths
    assert all(path == "upcast" for name, path in names.items() if name.endswith(("norm1.linear", "norm1_context.linear")))
    assert choose_path("cpu") == "upcast"  # slower and less accurate there (see fp8.choose_path)


def test_plan_reports_the_fp8_paths_per_layer_kind():
    plan = planner.plan_placement(SPECS["sd3.5-large"], 24 * GiB, HOST, Workload(1024, 1024), "fp8", "sdpa", "auto", CARDS["RTX 3060"])
    assert plan.fp8_layer_paths["scaled_mm"] == 0  # no FP8 matmul on Ampere
    on_ada = planner.plan_placement(SPECS["sd3.5-large"], 24 * GiB, HOST, Workload(1024, 1024), "fp8", "sdpa", "auto", CARDS["RTX 4090"])
    assert on_ada.fp8_layer_paths["scaled_mm"] > 0 and on_ada.fp8_layer_paths["adaln_weight_only"] == 2 * 38


def test_attention_runs_at_the_16bit_rate_even_on_the_fp8_path():
    spec, card = SPECS["sd3.5-large"], CARDS["H100 SXM"]
    job = latency.Job(spec, 1024, 1024, 1, 0.0, "fp8", "compiled", block_bytes=(1,) * 38)
    work = latency.pass_work(spec, 1024, 1024)
    floor_terms = latency.predict(job, card, latency.PEAK).stages[1].floor_seconds
    assert floor_terms >= work.attention_flops / (card.bf16_tflops * 1e12)


def test_predictions_land_within_the_band_of_every_h100_measurement():
    rows = latency_check.validation_rows()
    assert len(rows) >= 40
    low, high = latency_check.BAND
    outside = [(r["configuration"], r["px"], r["quantity"], round(r["ratio"], 2)) for r in rows if not low <= r["ratio"] <= high]
    assert not outside


def test_latency_validation_doc_is_what_the_check_generates():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "latency_validation.md"
    assert path.read_text() == latency_check.validation_markdown(latency_check.validation_rows())


def test_the_kiosk_preset_serves_the_size_the_latency_model_chooses():
    from fp8pipe.kiosk_choice import KIOSK_CARD, PROMISE_S, kiosk_size
    from fp8pipe.presets import load_preset

    choice = kiosk_size()
    preset = load_preset("kiosk-8gb")
    assert (preset.width, preset.height) == (choice["size"], choice["size"])
    rows = {r["size"]: r for r in choice["rows"]}
    if choice["keeps_promise"]:
        assert rows[choice["size"]]["predicted_latency_s"] <= PROMISE_S
        assert all(r["predicted_latency_s"] > PROMISE_S for px, r in rows.items() if px > choice["size"])
    else:  # nothing keeps it on that card: the fastest size, and the README says so
        assert rows[choice["size"]]["predicted_latency_s"] == min(r["predicted_latency_s"] for r in rows.values() if r["fits"])
    assert KIOSK_CARD == "RTX 4060" and preset.t5 == "drop"


def test_plan_command_prints_the_contract_for_a_preset_and_for_explicit_settings(capsys):
    import json

    from fp8pipe.cli import main

    keys = ("predicted_latency_s", "floor_latency_s", "placement", "resident_blocks", "predicted_peak_vram_bytes", "t5", "width", "height", "steps", "candidates")
    assert main(["plan", "--preset", "kiosk-8gb", "--card", "RTX 4060", "--ram", "32GiB", "--json"]) == 0
    by_preset = json.loads(capsys.readouterr().out)
    assert all(k in by_preset for k in keys) and by_preset["kind"] == "prediction"
    assert (by_preset["width"], by_preset["steps"], by_preset["t5"]) == (512, 4, "drop")
    assert by_preset["predicted_peak_vram_bytes"] <= 8 * GiB * (1 - SAFETY_FRACTION)
    args = ["plan", "--card", "RTX 4090", "--model", "medium", "--precision", "fp8", "--steps", "28", "--guidance", "4.5"]
    assert main([*args, "--width", "768", "--height", "768", "--t5", "fp8", "--ram", "32GiB", "--json"]) == 0
    explicit = json.loads(capsys.readouterr().out)
    assert (explicit["width"], explicit["height"], explicit["steps"], explicit["t5"]) == (768, 768, 28, "fp8")
    assert explicit["floor_latency_s"] <= explicit["predicted_latency_s"]
    for c in explicit["candidates"]:
        assert {"predicted_latency_s", "streamed_bytes_per_step", "predicted_peak_vram_bytes", "predicted_peak_host_bytes"} <= set(c)


def test_plan_command_names_an_unknown_card(capsys):
    from fp8pipe.cli import main

    assert main(["plan", "--card", "RTX 9999", "--model", "medium"]) == 2
    assert "card" in capsys.readouterr().err
