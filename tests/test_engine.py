"""The warm engine on the CPU with the demo model: reuse, cancel, out-of-memory fallback, order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import size_error

from fp8pipe.engine import Cancelled, Engine, OutOfMemory, latent_preview
from fp8pipe.loader import load_model
from fp8pipe.requests import Limits

SMALL = {"steps": 2, "width": 64, "height": 64}


class CountingLoader:
    """load_model, counting calls (the engine's only way to load)."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, options):
        self.calls.append((model, options))
        return load_model(model, options)


@pytest.fixture(scope="module")
def engine():
    loader = CountingLoader()
    eng = Engine(device="cpu", loader=loader).start([("demo", "fp8")], request_fields=SMALL)
    eng.counting_loader = loader
    yield eng
    eng.close()


def _pixels(result):
    return np.asarray(result.image)


def test_engine_is_ready_after_start_up_load_and_warm_up(engine):
    assert engine.ready.is_set()
    assert [e["event"] for e in engine.events[:2]] == ["load", "warmup"]


def test_warm_engine_serves_a_second_request_without_loading(engine):
    loads = len(engine.counting_loader.calls)
    first = engine.submit(engine.request(prompt="a red cube", seed=1, **SMALL)).result()
    second = engine.submit(engine.request(prompt="a blue cube", seed=2, **SMALL)).result()
    assert len(engine.counting_loader.calls) == loads
    assert first.stats["loaded"] is False and second.stats["load_s"] == 0.0


def test_stats_report_every_stage_and_the_plan(engine):
    stats = engine.submit(engine.request(prompt="stats", seed=3, **SMALL)).result().stats
    for key in ("queue_wait_s", "load_s", "text_encode_s", "denoise_s", "decode_s", "peak_memory_bytes", "plan"):
        assert key in stats
    assert stats["plan"]["placement"] == "resident" and stats["attention"] == "sdpa"


def test_engine_image_equals_a_direct_generate_of_the_same_request(engine):
    from fp8pipe.generation import generate

    request = engine.request(prompt="same path", seed=4, **SMALL)
    loaded = next(iter(engine._pool.values())).loaded
    assert np.array_equal(_pixels(engine.submit(request).result()), np.asarray(generate(loaded, request).image))


def test_progress_reports_every_step_with_previews(engine):
    seen = []
    request = engine.request(prompt="progress", seed=5, steps=3, width=64, height=64)
    engine.submit(request, on_progress=seen.append, preview=True).result()
    assert [p.step for p in seen] == [1, 2, 3] and {p.total for p in seen} == {3}
    factor = engine.spec_for("demo").vae_scale_factor  # the preview is latent-sized
    assert seen[-1].preview.size == (64 // factor, 64 // factor)


def test_cancel_between_steps_stops_before_the_remaining_steps(engine):
    steps = []
    box = {}

    def on_progress(p):
        steps.append(p.step)
        box["job"].cancel()

    box["job"] = job = engine.submit(engine.request(prompt="cancel me", seed=6, steps=5, width=64, height=64), on_progress=on_progress)
    with pytest.raises(Cancelled):
        job.result()
    assert steps == [1]
    assert engine.submit(engine.request(prompt="after cancel", seed=6, **SMALL)).result().image is not None


def test_a_job_cancelled_while_queued_never_runs(engine):
    gate = threading.Event()
    blocker = engine.submit(engine.request(prompt="blocker", seed=7, **SMALL), on_progress=lambda p: gate.wait(10))
    queued = engine.submit(engine.request(prompt="queued", seed=8, **SMALL))
    queued.cancel()
    gate.set()
    blocker.result()
    with pytest.raises(Cancelled):
        queued.result()
    assert queued.step == 0


def test_out_of_memory_steps_down_retries_and_the_next_request_succeeds():
    loader = CountingLoader()
    with Engine(device="cpu", loader=loader, warmup=False) as eng:
        raised = []

        def oom_once_in_denoise(stage):
            if stage == "denoise" and not raised:
                raised.append(stage)
                raise torch.OutOfMemoryError("injected by the test")

        eng.fault_hook = oom_once_in_denoise
        result = eng.submit(eng.request(prompt="oom", seed=9, **SMALL)).result()
        fallback = result.stats["fallback"]
        assert fallback["stage"] == "denoise"
        assert fallback["to"]["level"] > fallback["from"]["level"]
        assert result.stats["plan"] == fallback["to"]
        assert len(loader.calls) == 2  # the failed pipeline was dropped whole and rebuilt
        assert len(eng._pool) == 1
        after = eng.submit(eng.request(prompt="next", seed=10, **SMALL)).result()
        assert after.stats["fallback"] is None and after.stats["plan"]["level"] == fallback["to"]["level"]
        assert len(loader.calls) == 2


def test_out_of_memory_twice_fails_the_job_with_a_clear_error_and_the_engine_serves_on():
    with Engine(device="cpu", warmup=False) as eng:
        state = {"fail": True}

        def oom_in_decode(stage):
            if stage == "decode" and state["fail"]:
                raise torch.OutOfMemoryError("injected by the test")

        eng.fault_hook = oom_in_decode
        with pytest.raises(OutOfMemory, match="out of memory in decode again"):
            eng.submit(eng.request(prompt="oom twice", seed=11, **SMALL)).result()
        state["fail"] = False
        assert eng.submit(eng.request(prompt="recovered", seed=11, **SMALL)).result().image is not None


def test_eight_threads_of_four_requests_all_complete_same_seed_same_image(engine):
    seeds = [100, 101, 100, 102]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors = []

    def client(thread):
        try:
            jobs = [engine.submit(engine.request(prompt="threads", seed=s, **SMALL)) for s in seeds]
            for i, job in enumerate(jobs):
                results[(thread, i)] = _pixels(job.result(timeout=300))
        except Exception as e:  # reported below, with the thread
            errors.append((thread, e))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 32
    by_seed: dict[int, list[np.ndarray]] = {}
    for (_, i), pixels in results.items():
        by_seed.setdefault(seeds[i], []).append(pixels)
    for images in by_seed.values():
        assert all(np.array_equal(images[0], other) for other in images[1:])
    firsts = [images[0] for images in by_seed.values()]
    assert not np.array_equal(firsts[0], firsts[1]) and not np.array_equal(firsts[0], firsts[2])


def test_jobs_run_in_arrival_order(engine):
    order = []
    jobs = [engine.submit(engine.request(prompt=f"order {i}", seed=i, steps=1, width=64, height=64), on_progress=lambda p, i=i: order.append(i)) for i in range(5)]
    for job in jobs:
        job.result()
    assert order == [0, 1, 2, 3, 4]


def test_pool_evicts_the_least_recently_used_pipeline_when_the_budget_is_full():
    with Engine(device="cpu", warmup=False) as eng:
        eng.submit(eng.request(prompt="fp8", seed=1, **SMALL), precision="fp8").result()
        one = next(iter(eng._pool.values()))
        eng.host_budget = int(one.host_bytes * 1.5)  # room for one demo pipeline, not two
        eng.submit(eng.request(prompt="bf16", seed=1, **SMALL), precision="bf16").result()
        assert [k.precision for k in eng._pool] == ["bf16"]
        assert [e["why"] for e in eng.events if e["event"] == "evict"] == ["budget"]


def test_pool_evicts_the_least_recently_used_of_several_pipelines_not_the_oldest_loaded():
    with Engine(device="cpu", warmup=False) as eng:
        run = lambda precision: eng.submit(eng.request(prompt=precision, seed=1, **SMALL), precision=precision).result()  # noqa: E731
        run("fp32")
        run("bf16")
        run("fp32")  # fp32 was loaded first but is now the most recently used
        assert [k.precision for k in eng._pool] == ["bf16", "fp32"]
        eng.host_budget = sum(e.host_bytes for e in eng._pool.values())  # full: the next load evicts one
        run("fp8")  # smaller than bf16: evicting bf16 alone makes room
        assert [k.precision for k in eng._pool] == ["fp32", "fp8"]
        assert [(e["key"]["precision"], e["why"]) for e in eng.events if e["event"] == "evict"] == [("bf16", "budget")]
        assert eng.load_count == 3


def test_a_closed_engine_refuses_new_jobs_and_fails_the_queued_ones():
    from fp8pipe.engine import EngineClosed

    eng = Engine(device="cpu", warmup=False)
    eng.close()
    with pytest.raises(EngineClosed, match="closed"):
        eng.submit(eng.request(prompt="late", seed=1, **SMALL))


def test_bad_request_fields_name_the_field_and_range(engine):
    from fp8pipe.requests import RequestError

    with pytest.raises(RequestError, match=f"width: {size_error(Limits.for_spec(engine.spec_for('demo')))}; got 100"):
        engine.request(prompt="x", width=100)
    with pytest.raises(RequestError, match=r"batch: must be a whole number from 1 to 8"):
        engine.request(prompt="x", batch=0)


def test_latent_preview_maps_16_channels_to_rgb():
    image = latent_preview(torch.zeros(1, 16, 4, 6))
    assert image.size == (6, 4) and image.mode == "RGB"
    # Zero latents give the bias colour: (bias + 1) / 2 of full scale.
    assert tuple(np.asarray(image)[0, 0]) == (158, 155, 152)


def test_t5_in_fp8_generates_an_image():
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions
    from fp8pipe.requests import GenerationRequest

    loaded = load_model("demo", LoadOptions(device="cpu", t5="fp8"))
    assert loaded.dtypes["t5"] == "fp8"
    result = generate(loaded, GenerationRequest.create(loaded.spec, prompt="fp8 text encoder", seed=0, **SMALL))
    assert result.image.size == (64, 64)


def test_out_of_memory_during_start_up_steps_down_and_the_engine_becomes_ready():
    eng = Engine(device="cpu")
    raised = []

    def oom_once_at_load(stage):
        if stage == "load" and not raised:
            raised.append(stage)
            raise torch.OutOfMemoryError("injected by the test")

    eng.fault_hook = oom_once_at_load
    with eng:
        eng.start([("demo", "fp8")], request_fields=SMALL)
        assert eng.ready.is_set()
        steps = [e for e in eng.events if e["event"] == "step_down"]
        assert len(steps) == 1 and steps[0]["stage"] == "warmup"
        assert eng.describe()["pool"][0]["plan"]["level"] == steps[0]["to"]["level"]


def test_a_full_queue_refuses_new_jobs_with_a_clear_error():
    from fp8pipe.engine import QueueFull

    with Engine(device="cpu", warmup=False, max_queue=2) as eng:
        gate = threading.Event()
        started = threading.Event()

        def hold(progress):
            started.set()
            gate.wait(10)

        blocker = eng.submit(eng.request(prompt="blocker", seed=1, **SMALL), on_progress=hold)
        assert started.wait(60)
        waiting = [eng.submit(eng.request(prompt="wait", seed=s, **SMALL)) for s in (2, 3)]
        with pytest.raises(QueueFull, match="at most 2"):
            eng.submit(eng.request(prompt="one too many", seed=4, **SMALL))
        gate.set()
        for job in [blocker, *waiting]:
            assert job.result(timeout=120).image is not None


def test_a_request_can_hold_t5_to_one_mode_which_uses_its_own_warm_pipeline(engine):
    request = engine.request("demo", prompt="a red ball", seed=1, steps=1)
    loads = engine.load_count
    engine.generate(request, model="demo", t5="drop")
    engine.generate(request, model="demo", t5="drop")
    assert engine.load_count == loads + 1
    assert any(e.key.t5 == "drop" for e in engine._pool.values())


def test_the_shift_of_a_request_changes_the_image_and_is_recorded():
    from fp8pipe.generation import generate
    from fp8pipe.loader import LoadOptions, load_model
    from fp8pipe.metadata import parse_parameters
    from fp8pipe.requests import GenerationRequest

    loaded = load_model("demo", LoadOptions(device="cpu"))
    default = GenerationRequest.create(loaded.spec, "a red ball", seed=1, steps=3)
    shifted = GenerationRequest.create(loaded.spec, "a red ball", seed=1, steps=3, shift=6.0)
    a, b = generate(loaded, default), generate(loaded, shifted)
    assert a.image.tobytes() != b.image.tobytes()
    assert parse_parameters(b.parameters)["Shift"] == "6.0" and parse_parameters(a.parameters)["Shift"] == "3.0"
    assert generate(loaded, default).image.tobytes() == a.image.tobytes()  # the scheduler is not left shifted
