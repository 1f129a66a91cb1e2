"""The planner counts runtime LoRA bytes with the transformer blocks and picks the LoRA mode;
the engine runs the mode it picked and says so; runtime LoRAs compose with block offload."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fp8pipe.lora_library import LoraLibrary, human_bytes, runtime_bytes
from fp8pipe.lora_plan import choose_lora_mode
from fp8pipe.planner import plan_placement, predict
from fp8pipe.sizes import GiB, MiB, Workload, component_sizes, with_lora
from fp8pipe.specs import SPECS

LARGE = SPECS["sd3.5-large"]
WORK = Workload(1024, 1024, 1, True)
LORA = 512 * MiB


def test_runtime_lora_bytes_are_spread_over_the_blocks():
    sizes = component_sizes(LARGE.name, "fp8")
    more = with_lora(sizes, LORA)
    per_block = LORA // len(sizes.transformer_block_bytes)
    assert [b - a for a, b in zip(sizes.transformer_block_bytes, more.transformer_block_bytes)] == [per_block] * len(sizes.transformer_block_bytes)
    assert more.transformer - sizes.transformer == per_block * len(sizes.transformer_block_bytes)


def test_resident_lora_weights_stay_on_the_gpu_and_streamed_ones_travel_with_their_block():
    lora_work = replace(WORK, lora_bytes=LORA)
    blocks = len(component_sizes(LARGE.name, "fp8").transformer_block_bytes)
    resident = predict(LARGE, "fp8", "resident", "drop", lora_work, False, "sdpa")["vram"] - predict(LARGE, "fp8", "resident", "drop", WORK, False, "sdpa")["vram"]
    assert resident == LORA // blocks * blocks
    streamed = predict(LARGE, "fp8", "group_offload", "drop", lora_work, False, "sdpa", 0)
    plain = predict(LARGE, "fp8", "group_offload", "drop", WORK, False, "sdpa", 0)
    assert streamed["host_weights"] - plain["host_weights"] == LORA // blocks * blocks  # their home is the host, with their block
    assert streamed["vram"] - plain["vram"] == 2 * (LORA // blocks)  # only the two blocks in flight carry theirs on the GPU
    assert streamed["lora_runtime"] == LORA


def test_asked_modes_are_kept():
    assert choose_lora_mode("merge", True)[0] == "merge" and choose_lora_mode("runtime", False)[0] == "runtime"


def test_fixed_loras_are_merged_once():
    mode, why = choose_lora_mode("auto", per_request=False)
    assert mode == "merge" and "fixed" in why


def test_per_request_loras_run_in_runtime_mode_when_their_weights_fit_beside_the_same_plan():
    merged = plan_placement(LARGE, 80 * GiB, 64 * GiB, WORK)
    runtime = plan_placement(LARGE, 80 * GiB, 64 * GiB, replace(WORK, lora_bytes=LORA))
    assert (runtime.placement, runtime.t5) == (merged.placement, merged.t5) and runtime.lora_bytes == LORA
    assert choose_lora_mode("auto", True, runtime, merged)[0] == "runtime"


def test_per_request_loras_are_merged_when_their_weights_would_move_a_resident_plan():
    merged = plan_placement(LARGE, 24 * GiB, 64 * GiB, WORK)
    runtime = plan_placement(LARGE, 24 * GiB, 64 * GiB, replace(WORK, lora_bytes=2 * GiB))
    assert merged.placement == "resident" and (runtime.placement, runtime.t5) != (merged.placement, merged.t5)  # 2 GiB more: T5 has to give way
    mode, why = choose_lora_mode("auto", True, runtime, merged)
    assert mode == "merge" and why.startswith("LoRA mode merge: runtime LoRA weights (2.00 GiB) would move the plan from resident")


def test_per_request_loras_stay_in_runtime_mode_under_offload_where_a_merge_could_not_take_effect():
    merged = plan_placement(LARGE, 8 * GiB, 64 * GiB, WORK)
    runtime = plan_placement(LARGE, 8 * GiB, 64 * GiB, replace(WORK, lora_bytes=2 * GiB))
    assert merged.placement != "resident"
    mode, why = choose_lora_mode("auto", True, runtime, merged)
    assert mode == "runtime" and "stream with their blocks" in why


def test_per_request_loras_that_do_not_fit_at_all_are_merged():
    merged = plan_placement(LARGE, 80 * GiB, 64 * GiB, WORK)
    assert choose_lora_mode("auto", True, replace(merged, fits=False, lora_bytes=LORA), merged)[0] == "merge"


def test_a_bad_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="lora mode: must be auto, runtime or merge; got 'fast'"):
        choose_lora_mode("fast", True)


def test_runtime_bytes_come_from_the_header_alone(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a.lora_down.weight": torch.zeros(4, 100), "a.lora_up.weight": torch.zeros(300, 4), "a.alpha": torch.tensor(4.0)}, str(path))
    assert runtime_bytes(path) == (400 + 1200) * 2 and human_bytes(runtime_bytes(path)) == "3.125 KiB"
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 7)
    assert runtime_bytes(tmp_path / "broken.safetensors") == 0


def _lora(path, width=256, mlp=1024, seed=1):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out, inp) in {"joint_blocks_0_x_block_attn_qkv": (3 * width, width), "joint_blocks_1_x_block_mlp_fc2": (width, mlp)}.items():
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, inp, generator=g) * 0.3
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, 4, generator=g) * 0.3
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("folder, fixed, expected", [(True, False, "runtime"), (False, True, "merge")])
def test_the_engine_runs_the_mode_the_planner_picked_and_says_why(tiny_pipeline_dir, tmp_path, folder, fixed, expected):
    from fp8pipe.engine import Engine
    from fp8pipe.lora import LoraSpec

    _lora(tmp_path / "style.safetensors")
    library = LoraLibrary.at(tmp_path) if folder else None
    loras = [LoraSpec(str(tmp_path / "style.safetensors"), 0.5)] if fixed else []
    model = str(tiny_pipeline_dir)
    with Engine(device="cpu", warmup=False, loras=loras, lora_mode="auto", lora_library=library) as engine:
        engine.start([(model, "fp8")])
        request = engine.request(model, prompt="a red circle", steps=1, width=64, height=64, seed=1,
                                 loras=[{"name": "style"}] if folder else None, lora_choices=library.names() if folder else None)
        result = engine.generate(request, model=model)
    assert result.stats["lora_mode"] == expected and result.stats["loras"][0]["name"] == "style"
    event = next(e for e in engine.events if e["event"] == "lora_mode")
    assert event["mode"] == expected and event["why"].startswith(f"LoRA mode {expected}")


def test_runtime_loras_give_the_same_image_under_block_offload(tmp_path):
    """The LoRA hooks run after diffusers' group-offload hooks, on whatever device the block ran
    (here the CPU for both: this checks that they compose, not the transfer)."""
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.lora import LoraSet, LoraSpec
    from fp8pipe.requests import GenerationRequest

    path = _lora(tmp_path / "style.safetensors", width=128, mlp=512)
    images = []
    for offload in (False, True):
        loaded = load_model("demo", LoadOptions(device="cpu"))
        if offload:
            cpu = torch.device("cpu")
            loaded.pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
        LoraSet(loaded.pipe).apply([LoraSpec(str(path))], "runtime")
        request = GenerationRequest.create(loaded.spec, prompt="a red circle", seed=3, steps=2, width=64, height=64)
        images.append(np.asarray(generate(loaded, request).image))
    assert np.array_equal(images[0], images[1])


def test_when_the_planner_merges_the_plan_is_the_one_without_lora_weights(tmp_path):
    """A budget with room for the model resident but not for the LoRA's runtime weights beside it:
    the planner merges, and the plan kept is the resident one (not the last one it weighed)."""
    from fp8pipe.engine import Engine
    from fp8pipe.sizes import SAFETY_FRACTION

    path = tmp_path / "style.safetensors"
    g = torch.Generator().manual_seed(0)
    save_file({f"lora_unet_joint_blocks_{i}_x_block_mlp_fc2.lora_{kind}.weight": torch.randn(*shape, generator=g)
               for i in range(4) for kind, shape in (("down", (64, 512)), ("up", (128, 64)))}, str(path))

    def plan(folder, budget):
        engine = Engine(device="cpu", vram_budget=budget, warmup=False, lora_library=folder, lora_mode="auto", lora_budget="1GiB")
        request = engine.request("demo", prompt="a red circle", width=64, height=64)
        return engine, engine._plan_for("demo", "fp8", engine.spec_for("demo"), request)

    _, roomy = plan(None, "80GiB")
    budget = int((roomy.predicted_peak_vram_bytes + runtime_bytes(path) // 2) / (1 - SAFETY_FRACTION)) + 1
    _, without = plan(None, budget)
    engine, chosen = plan(LoraLibrary.at(tmp_path), budget)
    assert engine.lora_modes[("demo", "fp8")][0] == "merge" and without.placement == roomy.placement == "resident"
    assert (chosen.placement, chosen.level, chosen.lora_bytes) == ("resident", without.level, 0)


@pytest.mark.parametrize("offload", ["sequential", "group"])
def test_a_merge_after_an_offload_hook_is_refused_and_one_before_it_gives_the_resident_image(offload):
    """Offload hooks hold the weights they were given: the engine merges fixed LoRAs before the
    plan's hooks (the same image as resident); a merge after them is refused, never silently lost."""
    from accelerate import cpu_offload

    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.lora import LoraSet, LoraSpec
    from fp8pipe.requests import GenerationRequest

    from fp8pipe.demo.lora_train import LORA_DIR, LORA_NAME

    demo_lora = LoraSpec(str(LORA_DIR / f"{LORA_NAME}.safetensors"))
    cpu = torch.device("cpu")

    def hook(loaded):
        if offload == "sequential":
            cpu_offload(loaded.pipe.transformer, execution_device=cpu, offload_buffers=True)
        else:
            loaded.pipe.transformer.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)

    images = []
    for before in (None, True):
        loaded = load_model("demo", LoadOptions(device="cpu"))
        loras = LoraSet(loaded.pipe)
        loras.apply([demo_lora], "merge")
        if before:
            hook(loaded)
        request = GenerationRequest.create(loaded.spec, prompt="a red circle", seed=3, steps=2, width=64, height=64)
        images.append(np.asarray(generate(loaded, request).image))
    assert np.array_equal(images[0], images[1])
    with pytest.raises(ValueError, match="is held by"):
        loras.apply([], "merge")  # undoing under the hooks would be lost as well
    assert np.array_equal(np.asarray(generate(loaded, request).image), images[1])  # and nothing changed
    loaded = load_model("demo", LoadOptions(device="cpu"))
    hook(loaded)
    with pytest.raises(ValueError, match="lora mode merge: transformer.transformer_blocks.0.* is held by .* offload.*use runtime mode"):
        LoraSet(loaded.pipe).apply([demo_lora], "merge")


def test_an_offloaded_plan_with_a_lora_folder_counts_the_runtime_weights_of_its_loras():
    from fp8pipe.demo.lora_train import LORA_DIR
    from fp8pipe.engine import Engine

    engine = Engine(device="cpu", vram_budget="1MiB", warmup=False, lora_library=LoraLibrary.at(LORA_DIR), lora_mode="auto")
    request = engine.request("demo", prompt="a red circle", width=64, height=64)
    plan = engine._plan_for("demo", "fp8", engine.spec_for("demo"), request)
    mode, why = engine.lora_modes[("demo", "fp8")]
    assert plan.placement != "resident" and mode == "runtime" and "offloads" in why
    assert plan.lora_bytes == plan.breakdown["lora_runtime"] == sum(runtime_bytes(p) for p in LoraLibrary.at(LORA_DIR).files().values()) > 0
