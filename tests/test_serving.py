"""The one request path (fp8pipe.serving): the CLI, the API, the app and the bench's served
rows all go through serve_request and report one stats schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DEMO_SIDE, start_app
from gradio_client import Client

from fp8pipe import bench, serving
from fp8pipe.cli import main


@pytest.fixture(scope="module")
def small_budget_app(tmp_path_factory):
    # An empty LoRA folder: with the demo's own (the default for the demo model) the app plans room
    # for per-request LoRAs, which the CLI, with none, does not.
    url, demo, state = start_app(["--vram", "1MiB", "--no-warmup", "--lora-dir", str(tmp_path_factory.mktemp("no-loras"))])
    yield url, demo, state
    demo.close()
    state.engine.close()


def cli_stats(tmp_path, capsys, *args) -> dict:
    assert main(["generate", "--prompt", "a red star", "--seed", "1", "--steps", "1", "--out", str(tmp_path / "x.png"), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def advanced_run_stats(demo) -> dict:
    """The stats the advanced page shows (its Generate event, called as Gradio calls it)."""
    run = next(d.fn for d in demo.fns.values() if d.name == "run")
    *_, last = run("a red star", "", "demo", "fp8", "auto", False, 1, 4.5, DEMO_SIDE, DEMO_SIDE, 1, False, 1, 3.0, [], None)
    return last[2][0]


def test_the_cli_json_the_api_stats_and_the_app_stats_have_the_same_keys(small_budget_app, tmp_path, capsys):
    url, demo, _ = small_budget_app
    _, api = Client(url, verbose=False).predict(prompt="a red star", seed=1, steps=1, api_name="/generate")
    app = advanced_run_stats(demo)
    cli = cli_stats(tmp_path, capsys, "--vram", "1MiB")
    assert list(cli) == list(api) == list(app) == list(serving.STATS_KEYS)


def test_cli_generate_runs_the_plan_the_app_chooses_for_the_same_budget_and_offloads(small_budget_app, tmp_path, capsys):
    url, _, _ = small_budget_app
    _, api = Client(url, verbose=False).predict(prompt="a red star", seed=1, steps=1, api_name="/generate")
    cli = cli_stats(tmp_path, capsys, "--vram", "1MiB")
    assert cli["plan"] == api["plan"]
    assert cli["plan"]["placement"] != "resident" and (tmp_path / "x.png").exists()


def test_the_bench_served_rows_and_the_app_call_the_same_function(small_budget_app, monkeypatch):
    url, _, _ = small_budget_app
    calls = []
    original = serving.serve_request

    def spy(engine, request, model, precision, *args, **kwargs):
        calls.append(kwargs.get("inline", False))
        return original(engine, request, model, precision, *args, **kwargs)

    monkeypatch.setattr(serving, "serve_request", spy)
    Client(url, verbose=False).predict(prompt="a red star", seed=1, steps=1, api_name="/generate")
    assert calls == [False]  # the app: queued for the engine's worker
    row = bench.run_case(bench.Case("tiny", "fp8", DEMO_SIDE, 1, 1.0, placement="served"), bench.BenchOptions(device="cpu", repeats=1, warmup=1, min_warmup_s=0))
    assert row["status"] == "ok", row.get("error")
    assert calls == [False, True, True]  # the bench: its warm-up and its one timed image, inline
    assert list(row["served_stats"]) == list(serving.STATS_KEYS) and row["step_time_s"] > 0


def test_the_seam_and_the_request_path_import_without_torch():
    code = "import sys, fp8pipe.seam, fp8pipe.serving, fp8pipe.zerogpu; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
