"""The engine as Ray Serve replicas (fp8pipe.cluster), on one local cluster for the whole module.

The cluster is started here on loopback with 2 CPUs and no dashboard; the deployment has two
demo-model replicas (1 torch thread each), one job per replica and one job allowed to wait.
"""

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, start_app
from gradio_client import Client
from PIL import Image

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's switch for a loopback-only node (127.0.0.1)
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": "0.05",  # as the app's front (fp8pipe.cluster.backend)
}
LONG = dict(steps=50, width=256, height=256)  # seconds on one thread: long enough to cancel or kill mid-run
BOUND_S = 120  # nothing here may wait longer than this


@pytest.fixture(scope="module")
def cluster():
    """(backend, address): a RayBackend on two replicas of the demo model."""
    saved = {k: os.environ.get(k) for k in [*RAY_ENV, "RAY_AUTH_MODE"]}  # connect() may set RAY_AUTH_MODE
    os.environ.update(RAY_ENV)
    import ray
    from ray import serve

    from fp8pipe.cluster.backend import RayBackend
    from fp8pipe.cluster.options import ServeOptions
    from fp8pipe.cluster.replica import deploy

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        handle = deploy(ServeOptions(replicas=2, threads=1, max_queued_requests=1), model="demo", preset="cpu-demo", device="cpu")
        yield RayBackend(handle, address), address
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def started(job, timeout=BOUND_S):
    """Wait until `job` has made its first step on a replica."""
    deadline = time.monotonic() + timeout
    while job.step == 0 and not job.done():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    return job


def running_replicas(app="fp8pipe") -> int:
    from ray import serve

    status = serve.status().applications[app]
    return sum(n for d in status.deployments.values() for state, n in d.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def test_two_replicas_serve_and_an_image_is_bit_identical_to_the_in_process_engines(cluster, tmp_path):
    backend, _ = cluster
    fields = dict(prompt="a red circle on a white background", seed=5, steps=20, width=128, height=128)
    request = backend.request("demo", **fields)
    jobs = [started(backend.submit(request)), backend.submit(request)]  # the second while the first runs: both replicas serve
    results = [job.result(BOUND_S) for job in jobs]
    assert len({r.stats["replica"] for r in results}) == 2
    # The in-process engine (`generate`) with the replicas' one torch thread: a CPU's float sums
    # depend on how many threads split them, so the thread count is held equal.
    out = tmp_path / "local.png"
    argv = ["generate", "--device", "cpu", "--out", str(out), *(f"--{k}={v}" for k, v in fields.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "fp8pipe", *argv], env=env, check=True, capture_output=True, timeout=BOUND_S, cwd=ROOT)
    local = Image.open(out)
    assert all(r.image.tobytes() == local.convert("RGB").tobytes() for r in results)
    assert results[0].parameters == local.text["parameters"]


def test_progress_and_previews_stream_through_the_one_request_path(cluster):
    from fp8pipe.seam import Progress, Result
    from fp8pipe.serving import serve_request

    backend, _ = cluster
    request = backend.request("demo", prompt="a blue square", seed=1, steps=6)
    items = list(serve_request(backend, request, "demo", "fp8", preview=True))
    steps = [i for i in items if isinstance(i, Progress)]
    assert [p.step for p in steps] == [1, 2, 3, 4, 5, 6] and all(p.total == 6 for p in steps)
    assert all(isinstance(p.preview, Image.Image) for p in steps)
    assert isinstance(items[-1], Result) and items[-1].image.size == (request.width, request.height)


def test_a_cancel_mid_run_reaches_the_replica_and_frees_it(cluster):
    import ray

    from fp8pipe.seam import Cancelled, Progress
    from fp8pipe.serving import serve_request

    backend, _ = cluster
    long = backend.request("demo", prompt="a red circle", seed=2, **LONG)
    stream = serve_request(backend, long, "demo", "fp8")
    first = next(item for item in stream if isinstance(item, Progress))
    assert first.step < long.steps
    stream.close()  # what the app does when the browser cancels or goes away
    # The replica that ran it stops at its next step: no job left on it.
    deadline = time.monotonic() + BOUND_S
    ongoing = None
    for name in ray.util.list_named_actors(all_namespaces=True):
        if name["name"].startswith("SERVE_REPLICA::fp8pipe#"):
            actor = ray.get_actor(name["name"], namespace=name["namespace"])
            while (ongoing := ray.get(actor.get_num_ongoing_requests.remote())) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ongoing == 0
    # Both replicas take the next two jobs; the one that ran the cancelled job says so.
    request = backend.request("demo", prompt="a red circle", seed=3, steps=20, width=128, height=128)
    jobs = [started(backend.submit(request)), backend.submit(request)]
    results = [job.result(BOUND_S) for job in jobs]
    assert len({r.stats["replica"] for r in results}) == 2
    assert sum(r.stats["replica_jobs"]["cancelled"] for r in results) >= 1
    with pytest.raises(Cancelled):
        job = started(backend.submit(long))
        job.cancel()
        job.result(BOUND_S)


def test_a_full_queue_gives_the_explicit_error_and_nothing_hangs(cluster):
    from fp8pipe.seam import Cancelled, QueueFull

    backend, _ = cluster
    long = backend.request("demo", prompt="a red circle", seed=4, **LONG)
    running = [started(backend.submit(long)) for _ in range(2)]  # one per replica
    extra = [backend.submit(long), backend.submit(long)]  # one may wait; the other finds the queue full
    deadline = time.monotonic() + BOUND_S
    while not any(job.done() for job in extra):
        assert time.monotonic() < deadline, "neither extra job was refused"
        time.sleep(0.02)
    refused = next(job for job in extra if job.done())
    waiting = next(job for job in extra if job is not refused)
    with pytest.raises(QueueFull, match=r"the queue is full: 1 jobs are already waiting for a replica \(at most 1\); try again shortly"):
        refused.result(BOUND_S)
    for job in [*running, waiting]:
        job.cancel()
    for job in [*running, waiting]:
        with pytest.raises(Cancelled):
            job.result(BOUND_S)
    assert backend.run(backend.request("demo", prompt="a dot", seed=1, steps=2)).image is not None


def test_a_replica_killed_mid_request_is_retried_and_the_deployment_recovers(cluster):
    import ray

    from fp8pipe.cluster.backend import ReplicaLost

    backend, _ = cluster
    job = started(backend.submit(backend.request("demo", prompt="a red circle", seed=6, steps=30, width=128, height=128)))
    killed = job.replica
    ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
    try:
        result = job.result(BOUND_S)
        assert job.attempts == 2 and result.stats["replica"] != killed  # retried on the other replica
    except ReplicaLost as e:  # or one clear error
        assert "the replica running this job stopped" in str(e)
    deadline = time.monotonic() + BOUND_S
    while running_replicas() < 2:
        assert time.monotonic() < deadline, "the deployment did not come back to 2 replicas"
        time.sleep(0.5)
    after = backend.run(backend.request("demo", prompt="a blue square", seed=7, steps=4))
    assert after.stats["replica"] != killed


def test_app_with_ray_serves_through_gradio_client_with_the_kiosk_limits(cluster, kiosk_preset_file):
    _, address = cluster
    url, demo, state = start_app(["--kiosk", "--preset", str(kiosk_preset_file), "--ray", address])
    try:
        from fp8pipe.cluster.backend import RayBackend

        assert isinstance(state.engine, RayBackend) and state.slots == 2  # one generation per replica at once
        client = Client(url, verbose=False)
        image, stats = client.predict(prompt="a red circle", seed=9, api_name="/generate")
        assert Image.open(image).size == (64, 64) and stats["steps"] == 2 and stats["seed"] == 9  # the kiosk preset's defaults
        with pytest.raises(Exception, match="steps: must be a whole number from 1 to 4"):
            client.predict(prompt="a red circle", steps=10, api_name="/generate")
        with pytest.raises(Exception, match="try a different idea"):
            client.predict(prompt="a nude statue", api_name="/generate")
    finally:
        demo.close()
        state.engine.close()


def test_a_cluster_without_the_application_says_how_to_deploy_it(cluster):
    from fp8pipe.cluster.backend import ClusterUnreachable, app_handle

    _, address = cluster
    with pytest.raises(ClusterUnreachable, match=f"the Ray cluster at {address} has no 'elsewhere' application .*python -m fp8pipe serve --replicas N --address {address}"):
        app_handle(address, name="elsewhere")
