"""`python -m fp8pipe serve`: deploy the engine as Ray Serve replicas (or `--bench` them).

    python -m fp8pipe serve --replicas 2                     on this machine's cluster, or a new local one
    python -m fp8pipe serve --replicas 4 --address HEAD:6379 --preset kiosk-8gb
    python -m fp8pipe serve --min-replicas 1 --max-replicas 8 autoscaled
    python -m fp8pipe serve --bench                          images/s with 1 and 2 replicas (fp8pipe.cluster.bench)

Then `python app.py --ray auto` (or `--ray ADDRESS`) puts the web app in front of them.
Flags override the preset's [serve] table; the queue bound is the preset's queue_size.
"""

from __future__ import annotations

import sys


def add_serve_command(subparsers) -> None:
    s = subparsers.add_parser("serve", help="deploy the engine as Ray Serve replicas, one per GPU (app.py --ray goes in front); --bench measures them")
    s.add_argument("--replicas", type=int, default=None, help="how many replicas (default: the preset's [serve] replicas, else 1); with autoscaling, how many to start with")
    s.add_argument("--model", default=None, help="the model every replica loads (default: the preset's)")
    s.add_argument("--preset", default="cpu-demo", help="a shipped preset name or a .toml file (default cpu-demo)")
    s.add_argument("--address", default=None, metavar="auto|HOST:PORT", help="the Ray cluster (default: the one this machine runs, else a new local one that lives as long as this command)")
    s.add_argument("--min-replicas", type=int, default=None, help="autoscale: at least this many (with --max-replicas; default: the preset's, else a fixed count)")
    s.add_argument("--max-replicas", type=int, default=None, help="autoscale: at most this many")
    s.add_argument("--target-ongoing", type=float, default=None, help="autoscale: aim at this many jobs per replica (default: the preset's, else 1)")
    s.add_argument("--max-queued", type=int, default=None, help="jobs that may wait for a replica at each front; more get 'the queue is full' (default: the preset's queue_size)")
    s.add_argument("--threads", type=int, default=1, help="torch threads, and CPUs asked from Ray, per replica (default 1)")
    s.add_argument("--gpus", type=float, default=None, help="GPUs per replica, e.g. 0.5 for two on one card (default: 1 when the cluster has GPUs, else 0)")
    s.add_argument("--device", default="auto", help="the replicas' device: auto (default), cpu, cuda")
    s.add_argument("--no-warmup", action="store_true", help="replicas skip the warm-up generation")
    s.add_argument("--bench", action="store_true", help="instead of serving: images/s and p50/p95 latency with 1 and 2 replicas on a new local cluster")
    s.add_argument("--bench-replicas", default="1,2", help="--bench: comma list of replica counts (default 1,2)")
    s.add_argument("--clients", type=int, default=8, help="--bench: concurrent clients (default 8)")
    s.add_argument("--images", type=int, default=48, help="--bench: counted images per replica count (default 48)")
    s.add_argument("--bench-size", type=int, default=None, help="--bench: square image size in px (default: the preset's)")
    s.add_argument("--bench-steps", type=int, default=None, help="--bench: denoising steps (default: the preset's)")
    s.add_argument("--out", default="bench/results/serve-cpu", help="--bench: writes OUT.json and OUT.md (default bench/results/serve-cpu)")
    s.set_defaults(func=cmd_serve)


def serve_options(args, preset):
    """ServeOptions from the flags over the preset's [serve] table (ValueError names the field)."""
    from .options import ServeOptions

    table = dict(preset.serve)
    pick = lambda flag, key, default=None: flag if flag is not None else table.get(key, default)  # noqa: E731
    return ServeOptions(
        replicas=pick(args.replicas, "replicas", None) or pick(args.min_replicas, "min_replicas", None) or 1,
        min_replicas=pick(args.min_replicas, "min_replicas"),
        max_replicas=pick(args.max_replicas, "max_replicas"),
        target_ongoing_requests=float(pick(args.target_ongoing, "target_ongoing_requests", 1.0)),
        max_queued_requests=args.max_queued if args.max_queued is not None else preset.queue_size,
        threads=args.threads,
        gpus=float(pick(args.gpus, "gpus", 0.0)),
    )


def cmd_serve(args) -> int:
    from ..presets import load_preset
    from ..startup import StartupError

    preset = load_preset(args.preset)
    if args.bench:
        from .bench import run_bench

        counts = [int(x) for x in args.bench_replicas.split(",") if x.strip()]
        return run_bench(counts, clients=args.clients, images=args.images, model=args.model or preset.model, preset=args.preset, threads=args.threads, out=args.out, size=args.bench_size, steps=args.bench_steps)
    options = serve_options(args, preset)
    try:
        address, local = _join_or_start(args.address, options)
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray

    from .replica import deploy

    if args.gpus is None and not dict(preset.serve).get("gpus") and ray.cluster_resources().get("GPU", 0) > 0:
        from dataclasses import replace

        options = replace(options, gpus=1.0)  # one worker per GPU
    model = args.model or preset.model
    print(f"deploying {options.replicas} replica(s) of {model} (preset {preset.name}) on the Ray cluster at {address} ...", file=sys.stderr)
    deploy(options, model=model, preset=args.preset, device=args.device, warmup=not args.no_warmup)
    scaling = f", autoscaling {options.min_replicas}-{options.max_replicas}" if options.autoscaling else ""
    print(f"fp8pipe serving: {options.replicas} replica(s){scaling}, at most {options.max_queued_requests} waiting per front. Front: python app.py --ray {address}", file=sys.stderr)
    if not local:
        return 0  # the deployment lives on the cluster
    print("this command holds the local cluster: Ctrl-C stops it", file=sys.stderr)
    from ..startup import stop_on_signals

    stop_on_signals()  # SIGTERM as Ctrl-C: the cluster is shut down below
    try:
        import threading

        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        print("fp8pipe serve stopped", file=sys.stderr)
    return 0


def _join_or_start(address: str | None, options) -> tuple[str, bool]:
    """(address, started_here): join `address`, or with none given this machine's cluster, or
    start a local one sized for the replicas."""
    from .backend import ClusterUnreachable, connect, quiet_ray_environment

    if address is not None:
        connect(address)
        return address, False
    try:
        connect("auto")
        import ray

        return ray.get_runtime_context().gcs_address, False
    except ClusterUnreachable:
        pass
    quiet_ray_environment()
    import ray

    ray.init(address="local", num_cpus=max(options.replicas, options.max_replicas or 0) * options.threads, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray.get_runtime_context().gcs_address, True

