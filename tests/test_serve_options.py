"""The scale-out's settings, errors and start-up, without a Ray cluster (fp8pipe.cluster)."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port

from fp8pipe.cluster.options import ServeOptions, deployment_options, wedged
from fp8pipe.presets import PresetError, parse_preset


def test_a_fixed_count_runs_one_job_per_replica_with_a_bounded_queue_and_one_cpu_each():
    opts = deployment_options(ServeOptions(replicas=3, max_queued_requests=5))
    assert opts["num_replicas"] == 3 and opts["max_ongoing_requests"] == 1 and opts["max_queued_requests"] == 5
    assert opts["ray_actor_options"] == {"num_cpus": 1} and "autoscaling_config" not in opts


def test_a_gpu_cluster_asks_one_gpu_per_replica_and_autoscaling_takes_min_max_and_target():
    opts = deployment_options(ServeOptions(replicas=2, min_replicas=1, max_replicas=8, target_ongoing_requests=2, gpus=1.0))
    assert opts["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1.0} and "num_replicas" not in opts
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "initial_replicas": 2, "target_ongoing_requests": 2}


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"replicas": 0}, "replicas: must be a whole number from 1 to 1024; got 0"),
        ({"max_queued_requests": 0}, "max_queued_requests: must be a whole number from 1"),
        ({"min_replicas": 1}, "give both to autoscale, or neither"),
        ({"replicas": 9, "min_replicas": 1, "max_replicas": 8}, "replicas: 9 must lie from min_replicas 1 to max_replicas 8"),
        ({"gpus": -1.0}, "gpus: must be a number from 0 to 8"),
        ({"threads": 1.5}, "threads: must be a whole number"),
    ],
)
def test_bad_serve_options_name_the_field_and_the_allowed_range(fields, message):
    with pytest.raises(ValueError, match=message):
        ServeOptions(**fields)


def test_a_replica_is_unhealthy_when_its_worker_stopped_or_a_job_stalled():
    assert wedged(True, True, 5.0, 600.0) is None
    assert wedged(True, False, 10_000.0, 600.0) is None  # idle for long is fine
    assert "worker thread has stopped" in wedged(False, False, 0.0, 600.0)
    assert "made no step for 601 s (limit 600 s): the worker is wedged" in wedged(True, True, 601.0, 600.0)


PRESET = 'name = "p"\nqueue_size = 4\n[serve]\nreplicas = 2\nmin_replicas = 1\nmax_replicas = 6\ntarget_ongoing_requests = 1.5\n'


def test_the_presets_serve_table_sets_the_replicas_and_flags_override_it():
    from fp8pipe.cli import build_parser
    from fp8pipe.cluster.command import serve_options

    preset = parse_preset(PRESET, "p.toml")
    opts = serve_options(build_parser().parse_args(["serve"]), preset)
    assert (opts.replicas, opts.min_replicas, opts.max_replicas, opts.target_ongoing_requests, opts.max_queued_requests) == (2, 1, 6, 1.5, 4)
    opts = serve_options(build_parser().parse_args(["serve", "--replicas", "3", "--max-replicas", "9", "--max-queued", "7"]), preset)
    assert (opts.replicas, opts.max_replicas, opts.max_queued_requests) == (3, 9, 7)


def test_a_bad_serve_table_in_a_preset_names_the_key():
    with pytest.raises(PresetError, match=r"\[serve\]: unknown key 'replica'"):
        parse_preset('name = "p"\n[serve]\nreplica = 2\n', "p.toml")
    with pytest.raises(PresetError, match=r"\[serve\]: replicas = 0 is not allowed; it must be a whole number from 1 to 1024"):
        parse_preset('name = "p"\n[serve]\nreplicas = 0\n', "p.toml")


def test_the_serve_config_file_in_the_repo_is_valid_and_builds_the_application():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from fp8pipe.cluster.replica import build_app

    config = ServeDeploySchema.parse_obj(yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text()))
    (app,) = config.applications
    assert app.name == "fp8pipe" and app.import_path == "fp8pipe.cluster.replica:build_app"
    built = build_app(app.args)
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="unknown args \\['replica'\\]"):
        build_app({"replica": 2})


RAY_ENV = ("RAY_USAGE_STATS_ENABLED", "RAY_SERVE_LOG_TO_STDERR", "RAY_AUTH_MODE", "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S")


def closed_address(monkeypatch) -> str:
    for name in RAY_ENV:  # connect() sets them: put back after the test
        monkeypatch.delenv(name, raising=False)
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def test_an_unreachable_cluster_gives_one_message_naming_the_address_and_ray_start(capsys, monkeypatch):
    import app as webapp

    address = closed_address(monkeypatch)
    assert webapp.main(["--ray", address, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot reach a Ray cluster at {address}" in err and "`ray start --head`" in err and "Traceback" not in err


def test_serve_on_an_unreachable_cluster_says_the_same(capsys, monkeypatch):
    from fp8pipe.cli import main

    address = closed_address(monkeypatch)
    assert main(["serve", "--address", address]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot reach a Ray cluster at {address}" in err and "`ray start --head`" in err


def test_without_the_flag_the_app_starts_without_importing_ray():
    code = (
        "import sys, app\n"
        f"demo, state = app.create_app(app.parse_args(['--no-warmup', '--port', '{free_port()}']))\n"
        "state.engine.close()\n"
        "assert type(state.engine).__name__ == 'Engine'\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_readme_table_is_the_committed_serve_benchmarks():
    import re

    block = re.search(r"<!-- serve-table -->\n(.*?)\n<!-- /serve-table -->", (ROOT / "README.md").read_text(), re.S).group(1)
    committed = [line for line in (ROOT / "bench" / "results" / "serve-cpu.md").read_text().splitlines() if line.startswith("|")]
    assert block.splitlines() == committed


def test_the_committed_serve_benchmark_has_a_row_per_replica_count():
    import json

    report = json.loads((ROOT / "bench" / "results" / "serve-cpu.json").read_text())
    assert [r["replicas"] for r in report["rows"]] == [1, 2]
    assert all({"images_per_s", "p50_s", "p95_s"} <= set(r) for r in report["rows"])
    assert report["command"].startswith("python -m fp8pipe serve --bench") and "ray" in report["versions"] and "cpu" in report["machine"]


@pytest.fixture(scope="module")
def replica():
    """The deployment's class itself, outside Ray (its own engine, this process's threads)."""
    from fp8pipe.cluster.replica import EngineReplica

    made = EngineReplica.func_or_class(model="demo", preset="cpu-demo", device="cpu", threads=None, warmup=False)
    yield made
    made.engine.close()


def streamed(replica, **fields) -> list:
    """Everything the replica's generate() yields for one request."""
    import asyncio

    async def collect():
        return [item async for item in replica.generate(replica.engine.request("demo", prompt="a dot", seed=1, **fields))]

    return asyncio.run(collect())


def test_a_replica_streams_its_name_each_step_then_the_result(replica):
    from fp8pipe.seam import Progress, Result

    items = streamed(replica, steps=3)
    assert items[0] == {"replica": "local"}
    assert [i.step for i in items[1:-1] if isinstance(i, Progress)] == [1, 2, 3]
    assert isinstance(items[-1], Result) and items[-1].stats["replica"] == "local"


def test_a_stream_closed_mid_run_cancels_the_replicas_job_and_leaves_it_idle(replica):
    import asyncio

    from fp8pipe.seam import Progress

    async def cancel_after_first_step():
        stream = replica.generate(replica.engine.request("demo", prompt="a dot", seed=1, steps=50, width=256, height=256))
        async for item in stream:
            if isinstance(item, Progress):
                break
        await stream.aclose()  # what Serve does when the client cancels

    before = replica.cancelled
    asyncio.run(cancel_after_first_step())
    assert replica.cancelled == before + 1 and not replica._running
    assert replica.engine.describe()["queued"] == 0
    assert streamed(replica, steps=2)[-1].image is not None  # the worker is free for the next job


def test_a_replica_whose_engine_worker_stopped_fails_its_health_check():
    from fp8pipe.cluster.replica import EngineReplica

    made = EngineReplica.func_or_class(model="demo", preset="cpu-demo", device="cpu", threads=None, warmup=False)
    made.check_health()
    made.engine.close()
    with pytest.raises(RuntimeError, match="the engine's worker thread has stopped"):
        made.check_health()


def test_the_replicas_settings_are_refused_at_the_front_with_ray(capsys):
    import app as webapp

    with pytest.raises(SystemExit):
        webapp.parse_args(["--ray", "auto", "--vram", "8GiB"])
    assert "--lora and --vram are the replicas' settings with --ray" in capsys.readouterr().err


def test_auto_with_nothing_answering_fails_at_once_naming_what_it_found(monkeypatch):
    from fp8pipe.cluster.backend import ClusterUnreachable, connect

    address = closed_address(monkeypatch)
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ClusterUnreachable, match=f"cannot reach a Ray cluster at auto .*auto found {address}"):
        connect("auto")


def test_the_benchmarks_percentiles_interpolate_between_order_statistics():
    from fp8pipe.cluster.bench import percentile

    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_ray_accepts_the_autoscaling_settings():
    from fp8pipe.cluster.replica import EngineReplica

    deployment = EngineReplica.options(**deployment_options(ServeOptions(replicas=2, min_replicas=1, max_replicas=4, target_ongoing_requests=1.5)))
    config = deployment._deployment_config  # Ray's own validated model of the options
    scaling = config.autoscaling_config
    assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 2, 4, 1.5)
    assert config.max_ongoing_requests == 1 and config.max_queued_requests == 16
