"""The typed seam between a front end (app, CLI, bench) and whatever runs the jobs.

Importable without torch: `Progress`, `Result`, the user-facing errors, and `GenerationService`,
the Protocol that the in-process `fp8pipe.engine.Engine` satisfies now (and a remote handle,
such as a Ray Serve deployment's, can satisfy later).

A service either runs a request inline in the caller's thread (`run`) or queues it for its own
worker (`submit`, which returns a `JobHandle` at once). Both report each step as a `Progress`
(with a preview image when asked), stop at the next step boundary on `cancel()`, and step down
the placement after an out-of-memory in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .requests import GenerationRequest


class Cancelled(Exception):
    """The job was cancelled before it finished; no image was made."""


class EngineClosed(RuntimeError):
    """The engine was closed before the job ran."""


class QueueFull(RuntimeError):
    """Too many jobs are waiting; the caller should ask the user to try again shortly."""


class OutOfMemory(RuntimeError):
    """Out of memory even after stepping down; the message says what was tried."""


@dataclass(frozen=True)
class Progress:
    step: int  # steps done, 1-based
    total: int
    preview: object = None  # PIL.Image.Image when previews were asked for


@dataclass
class Result:
    image: object  # PIL.Image.Image
    request: GenerationRequest
    parameters: str
    stats: dict
    images: list = field(default_factory=list)  # every image of a batch; `image` is the first

    def save_png(self, path: str | Path) -> Path:
        """Write the first image with its parameters chunk, all or nothing (temp name, then rename);
        a failure is an OSError and leaves no file."""
        from .outputs import write_png_atomically

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_png_atomically(self.image, path, self.parameters)


ProgressCallback = Callable[[Progress], None]


@runtime_checkable
class JobHandle(Protocol):
    """One submitted request."""

    def cancel(self) -> None: ...

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> Result: ...

    @property
    def progress(self) -> Progress: ...


@runtime_checkable
class GenerationService(Protocol):
    """What a front end needs from whatever runs the jobs."""

    def request(self, model: str = "demo", **fields) -> GenerationRequest: ...

    def prepare(
        self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", on_progress: ProgressCallback | None = None, preview: bool = False, t5: str | None = None
    ) -> JobHandle: ...

    def run_job(self, job: JobHandle) -> Result: ...

    def run(
        self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", on_progress: ProgressCallback | None = None, preview: bool = False, t5: str | None = None
    ) -> Result: ...

    def submit(
        self, request: GenerationRequest, model: str = "demo", precision: str = "fp8", on_progress: ProgressCallback | None = None, preview: bool = False, t5: str | None = None
    ) -> JobHandle: ...

    def describe(self) -> dict: ...
