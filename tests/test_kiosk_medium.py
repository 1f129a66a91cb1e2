"""The second kiosk preset: TensorArt's step-distilled SD3.5 Medium keeps the 2.5 s promise on an
RTX 4060 by the latency model, at the size the model chooses, for the path the engine runs."""

import json

from fp8pipe.kiosk_choice import KIOSK_CARD, KIOSK_PRESETS, PROMISE_S, kiosk_size, plan_for_preset
from fp8pipe.presets import load_preset
from fp8pipe.sizes import SAFETY_FRACTION, GiB
from fp8pipe.specs import SPECS, find_spec

MEDIUM = "kiosk-medium-8gb"


def test_the_medium_turbo_family_has_mediums_architecture_and_its_model_cards_settings():
    spec = find_spec("medium-turbo")
    assert spec is SPECS["sd3.5-medium-turbo"] and spec.hub_id == "tensorart/stable-diffusion-3.5-medium-turbo"
    assert spec.transformer_config == SPECS["sd3.5-medium"].transformer_config
    assert (spec.steps, spec.guidance, spec.shift) == (8, 1.5, 3.0)


def test_the_medium_kiosk_serves_the_largest_size_that_keeps_the_promise():
    choice = kiosk_size(KIOSK_CARD, MEDIUM)
    preset = load_preset(MEDIUM)
    assert MEDIUM in KIOSK_PRESETS and choice["keeps_promise"]
    assert (preset.width, preset.height) == (choice["size"], choice["size"])
    rows = {r["size"]: r for r in choice["rows"]}
    chosen = rows[choice["size"]]
    assert chosen["predicted_latency_s"] <= PROMISE_S and chosen["floor_latency_s"] <= chosen["predicted_latency_s"]
    assert all(r["predicted_latency_s"] > PROMISE_S for px, r in rows.items() if px > choice["size"])
    assert chosen["predicted_peak_vram_bytes"] <= chosen["usable_vram_bytes"] == int(8 * GiB * (1 - SAFETY_FRACTION))
    assert preset.t5 == "drop" and chosen["t5"] == "drop"


def test_the_medium_kiosk_is_planned_for_the_compiled_path_it_runs_and_eager_is_slower():
    preset = load_preset(MEDIUM)
    assert preset.compile and preset.model == "sd3.5-medium-turbo"
    compiled = plan_for_preset(MEDIUM, KIOSK_CARD)
    eager = plan_for_preset(MEDIUM, KIOSK_CARD, compile=False)
    assert (compiled.placement, compiled.execution, eager.execution) == ("resident", "compiled", "eager")
    assert compiled.predicted_latency_s < eager.predicted_latency_s


def test_the_medium_kiosk_predicts_faster_than_the_large_turbo_kiosk_at_the_same_size():
    size = load_preset(MEDIUM).width
    assert plan_for_preset(MEDIUM, KIOSK_CARD, size).predicted_latency_s < plan_for_preset(KIOSK_PRESETS[0], KIOSK_CARD, size).predicted_latency_s


def test_plan_command_predicts_the_presets_compiled_path(capsys):
    from fp8pipe.cli import main

    assert main(["plan", "--preset", MEDIUM, "--card", "RTX 4060", "--ram", "32GiB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["execution"], plan["placement"], plan["t5"], plan["width"]) == ("compiled", "resident", "drop", load_preset(MEDIUM).width)
    assert plan["floor_latency_s"] <= plan["predicted_latency_s"] <= PROMISE_S
