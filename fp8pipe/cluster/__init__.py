"""Scale-out: the same engine as Ray Serve replicas, one app in front of many GPUs.

- `options`: the deployment's settings (replicas, autoscaling, queue bound, resources); no Ray.
- `replica`: the Ray Serve deployment, one warm `fp8pipe.engine.Engine` per replica.
- `backend`: the front's side, `RayBackend`, which satisfies `fp8pipe.seam.GenerationService`
  like the in-process engine, so `app.py --ray` uses the one request path unchanged.
- `command`: `python -m fp8pipe serve` (deploy, or `--bench`); `bench`: the throughput benchmark.

Nothing here is imported unless Ray is asked for (`app.py --ray`, `python -m fp8pipe serve`).
"""
