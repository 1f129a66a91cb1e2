"""The front's side of the scale-out: a `GenerationService` whose jobs run on Ray Serve replicas.

`RayBackend` has the in-process engine's interface (`fp8pipe.seam.GenerationService`, plus
`spec_for`, `ready`, `generate` and `close`), so `fp8pipe.serving.serve_request` and the app use it
unchanged. Each job is one streaming call (`handle.options(stream=True).generate`): progress and
previews arrive as they are made; `cancel()` cancels the call, which stops the replica's job at
its next step. Errors come back as the app knows them: a full queue is `QueueFull`, a cancel is
`Cancelled`; a replica that dies mid-job is retried once on another, then `ReplicaLost`.

`connect(address)` joins a running cluster, or raises `ClusterUnreachable` with one message
naming the address and how to start a cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from ..seam import Cancelled, EngineClosed, Progress, QueueFull, Result
from ..startup import StartupError
from .options import APP_NAME

log = logging.getLogger(__name__)

RETRIES = 1  # a job whose replica died is sent again this many times
SPEC_TIMEOUT_S = 120.0


class ClusterUnreachable(StartupError):
    """No Ray cluster answers at the address; the message says how to start one."""


class ReplicaLost(RuntimeError):
    """The replica running a job stopped (killed, crashed) and the retry did not finish it."""


ROUTER_MAX_BACKOFF_S = "0.05"  # Ray's default, 0.5 s, can leave a replica idle that long between jobs


def quiet_ray_environment() -> None:
    """No usage-stats prompt or upload, no Serve logs on stderr; and a front that looks for a
    free replica at least every 50 ms while all are busy (set before Ray Serve is imported)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    os.environ.setdefault("RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S", ROUTER_MAX_BACKOFF_S)


def present_token() -> None:
    """When this machine has a Ray token (which `ray start` and a local cluster use by default
    in Ray 2.60), present it to the cluster being joined: a driver joining one does not by
    itself. Ray's own switch, which also refreshes its cached config; else the variable."""
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except ImportError:  # another Ray: the documented variable
        if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or (Path.home() / ".ray" / "auth_token").is_file():
            os.environ.setdefault("RAY_AUTH_MODE", "token")


def unreachable(address: str, why: str) -> ClusterUnreachable:
    return ClusterUnreachable(
        f"cannot reach a Ray cluster at {address} ({why}). Start one with `ray start --head` on the machine with the GPUs "
        "(it prints the address to pass as --ray), then deploy the model there: python -m fp8pipe serve --replicas N --address auto. "
        "A cluster that is running but refuses this machine wants its token: copy the head's ~/.ray/auth_token here (or set RAY_AUTH_TOKEN)"
    )


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a "host:port" or "ray://host:port" address; None for "auto"."""
    if address == "auto":
        return None
    rest = address.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise unreachable(address, "not an address: use auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _auto_address() -> str | None:
    """What Ray's "auto" means: RAY_ADDRESS, else the cluster this machine started last (its
    address file may outlive it, so the caller checks that it answers)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address() or None
    except Exception:  # a Ray without this helper: let ray.init resolve it
        return "auto"


def connect(address: str = "auto", timeout_s: float = 3.0) -> None:
    """Join the Ray cluster at `address` (auto: the one this machine runs or RAY_ADDRESS names).
    Reuses this process's connection when there is one. Fails in seconds, not minutes, when
    nothing answers there."""
    quiet_ray_environment()
    import ray

    if ray.is_initialized():
        return
    resolved = _auto_address() if address == "auto" else address
    if resolved is None:
        raise unreachable(address, "no Ray cluster runs on this machine and RAY_ADDRESS is not set")
    target = _host_port(resolved)
    if target is not None:
        try:
            socket.create_connection(target, timeout=timeout_s).close()
        except OSError as e:
            where = "" if resolved == address else f"; auto found {resolved}, the cluster this machine started last"
            raise unreachable(address, (e.strerror or type(e).__name__) + where) from None
    present_token()
    try:
        ray.init(address=resolved, log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise unreachable(address, str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from None


def app_handle(address: str, name: str = APP_NAME):
    """The deployed application's handle, or ClusterUnreachable saying how to deploy it."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_app_handle(name)
    except (RayServeException, KeyError, ValueError) as e:
        raise ClusterUnreachable(
            f"the Ray cluster at {address} has no {name!r} application ({e}); deploy one there: python -m fp8pipe serve --replicas N --address {address}"
        ) from None


class RemoteJob:
    """One request on the replicas: a Future for its Result, its progress, and cancel()."""

    def __init__(self, backend: RayBackend, request, model: str, precision: str, on_progress, preview: bool, t5: str | None):
        self.backend, self.request, self.model, self.precision = backend, request, model, precision
        self.on_progress, self.preview, self.t5 = on_progress, preview, t5
        self.future: Future = Future()
        self.step = 0
        self.replica: str | None = None  # the replica it ran on (the last one, after a retry)
        self.attempts = 0
        self._cancel = threading.Event()
        self._response = None

    def cancel(self) -> None:
        """Stop at the replica's next step (or before it starts); result() then raises Cancelled."""
        self._cancel.set()
        response = self._response
        if response is not None:
            try:
                response.cancel()
            except Exception:  # the call already failed (a full queue, a lost replica): nothing to stop
                pass

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Result:
        return self.future.result(timeout)

    @property
    def progress(self) -> Progress:
        return Progress(self.step, self.request.steps)

    def run(self) -> None:
        """Stream the job in this thread and settle the future (never raises)."""
        try:
            self.future.set_result(self._stream())
        except BaseException as e:
            self.future.set_exception(e)
        finally:
            self.backend._finished(self)

    def _stream(self) -> Result:
        from ray import exceptions as rex
        from ray.serve import exceptions as sex

        while True:
            self.attempts += 1
            if self.cancelled:
                raise Cancelled("cancelled before it started")
            result = None
            try:
                self._response = self.backend.stream.generate.remote(self.request, self.model, self.precision, self.preview, self.t5)
                if self.cancelled:
                    self.cancel()
                for item in self._response:
                    if isinstance(item, Progress):
                        self.step = item.step
                        if self.on_progress is not None:
                            try:
                                self.on_progress(item)
                            except Exception:  # a broken progress display must not fail the image
                                log.exception("progress callback failed")
                    elif isinstance(item, Result):
                        result = item
                    elif isinstance(item, dict) and "replica" in item:
                        self.replica = item["replica"]
                if result is None:
                    raise ReplicaLost("the replica ended the job without an image")
                return result
            except (sex.RequestCancelledError, rex.TaskCancelledError):
                raise Cancelled("cancelled") from None
            except sex.BackPressureError as e:
                waiting, limit = (tuple(e.args) + (None, None))[:2]
                raise QueueFull(f"the queue is full: {waiting} jobs are already waiting for a replica (at most {limit}); try again shortly") from None
            except rex.RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
                if cause is None:
                    raise
                raise cause from None
            except (rex.RayActorError, sex.DeploymentUnavailableError) as e:
                if self.cancelled:
                    raise Cancelled("cancelled") from None
                if self.attempts > RETRIES:
                    raise ReplicaLost(
                        f"the replica running this job stopped ({type(e).__name__}) and the retry failed too; try again shortly while the cluster replaces it"
                    ) from None
                log.warning("replica %s stopped during a job (%s); sending the job again", self.replica, type(e).__name__)
                self.step = 0
                time.sleep(0.5)  # let the router learn that the replica is gone


class RayBackend:
    """A GenerationService whose jobs run on the deployment (see the module docstring)."""

    def __init__(self, handle, address: str = "auto"):
        self.handle, self.address = handle, address
        self.stream = handle.options(stream=True)
        self.ready = threading.Event()
        self.ready.set()  # serve.run returned: every replica is up and warm
        self._specs: dict = {}
        self._jobs: set[RemoteJob] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._slots: int | None = None

    @property
    def slots(self) -> int:
        """How many jobs the front should run at once: the deployment's (largest) replica count,
        so each replica has one and its queue stays for bursts."""
        if self._slots is None:
            try:
                serving = self.handle.describe.remote().result(timeout_s=SPEC_TIMEOUT_S).get("serving") or {}
                self._slots = int(serving.get("max_replicas") or serving.get("replicas") or 0)
            except Exception:  # an older or foreign deployment: the replicas running now
                log.warning("the deployment did not say its replica count; using the replicas running now")
            if not self._slots:
                self._slots = max(1, self.describe()["replicas"].get("RUNNING", 1))
        return self._slots

    @classmethod
    def connect(cls, address: str = "auto", name: str = APP_NAME) -> RayBackend:
        connect(address)
        return cls(app_handle(address, name), address)

    # ---- GenerationService ----

    def spec_for(self, model: str):
        """The ModelSpec requests for `model` are validated against (a known family locally,
        otherwise asked once from a replica)."""
        from ..specs import find_spec

        spec = self._specs.get(model) or find_spec(model)
        if spec is None:
            spec = self._specs[model] = self.handle.spec.remote(model).result(timeout_s=SPEC_TIMEOUT_S)
        return spec

    def request(self, model: str = "demo", **fields):
        from ..requests import GenerationRequest

        return GenerationRequest.create(self.spec_for(model), **fields)

    def prepare(self, request, model: str = "demo", precision: str = "fp8", on_progress=None, preview: bool = False, t5: str | None = None) -> RemoteJob:
        with self._lock:
            if self._closed:
                raise EngineClosed("the backend is closed")
            job = RemoteJob(self, request, model, precision, on_progress, preview, t5)
            self._jobs.add(job)
        return job

    def run_job(self, job: RemoteJob) -> Result:
        job.run()
        return job.result()

    def run(self, request, model: str = "demo", precision: str = "fp8", on_progress=None, preview: bool = False, t5: str | None = None) -> Result:
        return self.run_job(self.prepare(request, model, precision, on_progress, preview, t5))

    def submit(self, request, model: str = "demo", precision: str = "fp8", on_progress=None, preview: bool = False, t5: str | None = None) -> RemoteJob:
        job = self.prepare(request, model, precision, on_progress, preview, t5)
        threading.Thread(target=job.run, name="fp8pipe-ray-job", daemon=True).start()
        return job

    def generate(self, request, model: str = "demo", precision: str = "fp8", **kwargs) -> Result:
        return self.run(request, model, precision, **kwargs)

    def describe(self) -> dict:
        """What the front knows without taking a replica's turn: the address and the replicas' states."""
        replicas: dict = {}
        try:
            from ray import serve

            app = serve.status().applications.get(APP_NAME)
            for deployment in (app.deployments.values() if app else ()):
                for state, count in deployment.replica_states.items():
                    replicas[str(getattr(state, "value", state))] = replicas.get(str(getattr(state, "value", state)), 0) + count
        except Exception as e:  # the status is informative only
            replicas = {"error": type(e).__name__}
        return {"device": "ray", "backend": "ray", "address": self.address, "ready": self.ready.is_set(), "queued": len(self._jobs), "replicas": replicas, "pool": []}

    def close(self, timeout: float | None = 30, cancel_running: bool = False) -> bool:
        """Stop taking jobs; with `cancel_running`, cancel the ones in flight. The deployment keeps running."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        for job in jobs:
            if cancel_running:
                job.cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in jobs:
            try:
                job.future.exception(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except Exception:  # timed out or cancelled: reported by the return value
                pass
        return all(job.done() for job in jobs)

    def _finished(self, job: RemoteJob) -> None:
        with self._lock:
            self._jobs.discard(job)
