"""Faults: cancel mid-run, out-of-memory in the decode, clients that vanish, a killed process."""

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import DEMO_SIDE, ROOT, demo_app_limits, free_port, hold_at_denoise
from gradio_client import Client
from PIL import Image

from fp8pipe.generation import generate
from fp8pipe.loader import LoadOptions, load_model
from fp8pipe.requests import GenerationRequest


def test_out_of_memory_in_the_decode_falls_back_to_a_tiled_decode(monkeypatch):
    loaded = load_model("demo", LoadOptions(device="cpu"))
    vae = loaded.pipe.vae
    original = vae.decode

    def decode_needing_tiles(*args, **kwargs):
        if not vae.use_tiling:
            raise torch.OutOfMemoryError("test: the full-frame decode does not fit")
        return original(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", decode_needing_tiles)
    result = generate(loaded, GenerationRequest.create(loaded.spec, "a red ball", seed=1, steps=2))
    assert result.stats["decode_fallback"] == "tiled" and vae.use_tiling
    assert result.image.size == (DEMO_SIDE, DEMO_SIDE)


def test_a_client_cancelling_mid_run_does_not_block_the_queue(advanced_app):
    url, state = advanced_app
    running, release = hold_at_denoise(state.engine)
    try:
        job = Client(url, verbose=False).submit(prompt="left behind", steps=2, api_name="/generate")
        assert running.wait(30)
        job.cancel()
    finally:
        state.engine.fault_hook = None
        release.set()
    image, stats = Client(url, verbose=False).predict(prompt="next visitor", steps=1, seed=4, api_name="/generate")
    assert Image.open(image).size == (DEMO_SIDE, DEMO_SIDE) and stats["seed"] == 4


def test_a_client_that_disappears_mid_run_does_not_block_the_queue(advanced_app):
    url, state = advanced_app
    running, release = hold_at_denoise(state.engine)
    gone = Client(url, verbose=False)
    try:
        gone.submit(prompt="a visitor who walks away", steps=2, api_name="/generate")
        assert running.wait(30)
        gone.close()  # the connection goes away while the job runs
    finally:
        state.engine.fault_hook = None
        release.set()
    image, _ = Client(url, verbose=False).predict(prompt="next visitor", steps=1, api_name="/generate")
    assert Image.open(image).format == "PNG"


def _start(port):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "Running on local URL" in line or time.monotonic() > deadline:
            break
    assert proc.poll() is None, "app.py exited"
    return proc


def test_the_app_restarts_cleanly_after_being_killed_mid_run():
    port = free_port()
    proc = _start(port)
    try:
        Client(f"http://127.0.0.1:{port}/", verbose=False).submit(prompt="interrupted", steps=demo_app_limits().max_steps, width=demo_app_limits().max_size, height=demo_app_limits().max_size, api_name="/generate")
        time.sleep(1.0)  # the job is running
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc = _start(port)  # same port, nothing to clean up by hand
        image, stats = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(prompt="after the restart", steps=1, api_name="/generate")
        assert Image.open(image).format == "PNG" and stats["model"] == "demo"
    finally:
        proc.kill()
        proc.wait(30)
