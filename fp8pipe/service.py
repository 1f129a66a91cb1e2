"""What the web app asks of the engine, without any UI: preset limits and defaults applied
server-side, the prompt filter, the per-address rate limit with its global ceiling, and
streaming a job's progress (through fp8pipe.serving, the one request path). (The PNGs are kept by fp8pipe.outputs.)

`app.py` turns these into Gradio events; nothing here imports Gradio.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from .presets import Preset
from .requests import GenerationRequest
from .safety import FRIENDLY_MESSAGE, blocked_words
from .specs import ModelSpec


class Refused(ValueError):
    """A request the app will not run (filtered prompt, rate limit); the message is for the visitor."""


@dataclass
class RateLimiter:
    """At most `requests` per `per_seconds` for each key (a client address), a rolling window;
    and at most `total` per window over all keys together, so many addresses cannot flood it."""

    requests: int
    per_seconds: float
    total: int | None = None
    _seen: dict = field(default_factory=dict)
    _all: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _refuse(self, limit: int, window: deque, now: float, whom: str) -> None:
        wait = self.per_seconds - (now - window[0])
        raise Refused(f"Too many requests{whom}: at most {limit} every {self.per_seconds:g} s. Try again in {max(wait, 1):.0f} s.")

    def check(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for window in (self._all, self._seen.get(key, ())):
                while window and now - window[0] >= self.per_seconds:
                    window.popleft()
            window = self._seen.setdefault(key, deque())
            if len(window) >= self.requests:
                self._refuse(self.requests, window, now, "")
            if self.total is not None and len(self._all) >= self.total:
                self._refuse(self.total, self._all, now, " from all visitors together")
            window.append(now)
            self._all.append(now)
            if len(self._seen) > 10_000:  # forget idle clients so a long-running kiosk stays bounded
                for stale in [k for k, w in self._seen.items() if not w or now - w[-1] >= self.per_seconds]:
                    del self._seen[stale]

    def forget(self) -> None:
        """Start every window afresh."""
        with self._lock:
            self._seen.clear()
            self._all.clear()


def client_key(host: str | None, headers=None, proxy_header: str | None = None) -> str:
    """What a rate limit counts by: the client's address, which a client cannot choose (unlike
    a session id). Behind a trusted reverse proxy (`proxy_header`, e.g. X-Forwarded-For, set
    only when one is in front), the address that proxy appended: the header's last entry."""
    if proxy_header and headers is not None:
        forwarded = headers.get(proxy_header)
        if forwarded:
            last = forwarded.split(",")[-1].strip()
            if last:
                return last
    return host or "unknown"


def build_request(preset: Preset, spec: ModelSpec, prompt, style: str | None = None, **fields) -> GenerationRequest:
    """A request within the preset's limits; fields left out (None) take the preset's defaults.

    The prompt's length limit counts what the visitor typed; the style's suffix is added after.
    The prompt filter then reads the final, normalised text the model will receive: the prompt
    with its suffix, and the negative prompt."""
    suffix = next((s.suffix for s in preset.styles if s.name == style), "")
    defaults = preset.defaults_for(spec)
    merged = {**defaults, **{k: v for k, v in fields.items() if v is not None}}
    request = GenerationRequest.create(spec, prompt=prompt, limits=preset.limits_for(spec), **merged)
    if suffix:
        request = replace(request, prompt=request.prompt + suffix)
    if preset.filter_words and (blocked_words(request.prompt, preset.filter_words) or blocked_words(request.negative_prompt, preset.filter_words)):
        raise Refused(FRIENDLY_MESSAGE)
    return request


def stream_job(engine, request: GenerationRequest, model: str, precision: str, preview: bool, t5: str | None = None, heartbeat: float | None = None) -> Iterator:
    """The queued form of the one request path (fp8pipe.serving.serve_request)."""
    from . import serving

    return serving.serve_request(engine, request, model, precision, preview, t5, heartbeat=heartbeat)


def difference_image(a, b, gain: float = 4.0):
    """|a - b| per pixel, amplified so small FP8 differences are visible; and its mean in 0..255."""
    import numpy as np
    from PIL import Image

    x, y = np.asarray(a.convert("RGB"), dtype=np.float32), np.asarray(b.convert("RGB"), dtype=np.float32)
    diff = np.abs(x - y)
    return Image.fromarray(np.clip(diff * gain, 0, 255).astype(np.uint8)), float(diff.mean())
