"""The Ray Serve deployment's settings as plain data, and the `.options()` they become.

Torch-free and Ray-free, so it is tested without a cluster. One worker per GPU: a replica runs
one job at a time (`max_ongoing_requests=1`); requests beyond `max_queued_requests` waiting at
a handle are refused with the app's "queue is full" error (fp8pipe.seam.QueueFull).
"""

from __future__ import annotations

from dataclasses import dataclass

APP_NAME = "fp8pipe"  # the Serve application the front looks up
DEPLOYMENT_NAME = "EngineReplica"
HEALTH_CHECK_PERIOD_S = 10.0
HEALTH_CHECK_TIMEOUT_S = 30.0
STALL_SECONDS = 600.0  # a job with no step for this long means the replica's worker is wedged


@dataclass(frozen=True)
class ServeOptions:
    """How many replicas, how they scale, how long the queue is, what each replica gets."""

    replicas: int = 1  # fixed count; with autoscaling, the initial count
    min_replicas: int | None = None  # set min/max to autoscale between them
    max_replicas: int | None = None
    target_ongoing_requests: float = 1.0  # autoscaling aims at this many jobs per replica
    max_queued_requests: int = 16  # waiting at a handle beyond this: QueueFull
    threads: int = 1  # torch threads (and CPUs asked from Ray) per replica
    gpus: float = 0.0  # GPUs per replica: 1 on a GPU cluster, 0.5 to share one between two
    stall_s: float = STALL_SECONDS

    def __post_init__(self):
        def whole(name, value, lo, hi):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name}: must be a whole number from {lo} to {hi}; got {value!r}")

        whole("replicas", self.replicas, 1, 1024)
        whole("max_queued_requests", self.max_queued_requests, 1, 100_000)
        whole("threads", self.threads, 1, 256)
        for name in ("min_replicas", "max_replicas"):
            if getattr(self, name) is not None:
                whole(name, getattr(self, name), 0 if name == "min_replicas" else 1, 1024)
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("min_replicas and max_replicas: give both to autoscale, or neither for a fixed count")
        if self.autoscaling and not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(f"replicas: {self.replicas} must lie from min_replicas {self.min_replicas} to max_replicas {self.max_replicas}")
        if not 0 < self.target_ongoing_requests <= 64:
            raise ValueError(f"target_ongoing_requests: must be a number above 0 and at most 64; got {self.target_ongoing_requests!r}")
        if not 0 <= self.gpus <= 8:
            raise ValueError(f"gpus: must be a number from 0 to 8 per replica; got {self.gpus!r}")
        if not self.stall_s > 0:
            raise ValueError(f"stall_s: must be above 0 seconds; got {self.stall_s!r}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None


def deployment_options(options: ServeOptions) -> dict:
    """Keyword arguments for `EngineReplica.options(...)`."""
    actor = {"num_cpus": options.threads}
    if options.gpus:
        actor["num_gpus"] = options.gpus
    out = {
        "max_ongoing_requests": 1,  # one job per replica at a time: one worker per GPU
        "max_queued_requests": options.max_queued_requests,
        "ray_actor_options": actor,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
    }
    if options.autoscaling:
        out["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "initial_replicas": options.replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    else:
        out["num_replicas"] = options.replicas
    return out


def wedged(worker_alive: bool, running: bool, seconds_since_step: float, stall_s: float) -> str | None:
    """Why a replica is unhealthy (its health check raises this), or None when it is fine."""
    if not worker_alive:
        return "the engine's worker thread has stopped"
    if running and seconds_since_step > stall_s:
        return f"the running job made no step for {seconds_since_step:.0f} s (limit {stall_s:g} s): the worker is wedged"
    return None
