"""`python -m fp8pipe check` on a machine without CUDA: the GPU stages say why they were
skipped, the tests stage shows `pytest -m gpu` collecting its tests and skipping them, and
every stage writes its JSON and markdown report with the machine's facts and the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fp8pipe.check import runner, stages

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the behaviour without a GPU")


def test_gpu_stages_are_skipped_with_the_reason_and_reports_are_written(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, "-m", "fp8pipe", "check", "--stages", "probe,kiosk", "--out", str(out), "--limit-s", "120"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for stage in ("probe", "kiosk", "summary"):
        report = json.loads((out / f"{stage}.json").read_text())
        assert report["environment"]["torch"] == torch.__version__
        assert "python -m fp8pipe check --stages probe,kiosk" in report["command"]
        assert (out / f"{stage}.md").read_text().startswith(f"# fp8pipe check: {stage}")
    probe = json.loads((out / "probe.json").read_text())
    assert probe["status"] == "skipped" and "needs a CUDA GPU" in probe["summary"][0]
    assert "needs a CUDA GPU" in done.stdout


def test_the_tests_stage_collects_the_gpu_tests_and_skips_them():
    report = stages.stage_tests({"budget_s": 240})
    tests = report["data"]["tests"]
    assert report["status"] == "skipped"
    assert len(tests) >= 5 and all(t["outcome"] == "skipped" for t in tests)
    assert all("needs a CUDA GPU" in t["message"] for t in tests)


def test_a_stage_that_writes_no_report_is_a_failure_not_a_pass(tmp_path, monkeypatch):
    class Exited:
        returncode, stdout, stderr = 1, "", "boom"

    monkeypatch.setattr(runner.subprocess, "run", lambda *a, **k: Exited())
    summary = runner.run_check(["tests"], tmp_path, {"command": "x"}, limit_s=60, log=lambda _: None)
    assert summary["status"] == "failed"
    assert json.loads((tmp_path / "tests.json").read_text())["status"] == "failed"


def test_a_stage_past_its_limit_is_reported_as_timeout(tmp_path, monkeypatch):
    def too_slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"], output=b"half way")

    monkeypatch.setattr(runner.subprocess, "run", too_slow)
    summary = runner.run_check(["bench"], tmp_path, {"command": "x"}, limit_s=45, log=lambda _: None)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert summary["status"] == "failed" and report["status"] == "timeout"
    assert "45 s limit" in report["summary"][0]


def test_a_whole_check_budget_is_shared_by_the_stages_usual_lengths():
    every = list(runner.STAGES)
    shares = [runner.stage_limit(s, every[i:], 540.0, 540.0) for i, s in enumerate(every)]
    # with every stage using its whole share, the shares add up to the budget exactly
    left, spent = 540.0, []
    for i, stage in enumerate(every):
        spent.append(runner.stage_limit(stage, every[i:], left, 540.0))
        left -= spent[-1]
    assert sum(spent) == pytest.approx(540.0)
    assert shares[0] == pytest.approx(540.0 * runner.STAGE_WEIGHTS["tests"] / sum(runner.STAGE_WEIGHTS.values()))
    # time a stage leaves unused passes on; no stage is given more than the per-stage limit
    assert runner.stage_limit("soak", ["soak"], 300.0, 540.0) == 300.0
    assert runner.stage_limit("soak", ["soak"], 900.0, 540.0) == 540.0
    assert runner.stage_limit("bench", ["bench"], None, 123.0) == 123.0
    # a short stage still gets a usable slot while the budget has one
    assert runner.stage_limit("probe", ["probe", "kiosk"], 120.0, 540.0) == runner.MIN_STAGE_S
    assert runner.stage_limit("probe", ["probe", "kiosk"], 20.0, 540.0) == 20.0


def test_stages_the_budget_cannot_reach_are_reported_not_run(tmp_path, monkeypatch):
    class Ran:
        returncode, stdout, stderr = 0, "", ""

    def fake_stage(child, timeout, **kwargs):
        stage = child[child.index("--stages") + 1]
        assert timeout <= 100
        runner.write_report(tmp_path, stage, {"stage": stage, "status": "ok", "summary": [], "seconds": 1.0, "environment": {}})
        return Ran()

    clock = iter([0.0, 0.0, 0.0, 95.0, 95.0, 95.0, 95.0, 95.0, 95.0, 95.0, 95.0, 95.0])
    monkeypatch.setattr(runner.time, "perf_counter", lambda: next(clock, 95.0))
    monkeypatch.setattr(runner.subprocess, "run", fake_stage)
    summary = runner.run_check(["tests", "probe", "soak"], tmp_path, {"command": "x"}, limit_s=540, log=lambda _: None, total_s=100)
    statuses = {r["stage"]: r["status"] for r in summary["stages"]}
    assert statuses == {"tests": "ok", "probe": "not run", "soak": "not run"}
    assert summary["status"] == "failed"
    assert "--total-s budget" in json.loads((tmp_path / "soak.json").read_text())["summary"][0]


@pytest.mark.parametrize("argv, message", [(["--stages", "tests,warp"], "--stages takes"), (["--soak-requests", "0"], "--soak-requests"), (["--limit-s", "5"], "--limit-s"), (["--total-s", "10"], "--total-s")])
def test_bad_check_options_name_the_option(argv, message):
    done = subprocess.run([sys.executable, "-m", "fp8pipe", "check", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr


def test_device_wheels_script_names_exactly_what_the_gpu_image_lacks():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "device_wheels.sh").read_text()
    pinned = [line.split('"')[1] for line in script.splitlines() if line.strip().startswith('"') and "==" in line]
    assert [p.split("==")[0] for p in pinned] == ["diffusers", "importlib_metadata", "lazy-importer", "xformers"]
    assert "--only-binary=:all:" in script and "--python-version 3.12" in script and "64 * 1048576" in script


def test_device_wheels_resolve_and_stay_under_64_mib(tmp_path):
    import os
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "device_wheels.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "whl")], capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-2000:]
    wheels = sorted(p.name for p in (tmp_path / "whl").glob("*.whl"))
    assert len(wheels) == 4 and sum(p.stat().st_size for p in (tmp_path / "whl").iterdir()) < 64 * 2**20


def test_random_loader_builds_a_known_family_as_the_engine_asks_and_says_its_weights_are_random():
    from fp8pipe.fp8 import FP8Linear
    from fp8pipe.loader import LoadOptions
    from fp8pipe.randomload import random_loader

    loaded = random_loader("demo", LoadOptions(precision="fp8", t5="drop", device="cpu"))
    assert loaded.source_kind == "random" and loaded.random_weights
    assert loaded.pipe.text_encoder_3 is None and loaded.dtypes["t5"] == "drop"
    assert loaded.fp8.quantized and loaded.fp8.fp8_bytes > 0
    assert any(isinstance(m, FP8Linear) for m in loaded.pipe.transformer.modules())
    with pytest.raises(ValueError, match="known families only"):
        random_loader("/some/folder", LoadOptions(device="cpu"))
