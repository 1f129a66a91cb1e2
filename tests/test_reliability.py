"""Soak and load, short versions (the full runs: `python -m fp8pipe soak`, `... load`; README)."""

import json
import os
import subprocess
import sys
import time

from conftest import ROOT, free_port

from fp8pipe.soak import run_load, run_soak

SOAK_REQUESTS = int(os.environ.get("FP8PIPE_SOAK_REQUESTS", "120"))
LOAD_CLIENTS = int(os.environ.get("FP8PIPE_LOAD_CLIENTS", "12"))
LOAD_REQUESTS = int(os.environ.get("FP8PIPE_LOAD_REQUESTS", "3"))
LOAD_QUEUE = os.environ.get("FP8PIPE_LOAD_QUEUE", "4")


def test_soak_memory_grows_at_most_5_percent_after_warm_up_and_every_request_is_accounted_for():
    result = run_soak(requests=SOAK_REQUESTS, warmup=SOAK_REQUESTS // 4, steps=2, device="cpu")
    assert result["failed"] == 0
    assert result["ok"] + result["cancelled"] + result["invalid"] == SOAK_REQUESTS
    invalid = {i for i in range(SOAK_REQUESTS) if i % 25 == 24}
    assert result["invalid"] == len(invalid)
    assert result["cancelled"] == len({i for i in range(SOAK_REQUESTS) if i % 10 == 9} - invalid)
    assert result["rss_growth_pct"] <= 5.0, result


def test_concurrent_clients_each_complete_or_get_the_queue_full_error_and_none_hangs(tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--queue-size", LOAD_QUEUE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "Running on local URL" in line or time.monotonic() > deadline:
                break
        result = run_load(f"http://127.0.0.1:{port}/", clients=LOAD_CLIENTS, requests=LOAD_REQUESTS, steps=2)
    finally:
        proc.terminate()
        proc.wait(30)
    out = os.environ.get("FP8PIPE_LOAD_OUT") or str(tmp_path / "load.json")
    from fp8pipe.soak import run_facts

    with open(out, "w") as f:
        command = (
            f"FP8PIPE_LOAD_CLIENTS={LOAD_CLIENTS} FP8PIPE_LOAD_REQUESTS={LOAD_REQUESTS} FP8PIPE_LOAD_QUEUE={LOAD_QUEUE} "
            f"FP8PIPE_LOAD_OUT={out} python -m pytest tests/test_reliability.py -k concurrent"
        )
        json.dump({**run_facts(command), "queue_size": int(LOAD_QUEUE), **result}, f, indent=2)
    assert result["total"] == LOAD_CLIENTS * LOAD_REQUESTS
    assert result["hung"] == 0 and result["errors"] == 0, result["error_messages"]
    assert result["completed"] + result["queue_full"] == result["total"]
    assert result["completed"] > 0
