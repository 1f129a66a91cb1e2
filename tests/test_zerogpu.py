"""ZeroGPU, through gradio_client against `python app.py` under a double of `spaces` that forks
a child per GPU call as the real package does (tests/zerogpu_double), and the duration each
call asks for."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_SPEC, free_port
from gradio_client import Client
from PIL import Image

from fp8pipe import zerogpu

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = Path(__file__).resolve().parent / "zerogpu_double"


def start(tmp_path, flag: str, script: str = "app.py"):
    port, log = free_port(), tmp_path / "durations.jsonl"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": os.pathsep.join([str(DOUBLE), str(ROOT)]),
        "SPACES_ZERO_GPU": flag,
        "SPACES_DOUBLE_LOG": str(log),
    }
    proc = subprocess.Popen([sys.executable, script, "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        if "Running on local URL" in line or time.monotonic() > deadline:
            break
    assert proc.poll() is None, "app.py exited"
    return proc, f"http://127.0.0.1:{port}/", log


@pytest.fixture(scope="module")
def zero_app(tmp_path_factory):
    proc, url, log = start(tmp_path_factory.mktemp("zerogpu"), "true", str(DOUBLE / "serve_app.py"))
    yield url, log
    proc.terminate()
    proc.wait(30)


def durations(log: Path) -> list[float]:
    return [json.loads(line)["duration"] for line in log.read_text().splitlines()] if log.exists() else []


def test_an_image_comes_back_from_the_forked_gpu_call(zero_app):
    url, _ = zero_app
    image, stats = Client(url, verbose=False).predict(prompt="a red star", seed=1, steps=2, api_name="/generate")
    assert Image.open(image).format == "PNG" and stats["steps"] == 2 and stats["model"] == "demo"


def test_progress_events_arrive_from_the_child(zero_app):
    url, _ = zero_app
    job = Client(url, verbose=False).submit(prompt="a red star", seed=1, steps=3, api_name="/generate")
    job.result(timeout=120)
    steps = [out[1]["progress"]["step"] for out in job.outputs() if isinstance(out[1], dict) and "progress" in out[1]]
    assert steps == [1, 2, 3]


def test_a_cancel_frees_the_next_request(zero_app):
    url, _ = zero_app
    client = Client(url, verbose=False)
    job = client.submit(prompt="a red star", steps=50, api_name="/generate")
    deadline = time.monotonic() + 120
    while not any(isinstance(out[1], dict) and "progress" in out[1] for out in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    job.cancel()
    image, stats = client.predict(prompt="a blue circle", steps=1, api_name="/generate")
    assert Image.open(image).format == "PNG" and stats["steps"] == 1


def test_an_exception_in_the_child_comes_back_as_one_clear_error_and_the_app_keeps_serving(zero_app):
    url, _ = zero_app
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="RuntimeError: the GPU failed in this test"):
        client.predict(prompt="a kaboom star", steps=1, api_name="/generate")
    image, _ = client.predict(prompt="a red star", steps=1, api_name="/generate")
    assert Image.open(image).format == "PNG"


def test_three_requests_in_a_row_work(zero_app):
    url, _ = zero_app
    client = Client(url, verbose=False)
    seeds = [client.predict(prompt="a green square", seed=seed, steps=1, api_name="/generate")[1]["seed"] for seed in (1, 2, 3)]
    assert seeds == [1, 2, 3]


def test_the_demo_asks_for_under_a_minute_and_more_for_more_steps_and_pixels(zero_app):
    url, log = zero_app
    client = Client(url, verbose=False)
    before = len(durations(log))
    for steps, side in ((1, 64), (8, 64), (8, 128)):
        client.predict(prompt="a red star", seed=1, steps=steps, width=side, height=side, api_name="/generate")
    asked = durations(log)[before:]
    assert len(asked) == 3 and asked[0] < asked[1] < asked[2] < 60


def test_the_duration_is_the_prediction_with_margin_within_floor_and_ceiling():
    small = zerogpu.duration_seconds(DEMO_SPEC, 4, 64, 64)
    assert small == max(zerogpu.FLOOR_S, zerogpu.MARGIN * zerogpu.predicted_seconds(DEMO_SPEC, 4, 64, 64))
    assert zerogpu.duration_seconds(DEMO_SPEC, 5, 64, 64) > small and zerogpu.duration_seconds(DEMO_SPEC, 4, 80, 64) > small
    assert zerogpu.duration_seconds(DEMO_SPEC, 150, 4096, 4096, batch=8) == zerogpu.CEILING_S
    assert zerogpu.duration_seconds(DEMO_SPEC, 4, 64, 64, batch=2) > small


def test_start_up_with_the_flag_off_imports_neither_spaces_nor_ray(tmp_path):
    code = (
        "import sys, app; "
        f"demo, state = app.create_app(app.parse_args(['--port', '{free_port()}', '--no-warmup'])); "
        "print(sorted(m for m in ('spaces', 'ray') if m in sys.modules), state.gpu_stream)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(DOUBLE), str(ROOT)]), "SPACES_ZERO_GPU": ""}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[] None"


@pytest.fixture
def double(monkeypatch):
    """The double, imported as the app would with ZeroGPU on."""
    import importlib.util

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    spec = importlib.util.spec_from_file_location("spaces_double", DOUBLE / "spaces" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_double_forks_so_work_handed_to_a_thread_of_the_parent_never_runs_in_the_call(double):
    import queue
    import threading

    jobs: queue.Queue = queue.Queue()

    def worker():  # a worker thread of the parent, like the engine's
        while True:
            jobs.get()()

    threading.Thread(target=worker, daemon=True).start()

    @double.GPU(duration=5)
    def through_a_worker_thread():
        done = threading.Event()
        jobs.put(done.set)
        return done.wait(1)

    @double.GPU(duration=5)
    def pid():
        return os.getpid()

    assert through_a_worker_thread() is False  # the job waited for a thread the child does not have
    first = pid()
    assert first != os.getpid() and pid() == first  # a child process, reused while idle


def test_the_double_streams_a_generators_items_and_returns_an_exception_as_one_error(double):
    import gradio as gr

    @double.GPU
    def count(n):
        for i in range(n):
            yield os.getpid(), i

    @double.GPU
    def fail():
        raise ValueError("broken in the child")

    items = list(count(3))
    assert [i for _, i in items] == [0, 1, 2] and {p for p, _ in items} != {os.getpid()}
    with pytest.raises(gr.Error, match="ValueError"):
        fail()


@pytest.mark.parametrize(
    "row, model, steps, side",
    [
        ("demo, 8 steps, 64 px", "demo", 8, 64),
        ("SD3.5 Large Turbo, 4 steps, 1024 px", "sd3.5-large-turbo", 4, 1024),
        ("SD3.5 Medium, 28 steps, 1024 px", "sd3.5-medium", 28, 1024),
        ("SD3.5 Large, 28 steps, 1024 px", "sd3.5-large", 28, 1024),
    ],
)
def test_the_readmes_duration_table_is_what_the_app_asks_for(row, model, steps, side):
    from fp8pipe.specs import SPECS

    spec = SPECS[model]
    asked = zerogpu.duration_seconds(spec, steps, side, side, 1, spec.guidance)
    assert f"| {row} | {asked:.1f} s |" in (ROOT / "README.md").read_text()
