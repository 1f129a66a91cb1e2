"""What the engine reports about streaming and execution: host-to-device bytes counted where the
offload hooks copy them, and plans that predict the execution path the engine really runs."""

import torch

from fp8pipe import planner
from fp8pipe.cards import CARDS
from fp8pipe.sizes import GiB, Workload
from fp8pipe.specs import SPECS

HOST = 64 * GiB


def test_streamed_blocks_count_their_weight_bytes_once_per_transformer_call():
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.placement import count_streamed_bytes, stream_blocks
    from fp8pipe.requests import GenerationRequest

    loaded = load_model("demo", LoadOptions(device="cpu"))
    cpu = torch.device("cpu")
    streamed = stream_blocks(loaded.pipe.transformer, 1, cpu, cpu, use_stream=False)
    counter = count_streamed_bytes(loaded.pipe.transformer)
    blocks = loaded.pipe.transformer.transformer_blocks
    per_call = sum(t.numel() * t.element_size() for i in streamed for t in (*blocks[i].parameters(), *blocks[i].buffers()))
    request = GenerationRequest.create(loaded.spec, prompt="a red circle", seed=1, steps=3, width=64, height=64)
    assert request.guidance > 1  # guidance runs both rows in one batched call: still one copy per step
    generate(loaded, request)
    assert per_call > 0 and counter.bytes == 3 * per_call


def test_a_resident_pipeline_streams_nothing():
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.placement import count_streamed_bytes

    loaded = load_model("demo", LoadOptions(device="cpu"))
    assert count_streamed_bytes(loaded.pipe.transformer).bytes == 0


def test_engine_stats_carry_streamed_bytes_layer_paths_and_the_execution_path(tmp_path):
    from fp8pipe.engine import Engine
    from fp8pipe.serving import STATS_KEYS

    with Engine(device="cpu", warmup=False, compile=True) as engine:
        engine.start(models=[("demo", "fp8")])
        request = engine.request("demo", prompt="a red circle", seed=0, steps=1, width=64, height=64)
        stats = engine.generate(request, "demo", "fp8").stats
    assert {"h2d_streamed_bytes", "fp8_layer_paths"} <= set(STATS_KEYS)
    assert stats["h2d_streamed_bytes"] == 0
    assert stats["fp8_layer_paths"]["adaln_weight_only"] > 0
    assert stats["plan"]["execution"] == "eager"  # the engine compiles only on a GPU: the plan says what runs
    assert not engine.compiles


def test_a_compiling_engine_plans_compiled_only_where_it_keeps_the_transformer_resident():
    medium, large = SPECS["sd3.5-medium-turbo"], SPECS["sd3.5-large-turbo"]
    card = CARDS["RTX 4060"]
    resident = planner.plan_as_run(medium, 8 * GiB, HOST, Workload(512, 512, 1, True, 8), "fp8", "sdpa", "drop", card, compile=True)
    assert (resident.placement, resident.execution) == ("resident", "compiled")
    eager = planner.plan_placement(medium, 8 * GiB, HOST, Workload(512, 512, 1, True, 8), "fp8", "sdpa", "drop", card, "eager")
    assert resident.predicted_latency_s < eager.predicted_latency_s
    streamed = planner.plan_as_run(large, 8 * GiB, HOST, Workload(512, 512, 1, False, 4), "fp8", "sdpa", "drop", card, compile=True)
    assert streamed.placement != "resident" and streamed.execution == "eager"


def test_compiled_blocks_can_be_made_eager_again():
    from fp8pipe.compiling import compile_transformer_, uncompile_transformer_
    from fp8pipe.loader import LoadOptions, load_model

    transformer = load_model("demo", LoadOptions(device="cpu")).pipe.transformer
    assert compile_transformer_(transformer) == "blocks"
    assert all(b._compiled_call_impl is not None for b in transformer.transformer_blocks)
    uncompile_transformer_(transformer)
    assert all(b._compiled_call_impl is None for b in transformer.transformer_blocks)


def test_a_compile_failure_at_warm_up_falls_back_to_eager_and_says_so(monkeypatch):
    from fp8pipe import engine as engine_mod
    from fp8pipe.compiling import compile_transformer_
    from fp8pipe.engine import Engine

    real = engine_mod.run_stages
    calls = []

    def fails_once_compiled(loaded, request, *args, **kwargs):
        calls.append(request.steps)
        if len(calls) == 1:
            raise RuntimeError("Cannot find a working triton installation")
        return real(loaded, request, *args, **kwargs)

    with Engine(device="cpu", warmup=False) as engine:
        engine.start(models=[("demo", "fp8")])
        entry = next(iter(engine._pool.values()))
        transformer = entry.loaded.pipe.transformer
        entry.applied["compiled"] = compile_transformer_(transformer)  # as a GPU engine compiles a resident plan
        monkeypatch.setattr(engine_mod, "run_stages", fails_once_compiled)
        request = engine.request("demo", prompt="a red circle", seed=0, steps=1, width=64, height=64)
        engine._warm(entry, request)
        assert len(calls) == 2 and entry.applied["compiled"] is False and "triton" in entry.applied["compile_error"]
        assert all(b._compiled_call_impl is None for b in transformer.transformer_blocks)
        assert entry.plan.execution == "eager" and "compiling failed" in entry.plan.reasons[-1]
        assert engine.compile_error and not engine.compiles
        assert any(e["event"] == "compile_failed" for e in engine.events)
        monkeypatch.setattr(engine_mod, "run_stages", real)
        assert engine.generate(request, "demo", "fp8").image is not None
