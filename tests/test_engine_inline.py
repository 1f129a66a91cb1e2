"""The engine's inline path (`run`: the job in the caller's thread, no worker) gives what a
queued job gets: progress with previews, cancel between steps, the out-of-memory step-down."""

from __future__ import annotations

import threading

import pytest
import torch

from fp8pipe.engine import Cancelled, Engine
from fp8pipe.seam import GenerationService

SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def engine():
    eng = Engine(device="cpu", warmup=False)
    yield eng
    eng.close()


def test_an_inline_job_runs_in_the_callers_thread_with_progress_and_previews(engine):
    seen = []
    result = engine.run(engine.request(prompt="a red star", seed=1, **SMALL), on_progress=lambda p: seen.append((p.step, p.preview is not None, threading.current_thread())), preview=True)
    assert [(step, preview) for step, preview, _ in seen] == [(1, True), (2, True)]
    assert {thread for *_, thread in seen} == {threading.current_thread()}
    assert engine._worker is None  # no worker thread was needed
    assert result.image.size == (64, 64) and result.stats["plan"]["placement"] == "resident"


def test_an_inline_job_stops_between_steps_on_cancel(engine):
    box = {}

    def on_progress(p):
        box.setdefault("steps", []).append(p.step)
        box["job"].cancel()

    box["job"] = job = engine.prepare(engine.request(prompt="cancel me", seed=2, steps=5, width=64, height=64), on_progress=on_progress)
    with pytest.raises(Cancelled):
        engine.run_job(job)
    assert box["steps"] == [1]
    assert engine.run(engine.request(prompt="after", seed=3, **SMALL)).image is not None


def test_an_inline_job_steps_down_after_an_out_of_memory_like_a_queued_one():
    with Engine(device="cpu", warmup=False) as eng:
        raised = []

        def oom_once_in_denoise(stage):
            if stage == "denoise" and not raised:
                raised.append(stage)
                raise torch.OutOfMemoryError("injected by the test")

        eng.fault_hook = oom_once_in_denoise
        result = eng.run(eng.request(prompt="oom", seed=4, **SMALL))
        fallback = result.stats["fallback"]
        assert fallback["stage"] == "denoise" and fallback["to"]["level"] > fallback["from"]["level"]
        assert result.stats["plan"] == fallback["to"]


def test_the_engine_satisfies_the_service_protocol(engine):
    assert isinstance(engine, GenerationService)


def test_a_cpu_engine_with_a_vram_budget_reports_the_plan_for_that_budget_and_offloads():
    with Engine(device="cpu", warmup=False, vram_budget="1MiB") as eng:
        result = eng.run(eng.request(prompt="a red star", seed=5, **SMALL))
    plan = result.stats["plan"]
    assert plan["placement"] != "resident" and plan["level"] > 0
    assert result.image.size == (64, 64)
