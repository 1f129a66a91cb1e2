"""What the engine's pool keeps for each pipeline: its key, its counted bytes, its LoRA state,
and what changes in place on a warm pipeline. Stand-ins (tests/engine_stand_ins.py) replace the
loader, the pipeline and every CUDA call, so a "GPU" engine runs on the CPU.
"""

from __future__ import annotations

import dataclasses

import pytest
from engine_stand_ins import WAIT, _engine, _submit, gpu_engine, stand_ins  # noqa: F401  (the fixtures)

from fp8pipe import lora as lora_module
from fp8pipe import lora_library
from fp8pipe import memory
from fp8pipe.lora import LoraSpec
from fp8pipe.placement import StreamCounter
from fp8pipe.specs import SPECS


def _submit_large(eng, prompt="large"):
    """sd3.5-large at 1024 px: at 8 GiB the planner keeps some blocks resident and streams the rest.
    The first plan for it counts its components on the meta device (transformers imported, T5-XXL
    built without memory): seconds, so a longer hang guard than WAIT."""
    return eng.submit(eng.request(model="sd3.5-large", prompt=prompt, seed=1, steps=3), model="sd3.5-large").result(6 * WAIT)


def test_on_a_gpu_a_partial_plan_is_pooled_by_its_resident_blocks_and_counts_what_it_streams(stand_ins, gpu_engine):
    eng = gpu_engine(vram_budget="8GiB")
    _submit_large(eng)
    ((key, entry),) = eng._pool.items()
    plan = entry.plan
    assert plan.placement == "partial" and key.placement == f"partial:{plan.resident_blocks}"  # hooks differ by block count
    assert entry.vram_bytes == plan.breakdown["vram_between_requests"] > 0
    assert entry.host_bytes == plan.breakdown["host_weights"] > 0  # the streamed blocks' pinned host copies
    assert isinstance(entry.streamed, StreamCounter)
    eng.close()


def test_on_a_gpu_a_group_offload_plan_counts_what_it_streams(stand_ins, gpu_engine):
    eng = gpu_engine(vram_budget="12GiB")
    eng.submit(eng.request(model="sd3.5-medium", prompt="medium", seed=1, steps=3), model="sd3.5-medium").result(6 * WAIT)
    ((key, entry),) = eng._pool.items()
    assert key.placement == entry.plan.placement == "group_offload"  # every block streams, one at a time
    assert isinstance(entry.streamed, StreamCounter)
    eng.close()


def test_on_a_gpu_a_resident_pipeline_streams_nothing_and_pins_nothing(stand_ins, gpu_engine):
    eng = gpu_engine(vram_budget="80GiB")
    _submit(eng, "resident").result(WAIT)
    ((key, entry),) = eng._pool.items()
    assert key.placement == entry.plan.placement == "resident"
    assert entry.streamed is None and entry.host_bytes == entry.plan.breakdown["host_weights"] == 0
    eng.close()


def test_on_a_gpu_a_newcomers_pinned_host_weights_count_against_the_host_budget(stand_ins, gpu_engine):
    eng = gpu_engine(vram_budget="8GiB")
    _submit_large(eng, "measure")
    ((key, large),) = eng._pool.items()
    need_host = large.plan.breakdown["host_weights"]
    eng._evict(key, "test")
    _submit(eng, "demo").result(WAIT)
    (first,) = eng._pool.values()
    first.vram_bytes = 0  # VRAM has room: only the host budget decides
    first.host_bytes = eng.host_budget - need_host  # exactly room for the newcomer's pinned copies
    _submit_large(eng)
    assert [k.model for k in eng._pool] == ["demo", "sd3.5-large"]
    eng._evict(next(k for k in eng._pool if k.model == "sd3.5-large"), "test")
    first.host_bytes += 1  # one byte over: the demo pipeline goes to make room
    _submit_large(eng, "again")
    assert [k.model for k in eng._pool] == ["sd3.5-large"]
    assert [e["why"] for e in eng.events if e["event"] == "evict"] == ["test", "test", "budget"]
    eng.close()


def test_a_model_of_an_unknown_family_is_pooled_unplanned_with_no_counted_bytes(stand_ins, gpu_engine):
    stand_ins.spec = dataclasses.replace(SPECS["demo"], name="my-finetune")  # the family its files declare
    eng = gpu_engine(vram_budget="80GiB")
    _submit(eng, "first", model="my-finetune").result(WAIT)  # before loading: planned as the widest SD3.5
    _submit(eng, "bf16", model="my-finetune", precision="bf16").result(WAIT)  # now known: not planned
    unplanned = next(e for k, e in eng._pool.items() if k.precision == "bf16")
    assert unplanned.plan.breakdown == {} and (unplanned.vram_bytes, unplanned.host_bytes) == (0, 0)
    _submit(eng, "fp32", model="my-finetune", precision="fp32").result(WAIT)  # the pool's sums take it
    assert len(eng._pool) == 3
    eng.close()


def test_a_warm_pipeline_whose_plan_changes_only_its_tiling_is_retiled_in_place(stand_ins, monkeypatch):
    tiled = []
    monkeypatch.setattr(memory, "apply_plan_tiling", lambda loaded, plan: tiled.append((loaded, plan)) or {"vae_tiling": plan.vae_tiling})
    eng = _engine(stand_ins)
    _submit(eng, "first").result(WAIT)
    _submit(eng, "other", precision="bf16").result(WAIT)
    entry = next(e for k, e in eng._pool.items() if k.precision == "fp8")
    plan_for = eng._plan_for
    monkeypatch.setattr(eng, "_plan_for", lambda *a, **k: dataclasses.replace(plan_for(*a, **k), vae_tiling=True))
    _submit(eng, "tiled").result(WAIT)
    assert eng.load_count == 2 and tiled == [(entry.loaded, entry.plan)]
    assert entry.plan.vae_tiling is True and entry.applied["vae_tiling"] is True
    assert [k.precision for k in eng._pool] == ["bf16", "fp8"]  # used last, so evicted last
    eng.close()


class StandInLoraSet:
    """fp8pipe.lora.LoraSet: records the pipeline it was made for and every apply."""

    made: list = []

    def __init__(self, pipe):
        self.pipe, self.applied = pipe, []
        StandInLoraSet.made.append(self)

    def apply(self, specs, mode):
        self.applied.append((specs, mode))
        return {"mode": mode, "loras": [s.path for s in specs]}


@pytest.fixture
def lora_stand_ins(stand_ins, monkeypatch):
    """LoraSet and apply_for_request replaced; LoRA files are 1000 bytes each without being read."""
    StandInLoraSet.made = []
    order, per_request = [], []
    monkeypatch.setattr(lora_module, "LoraSet", StandInLoraSet)
    monkeypatch.setattr(lora_library, "runtime_bytes", lambda path: 1000)
    monkeypatch.setattr(lora_module, "apply_for_request", lambda *args: per_request.append(args) or ({"lora_mode": args[4], "loras": []}, []))
    monkeypatch.setattr(memory, "apply_plan", lambda loaded, plan: order.append("offload hooks") or {"placement": "resident", "attention": plan.attention})
    return order, per_request


@pytest.mark.parametrize("mode", ["runtime", "merge"])
def test_fixed_loras_are_applied_once_at_load_in_the_chosen_mode_before_the_offload_hooks(stand_ins, lora_stand_ins, mode):
    order, per_request = lora_stand_ins
    fixed = (LoraSpec("a.safetensors", 0.5), LoraSpec("b.safetensors"))
    eng = _engine(stand_ins, loras=fixed, lora_mode=mode)
    _submit(eng, "first").result(WAIT)
    _submit(eng, "second").result(WAIT)
    ((key, entry),) = eng._pool.items()
    (lora_set,) = StandInLoraSet.made
    assert lora_set.pipe is entry.loaded.pipe and entry.lora_set is lora_set
    assert lora_set.applied == [(list(fixed), mode)]
    assert entry.applied["loras"] == {"mode": mode, "loras": ["a.safetensors", "b.safetensors"]}
    assert order == ["offload hooks"] and eng.lora_modes[("demo", "fp8")][0] == mode
    assert [(args[0], args[1], args[4]) for args in per_request] == [(lora_set, fixed, mode)] * 2  # each request
    eng.close()


def test_the_mode_chosen_for_a_model_and_precision_is_the_one_applied(stand_ins, lora_stand_ins):
    eng = _engine(stand_ins, loras=(LoraSpec("a.safetensors"),), lora_mode="runtime")
    eng.lora_modes[("demo", "bf16")] = ("merge", "chosen earlier for bf16")
    _submit(eng, "bf16", precision="bf16").result(WAIT)
    _submit(eng, "fp8", precision="fp8").result(WAIT)
    assert [s.applied[0][1] for s in StandInLoraSet.made] == ["merge", "runtime"]
    eng.close()


class StandInLibrary:
    def files(self):
        return {}


def test_a_lora_folder_alone_gives_every_pipeline_a_lora_set_with_nothing_fixed(stand_ins, lora_stand_ins):
    _, per_request = lora_stand_ins
    eng = _engine(stand_ins, lora_library=StandInLibrary())
    _submit(eng, "plain").result(WAIT)
    ((key, entry),) = eng._pool.items()
    (lora_set,) = StandInLoraSet.made
    assert entry.lora_set is lora_set and lora_set.applied == [([], "runtime")]
    assert [(args[0], args[1]) for args in per_request] == [(lora_set, ())]
    eng.close()


def test_on_the_cpu_a_model_of_an_unknown_family_is_pooled_with_no_counted_bytes(stand_ins):
    stand_ins.spec = dataclasses.replace(SPECS["demo"], name="my-finetune")
    eng = _engine(stand_ins)
    _submit(eng, "first", model="my-finetune").result(WAIT)
    _submit(eng, "bf16", model="my-finetune", precision="bf16").result(WAIT)  # now known: not planned
    unplanned = next(e for k, e in eng._pool.items() if k.precision == "bf16")
    assert unplanned.plan.breakdown == {} and (unplanned.vram_bytes, unplanned.host_bytes) == (0, 0)
    first = next(e for k, e in eng._pool.items() if k.precision == "fp8")
    eng.host_budget = first.host_bytes  # the unplanned pipeline counts nothing: a third still fits exactly
    _submit(eng, "fp32", model="my-finetune", precision="fp32").result(WAIT)
    assert len(eng._pool) == 3
    eng.close()
