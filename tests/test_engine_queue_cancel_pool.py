"""The engine's queue, cancel and pool, with a stand-in pipeline (tests/engine_stand_ins.py):
no model is loaded, nothing is drawn; order, waiting, cancelling and eviction are facts, never timings.
"""

from __future__ import annotations

import threading

import pytest
import torch
from engine_stand_ins import WAIT, _engine, _submit, gpu_engine, stand_ins  # noqa: F401  (the fixtures)

from fp8pipe import engine as engine_module
from fp8pipe import memory
from fp8pipe.engine import Cancelled, Engine
from fp8pipe.seam import EngineClosed, QueueFull
from fp8pipe.specs import SPECS


def test_jobs_run_one_at_a_time_in_arrival_order(stand_ins):
    with _engine(stand_ins) as eng:
        gate = stand_ins.gate("first")
        jobs = [_submit(eng, p) for p in ("first", "second", "third", "fourth")]
        assert stand_ins.started["first"].wait(WAIT)
        assert not any(j.done() for j in jobs)
        assert eng.describe()["queued"] == 3
        gate.set()
        results = [j.result(WAIT) for j in jobs]
    assert stand_ins.ran == ["first", "second", "third", "fourth"] and stand_ins.most_at_once == 1
    assert [r.request.prompt for r in results] == stand_ins.ran and all(j.done() for j in jobs)


def test_a_job_waits_for_its_result_and_says_when_it_is_done(stand_ins):
    from concurrent.futures import TimeoutError as FutureTimeout

    with _engine(stand_ins) as eng:
        gate = stand_ins.gate("held")
        job = _submit(eng, "held")
        assert stand_ins.started["held"].wait(WAIT)
        with pytest.raises(FutureTimeout):
            job.result(timeout=0)
        assert not job.done()
        gate.set()
        assert job.result(WAIT).request.prompt == "held" and job.done()


def test_the_queue_takes_exactly_max_queue_waiting_jobs_and_refuses_the_next(stand_ins):
    with _engine(stand_ins, max_queue=2) as eng:
        gate = stand_ins.gate("running")
        running = _submit(eng, "running")
        assert stand_ins.started["running"].wait(WAIT)  # on the device: no longer waiting
        waiting = [_submit(eng, "one"), _submit(eng, "two")]
        with pytest.raises(QueueFull, match=r"2 jobs are already waiting \(at most 2\)"):
            _submit(eng, "three")
        gate.set()
        for job in (running, *waiting):
            job.result(WAIT)
        _submit(eng, "after").result(WAIT)  # room again once the queue drained
    assert stand_ins.ran == ["running", "one", "two", "after"]


def test_a_job_cancelled_while_queued_fails_with_cancelled_and_never_runs(stand_ins):
    with _engine(stand_ins) as eng:
        gate = stand_ins.gate("front")
        front, behind = _submit(eng, "front"), _submit(eng, "behind")
        assert stand_ins.started["front"].wait(WAIT)
        behind.cancel()
        assert behind.cancelled and not front.cancelled
        gate.set()
        front.result(WAIT)
        with pytest.raises(Cancelled, match="^cancelled before it started$"):
            behind.result(WAIT)
        _submit(eng, "next").result(WAIT)  # the worker goes on
    assert stand_ins.ran == ["front", "next"]


def test_cancel_during_denoise_stops_at_the_next_step_and_the_engine_serves_on(stand_ins):
    with _engine(stand_ins) as eng:
        holder = {}
        job = _submit(eng, "long", steps=10, on_progress=lambda p: holder["job"].cancel() if p.step == 3 else None)
        holder["job"] = job
        with pytest.raises(Cancelled):
            job.result(WAIT)
        assert stand_ins.steps["long"] == 3  # the interrupt is seen before the fourth step
        assert _submit(eng, "short", steps=2).result(WAIT).request.steps == 2
    assert stand_ins.steps["short"] == 2


def test_a_failing_job_fails_alone_and_keeps_the_warm_pipeline(stand_ins):
    stand_ins.fail.add("odd")
    with _engine(stand_ins) as eng:
        with pytest.raises(ValueError, match="bad request odd"):
            _submit(eng, "odd").result(WAIT)
        assert _submit(eng, "fine").result(WAIT).request.prompt == "fine"
        assert len(stand_ins.loads) == 1 and len(eng._pool) == 1


def test_a_warm_pipeline_is_reused_and_says_it_did_not_load(stand_ins):
    with _engine(stand_ins) as eng:
        first = _submit(eng, "a").result(WAIT)
        second = _submit(eng, "b").result(WAIT)
        (entry,) = eng._pool.values()
    assert first.stats["loaded"] is True and second.stats["loaded"] is False and second.stats["load_s"] == 0.0
    assert stand_ins.loads == [("demo", "fp8")] and eng.load_count == 1 and entry.uses == 2


def test_close_finishes_the_running_job_fails_the_queued_ones_and_frees_the_pool(stand_ins):
    eng = _engine(stand_ins)
    gate = stand_ins.gate("running")
    running, queued = _submit(eng, "running"), _submit(eng, "queued")
    assert stand_ins.started["running"].wait(WAIT)
    assert eng.close(timeout=0) is False  # the running job holds the worker: not stopped yet
    with pytest.raises(EngineClosed, match="^the engine was closed before this job ran$"):
        queued.result(WAIT)
    with pytest.raises(EngineClosed, match="^the engine is closed$"):
        _submit(eng, "late")
    with pytest.raises(EngineClosed):
        eng.prepare(eng.request(prompt="late", seed=1))
    assert len(eng._pool) == 1  # still in use
    gate.set()
    assert running.result(WAIT).request.prompt == "running"
    (entry,) = eng._pool.values()
    assert eng.close() is True
    assert not eng._pool and entry.loaded.pipe.hooks_removed == 1
    assert [e["why"] for e in eng.events if e["event"] == "evict"] == ["closed"]
    assert stand_ins.ran == ["running"]


def test_close_with_cancel_running_stops_the_running_job_at_its_next_step(stand_ins):
    eng = _engine(stand_ins)
    gate = stand_ins.gate("running")
    running = _submit(eng, "running", steps=5)
    assert stand_ins.started["running"].wait(WAIT)
    closer = threading.Thread(target=lambda: eng.close(timeout=WAIT, cancel_running=True))
    closer.start()
    while not running.cancelled:  # close() cancels before it waits for the worker
        closer.join(0.01)
    gate.set()
    closer.join(WAIT)
    with pytest.raises(Cancelled):
        running.result(WAIT)
    assert stand_ins.steps["running"] == 1 and not eng._pool  # the step in flight finishes, no other starts


def test_an_inline_job_runs_in_the_callers_thread_with_the_pool(stand_ins):
    eng = _engine(stand_ins)
    threads = []
    result = eng.run(eng.request(prompt="inline", seed=1, steps=2, width=64, height=64), on_progress=lambda p: threads.append(threading.current_thread()))
    assert result.request.prompt == "inline" and set(threads) == {threading.current_thread()}
    assert eng._worker is None and len(eng._pool) == 1
    job = eng.prepare(eng.request(prompt="cancelled", seed=1))
    job.cancel()
    with pytest.raises(Cancelled):
        eng.run_job(job)
    assert eng.close() is True and not eng._pool


def _pool_engine(stand_ins):
    eng = _engine(stand_ins)
    for precision in ("fp32", "bf16", "fp8"):
        _submit(eng, precision, precision=precision).result(WAIT)
    return eng


def test_a_load_that_fits_beside_the_pool_exactly_evicts_nothing(stand_ins):
    eng = _pool_engine(stand_ins)
    sizes = {k.precision: e.host_bytes for k, e in eng._pool.items()}
    assert sizes["fp32"] > sizes["bf16"] > sizes["fp8"] > 0  # what each demo pipeline holds in host RAM
    eng._evict(next(k for k in eng._pool if k.precision == "fp32"), "test")
    eng.host_budget = sizes["bf16"] + sizes["fp8"] + sizes["fp32"]  # exactly room for all three
    _submit(eng, "fp32 again", precision="fp32").result(WAIT)
    assert [k.precision for k in eng._pool] == ["bf16", "fp8", "fp32"]
    assert [e["why"] for e in eng.events if e["event"] == "evict"] == ["test"]
    eng.close()


def test_a_load_one_byte_over_the_budget_evicts_the_least_recently_used_until_it_fits(stand_ins):
    eng = _pool_engine(stand_ins)
    sizes = {k.precision: e.host_bytes for k, e in eng._pool.items()}
    _submit(eng, "fp32 used", precision="fp32").result(WAIT)  # fp32 now the most recently used
    assert [k.precision for k in eng._pool] == ["bf16", "fp8", "fp32"]
    bf16 = eng._pool[next(k for k in eng._pool if k.precision == "bf16")]
    eng._evict(next(k for k in eng._pool if k.precision == "fp8"), "test")
    eng.host_budget = sizes["bf16"] + sizes["fp8"] + sizes["fp32"] - 1  # one byte short for all three
    _submit(eng, "fp8 again", precision="fp8").result(WAIT)
    assert [k.precision for k in eng._pool] == ["fp32", "fp8"]  # bf16, the least recently used, went
    assert [(e["key"]["precision"], e["why"]) for e in eng.events if e["event"] == "evict"] == [("fp8", "test"), ("bf16", "budget")]
    assert bf16.loaded.pipe.hooks_removed == 1
    eng.host_budget = sizes["fp8"]  # only the newcomer fits: every other pipeline goes, oldest first
    _submit(eng, "bf16 back", precision="bf16").result(WAIT)
    assert [k.precision for k in eng._pool] == ["bf16"]
    assert [e["key"]["precision"] for e in eng.events if e["event"] == "evict"][-2:] == ["fp32", "fp8"]
    eng.close()


def test_evicting_a_pipeline_twice_or_one_whose_hooks_fail_is_harmless(stand_ins):
    eng = _engine(stand_ins)
    _submit(eng, "a").result(WAIT)
    (key,) = eng._pool
    eng._pool[key].loaded.pipe.remove_all_hooks = lambda: (_ for _ in ()).throw(RuntimeError("no hooks"))
    eng._evict(key, "first")
    eng._evict(key, "second")
    assert not eng._pool and [e["why"] for e in eng.events if e["event"] == "evict"] == ["first"]
    assert eng.close() is True


def test_a_pool_entry_records_its_load_and_the_plan_it_was_loaded_for(stand_ins):
    with _engine(stand_ins) as eng:
        _submit(eng, "a", precision="bf16").result(WAIT)
        (key, entry), = eng._pool.items()
        (load,) = [e for e in eng.events if e["event"] == "load"]
    assert (key.model, key.precision, key.placement) == ("demo", "bf16", "resident")
    assert load["key"] == vars(key) and load["plan"]["placement"] == "resident" and load["load_s"] == 0.0
    assert entry.vram_bytes == 0 and entry.host_bytes == entry.plan.breakdown["weights_on_gpu"] > 0  # on the CPU the weights live in host RAM
    assert entry.applied == {"placement": "resident", "attention": entry.plan.attention}


def test_jobs_are_numbered_in_order_and_carry_what_was_asked(stand_ins):
    with _engine(stand_ins) as eng:
        request = eng.request(prompt="a", seed=1, steps=2, width=64, height=64)
        prepared = eng.prepare(request)
        queued = eng.submit(request, t5="drop")
        inline = eng.prepare(request, "demo", "bf16", None, True, "cpu")
        assert [prepared.id, queued.id, inline.id] == [1, 2, 3]
        assert (prepared.model, prepared.precision, prepared.preview, prepared.t5) == ("demo", "fp8", False, None)
        assert (queued.model, queued.precision, queued.preview, queued.t5) == ("demo", "fp8", False, "drop")
        assert (inline.precision, inline.preview, inline.t5) == ("bf16", True, "cpu")
        queued.result(WAIT)
        assert [k.t5 for k in eng._pool] == ["drop"]  # the job's T5 hold reached the plan
    with pytest.raises(EngineClosed, match="^the engine is closed$"):
        eng.prepare(request)


@pytest.mark.parametrize("preview", [False, True])
def test_progress_carries_a_preview_only_when_asked(stand_ins, preview):
    seen = []
    with _engine(stand_ins) as eng:
        _submit(eng, "p", steps=2, preview=preview, on_progress=seen.append).result(WAIT)
        eng.run(eng.request(prompt="q", seed=1, steps=2, width=64, height=64), preview=preview, on_progress=seen.append)
    assert [(p.step, p.total) for p in seen] == [(1, 2), (2, 2)] * 2
    assert all((p.preview is not None) is preview for p in seen)


def test_closing_with_cancel_running_after_the_last_job_finished_cancels_nothing(stand_ins):
    eng = _engine(stand_ins)
    _submit(eng, "done").result(WAIT)
    assert eng._running is None  # nothing on the device between jobs
    assert eng.close(cancel_running=True) is True and not eng._pool


# ---- the pool on a GPU, played by stand-ins -----------------------------------------------
# On a CUDA device the pool counts what each pipeline keeps in VRAM between requests and its
# pinned host copies; these tests give the engine a "cuda" device with every CUDA call replaced.


def test_on_a_gpu_an_entry_counts_its_vram_between_requests_and_its_pinned_host_weights(stand_ins, gpu_engine):
    eng = gpu_engine(fp8_path="upcast")
    result = _submit(eng, "a").result(WAIT)
    (key, entry), = eng._pool.items()
    terms = entry.plan.breakdown
    assert entry.vram_bytes == terms["vram_between_requests"] > 0 and entry.host_bytes == terms["host_weights"]
    assert key.placement == (f"partial:{entry.plan.resident_blocks}" if entry.plan.placement == "partial" else entry.plan.placement)
    (model, precision), options = stand_ins.loads[0], stand_ins.options[0]
    assert (options.device, options.fp8_path, options.precision) == ("cuda", "upcast", "fp8")
    assert eng.calls["apply_plan"] == [entry.loaded] and result.stats["loaded"] is True
    assert eng.close() is True and eng.calls["free_memory"] == [torch.device("cuda")]


def test_on_a_gpu_a_load_that_fits_the_vram_beside_the_pool_exactly_evicts_nothing(stand_ins, gpu_engine):
    eng = gpu_engine(vram_budget="80GiB")
    _submit(eng, "fp8", precision="fp8").result(WAIT)
    (entry,) = eng._pool.values()
    need = eng._plan_for("demo", "bf16", SPECS["demo"], eng.request(prompt="x", seed=1, steps=3, width=64, height=64)).predicted_peak_vram_bytes
    entry.vram_bytes = eng.vram_budget - need  # the pool holds exactly what leaves room for the newcomer's peak
    _submit(eng, "bf16", precision="bf16").result(WAIT)
    assert [k.precision for k in eng._pool] == ["fp8", "bf16"]
    eng._evict(next(k for k in eng._pool if k.precision == "bf16"), "test")
    entry.vram_bytes += 1  # one byte over: the least recently used goes
    _submit(eng, "bf16 again", precision="bf16").result(WAIT)
    assert [k.precision for k in eng._pool] == ["bf16"]
    assert [e["why"] for e in eng.events if e["event"] == "evict"] == ["test", "budget"]
    eng.close()


def test_on_a_gpu_host_weights_count_against_the_host_budget(stand_ins, gpu_engine):
    eng = gpu_engine(vram_budget="80GiB")
    _submit(eng, "fp8", precision="fp8").result(WAIT)
    (entry,) = eng._pool.values()
    entry.host_bytes = eng.host_budget  # its pinned copies fill the host budget exactly (VRAM has room)
    _submit(eng, "bf16", precision="bf16").result(WAIT)  # a resident plan pins nothing more: it fits
    assert [k.precision for k in eng._pool] == ["fp8", "bf16"]
    eng._evict(next(k for k in eng._pool if k.precision == "bf16"), "test")
    entry.host_bytes += 1  # one byte over the host budget: the next load evicts it
    _submit(eng, "bf16 again", precision="bf16").result(WAIT)
    assert [k.precision for k in eng._pool] == ["bf16"]
    eng.close()


@pytest.mark.parametrize("compile_", [False, True])
def test_compile_applies_to_resident_pipelines_on_a_gpu_with_a_warm_up_only(stand_ins, gpu_engine, compile_, monkeypatch):
    import fp8pipe.compiling

    compiled = []
    monkeypatch.setattr(fp8pipe.compiling, "compile_transformer_", lambda model: compiled.append(model) or "blocks")
    eng = gpu_engine(vram_budget="80GiB", compile=compile_)
    eng.warmup = True  # the engine compiles only where a warm-up compiles before the first visitor
    _submit(eng, "big budget").result(WAIT)
    (entry,) = eng._pool.values()
    assert entry.plan.placement == "resident" and entry.plan.execution == ("compiled" if compile_ else "eager")
    assert bool(entry.applied.get("compiled", False)) is compile_
    assert compiled == ([entry.loaded.pipe.transformer] if compile_ else [])  # the pooled pipeline's own transformer
    eng.close()
    cold = gpu_engine(vram_budget="80GiB", compile=True)  # no warm-up: the first visitor would pay the compile
    _submit(cold, "no warm-up").result(WAIT)
    assert "compiled" not in next(iter(cold._pool.values())).applied
    cold.close()
    small = gpu_engine(vram_budget="256MiB", compile=True)  # too small for the demo resident: it streams
    small.warmup = True
    small.host_budget = 1 << 50
    _submit(small, "small budget").result(WAIT)
    (entry,) = small._pool.values()
    assert entry.plan.placement != "resident" and "compiled" not in entry.applied
    small.close()
    cpu = _engine(stand_ins, compile=True)
    _submit(cpu, "cpu").result(WAIT)
    assert "compiled" not in next(iter(cpu._pool.values())).applied
    cpu.close()


def test_the_fault_hook_sees_the_load_only_when_a_pipeline_is_loaded(stand_ins):
    seen = []
    with _engine(stand_ins) as eng:
        eng.fault_hook = seen.append
        _submit(eng, "first").result(WAIT)
        _submit(eng, "second").result(WAIT)
    assert seen == ["load", "encode", "denoise", "decode", "encode", "denoise", "decode"]


def test_a_load_is_counted_and_logged_with_its_seconds(stand_ins):
    stand_ins.load_seconds = 1.23456
    with _engine(stand_ins) as eng:
        for precision in ("fp8", "bf16", "fp8", "fp32"):
            _submit(eng, precision, precision=precision).result(WAIT)
        loads = [e for e in eng.events if e["event"] == "load"]
    assert eng.load_count == 3 and [e["key"]["precision"] for e in loads] == ["fp8", "bf16", "fp32"]
    assert {e["load_s"] for e in loads} == {1.235}


def test_a_pipeline_whose_plan_cannot_be_applied_is_dropped_and_its_memory_freed(stand_ins, monkeypatch):
    freed = []
    monkeypatch.setattr(engine_module, "free_memory", freed.append)
    monkeypatch.setattr(memory, "apply_plan", lambda loaded, plan: (_ for _ in ()).throw(RuntimeError("hooks failed")))
    with _engine(stand_ins) as eng:
        with pytest.raises(RuntimeError, match="hooks failed"):
            _submit(eng, "a").result(WAIT)
        assert not eng._pool and eng.load_count == 1 and freed == [torch.device("cpu")]
